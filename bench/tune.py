"""``bench tune``: the same tuning budget for every learner, spent on meta-validation.

One Optuna study per (learner, suite, setting), all in one SQLite file in the tune folder. Every learner gets the
same number of trials, each meta-training ``trial_tasks`` tasks (the seed's cell, with the trial's hyper-parameters
on top of the suite defaults and ``--set``) and scored on meta-validation only (``runner.train_and_validate``; no
test episode is read); the objective is the best validation point's score. TPE asks the hyper-parameters, seeded by
(seed, trial index); a trial whose validation curve falls below the median of earlier trials is pruned (it still
counts). ``workers`` trials are asked at a time and run through an executor, each worker reporting its validation
points to the study itself (the folder must be reachable from the workers, as checkpoints are).

A killed tune resumes (``bench tune --resume DIR``): the trials it left running are marked interrupted and run
again with the same parameters, so a resumed study ends with the trials and the best value of an uninterrupted one.

Layout of a tune folder::

    tune.json     the tune's configuration, the studies it holds, its environment and status
    study.db      the Optuna studies (SQLite): every trial's parameters, validation points, state and value
    tuned.toml    the best hyper-parameters per learner and suite setting: ``bench run --config`` reads it as it is
    tuning.md     the tuning report (also tuning.html; figures/ beside them)
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import TrialState

from bench.api import declined
from bench.config import ConfigError, RunConfig, build_run_config
from bench.environment import environment
from bench.grid import Cell, plan, tuned_key
from bench.plugins import Registry
from bench.runner import MemberFailure, TrainedCell, resolve_device, train_and_validate, train_together
from bench.session import Execution, make_executor
from bench.store import StoreError, atomic_write_json, atomic_write_text
from bench.tune_report import write_tuning_report
from bench.tune_study import (BEST_STEP, BEST_TASKS, ERROR, INDEX, INTERRUPTED, POPULATION, POPULATION_NOTE, SECONDS,
                              STUDY_FILE, TASKS_SEEN, TUNE_FILE, TUNED_FILE, ValidationPruner, best_trial, counted,
                              describe, distributions, sampler, startup_trials, storage_url)
from bench.validation import ValidationPoint

Say = Callable[[str], None]

TRIAL_PROFILE = "quick"
"""The profile a trial's budget starts from: its adaptation steps and meta-val episodes (unless --val-episodes);
its tasks are the tune's ``trial_tasks`` and its validation points the profile's number over them (unless
--val-every)."""
RUN_KEYS = ("learners", "suites", "shots", "ways", "device", "data_dir", "set", "val_every", "val_episodes")
"""The tune's keys that are ``RunConfig`` keys (the trials' cells and budget)."""
FINISHED, INTERRUPTED_STATUS = "finished", "interrupted"
WARMUP_FRACTION = 4
"""No pruning in the first 1/4 of a trial's tasks: early validation points say little about where a learner ends."""


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """Everything that defines a tune; saved in tune.json so that it can be resumed."""

    run: RunConfig
    """The trials' learners, suites, settings, ``--set``, device, data folder and budget (``tasks`` = trial_tasks)."""
    trials: int
    seed: int = 0
    """The meta-training seed of every trial and the seed of the sampler."""
    workers: int = 1
    """Trials (populations, with ``population``) run at a time by the executor."""
    population: int = 1
    """Trials each worker meta-trains as one vectorised population (those that differ only in continuous
    hyper-parameters). ``workers`` x ``population`` trials are asked at a time: part of the configuration, since
    what TPE asks depends on it."""

    @property
    def batch(self) -> int:
        """Trials asked at a time."""
        return self.workers * self.population

    @property
    def trial_tasks(self) -> int:
        assert self.run.tasks is not None
        return self.run.tasks

    def as_dict(self) -> dict[str, Any]:
        return {**{key: getattr(self.run, key) for key in RUN_KEYS}, "trials": self.trials,
                "trial_tasks": self.trial_tasks, "seed": self.seed, "workers": self.workers,
                "population": self.population}


def tune_config(values: dict[str, Any], origin: str) -> TuneConfig:
    """Validate a tune's settings (``TuneConfig.as_dict()``'s keys; None: the default) into a TuneConfig."""
    values = {key: value for key, value in values.items() if value is not None}
    unknown = sorted(set(values) - {*RUN_KEYS, "trials", "trial_tasks", "seed", "workers", "population"})
    if unknown:
        raise ConfigError(f"{origin}: unknown key {', '.join(unknown)}")
    numbers = {key: values.pop(key, default) for key, default in
               (("trials", None), ("trial_tasks", None), ("seed", 0), ("workers", 1), ("population", 1))}
    for key, least in (("trials", 1), ("trial_tasks", 1), ("seed", 0), ("workers", 1), ("population", 1)):
        value = numbers[key]
        if value is None:
            raise ConfigError(f"{origin}: --{key.replace('_', '-')} is required (the same for every learner)")
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{origin}: {key}: expected an integer of at least {least}, got {value!r}")
    run = build_run_config({**values, "tasks": numbers["trial_tasks"], "profile": TRIAL_PROFILE, "seeds": 1}, origin)
    if run.val_episodes == 0:
        raise ConfigError(f"{origin}: val_episodes: tuning scores meta-validation episodes; expected at least 1")
    return TuneConfig(run, numbers["trials"], numbers["seed"], numbers["workers"], numbers["population"])


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """One study: a learner on one suite setting, what it searches and what stays fixed."""

    cell: Cell
    """The trials' cell; its hyper-parameters (defaults, suite defaults, ``--set``) are those a trial does not search."""
    space: dict[str, BaseDistribution]
    ranges: dict[str, str]
    metric_name: str
    lower_is_better: bool
    note: str | None
    """Why the study runs no trial (nothing to tune; the learner does not apply to the suite), or None."""

    @property
    def name(self) -> str:
        return f"{self.cell.learner.name} @ {tuned_key(self.cell.suite.name, self.cell.setting)}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "learner": self.cell.learner.name, "suite": self.cell.suite.name,
                "setting": self.cell.setting.name, "key": tuned_key(self.cell.suite.name, self.cell.setting),
                "metric": self.metric_name, "lower_is_better": self.lower_is_better, "searched": self.ranges,
                "base": dataclasses.asdict(self.cell.hyperparameters), "note": self.note}


def plan_studies(config: TuneConfig, registry: Registry) -> list[StudyPlan]:
    """The tune's studies, in the order a run lists its cells; bad names, settings or search spaces raise."""
    plans = []
    for cell in plan(config.run, registry):
        suite = config.run.make_suite(cell.suite.cls)
        learner = cell.learner.cls
        fixed = config.run.set.get(cell.learner.name, {})
        ranges = {key: spec for key, spec in learner.search_space(suite.kind).items() if key not in fixed}
        space = distributions(cell.learner.name, ranges, set(dataclasses.asdict(cell.hyperparameters)))
        reason = declined(learner, suite, cell.setting)
        note = f"n/a: {reason}" if reason else None if space else "nothing to tune: defaults kept"
        plans.append(StudyPlan(dataclasses.replace(cell, seed=config.seed), space if note is None else {},
                               {key: describe(spec) for key, spec in ranges.items()}, suite.metric_name,
                               suite.lower_is_better, note))
    return plans


@dataclasses.dataclass(frozen=True)
class TrialItem:
    """One trial to run: the study's cell, the trial's parameters, where it reports."""

    cell: Cell
    params: dict[str, Any]
    study: str
    trial_id: int


@dataclasses.dataclass(frozen=True)
class TrialOutcome:
    trial_id: int
    state: TrialState
    value: float | None
    attributes: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TrialWork:
    """Runs a population of trials (one, or several meta-trained as one vectorised model) wherever an executor calls
    it (it pickles): meta-trains the cell with each trial's hyper-parameters, reports every validation point to the
    study and stops a trial when the pruner says so. Failures come back in the outcomes; a population that cannot
    train together runs its trials one by one."""

    config: RunConfig
    device: str
    storage: str
    pruner: ValidationPruner
    show_progress: bool = False

    def __call__(self, items: list[TrialItem]) -> list[TrialOutcome]:
        if len(items) == 1:
            return [self._alone(items[0])]
        try:
            trained = train_together([self._cell(item) for item in items], self.config, torch.device(self.device),
                                     [self._on_point(item) for item in items])
        except Exception as error:  # cannot train together (SeedsApart) or failed so: each trial alone
            note = {POPULATION_NOTE: f"trained alone: the population of {len(items)} could not train together "
                                     f"({type(error).__name__}: {error})"}
            return [dataclasses.replace(outcome, attributes={**outcome.attributes, **note})
                    for outcome in map(self._alone, items)]
        return [dataclasses.replace(outcome, attributes={**outcome.attributes, POPULATION: len(items)})
                for outcome in (self._outcome(item, one) for item, one in zip(items, trained, strict=True))]

    @staticmethod
    def _failure(item: TrialItem, error: Exception) -> TrialOutcome:
        return TrialOutcome(item.trial_id, TrialState.FAIL, None, {ERROR: f"{type(error).__name__}: {error}"})

    def _cell(self, item: TrialItem) -> Cell:
        return dataclasses.replace(item.cell, hyperparameters=dataclasses.replace(item.cell.hyperparameters,
                                                                                  **item.params))

    def _on_point(self, item: TrialItem) -> Callable[[ValidationPoint], bool]:
        study = optuna.load_study(study_name=item.study, storage=self.storage, pruner=self.pruner)
        trial = optuna.trial.Trial(study, item.trial_id)

        def on_point(point: ValidationPoint) -> bool:
            trial.report(point.score, point.tasks_seen)
            return not trial.should_prune()

        return on_point

    def _alone(self, item: TrialItem) -> TrialOutcome:
        try:
            trained = train_and_validate(self._cell(item), self.config, torch.device(self.device),
                                         show_progress=self.show_progress, on_point=self._on_point(item))
        except Exception as error:  # a failing configuration is a result of the study, not the end of the tune
            return self._failure(item, error)
        return self._outcome(item, trained)

    @classmethod
    def _outcome(cls, item: TrialItem, trained: TrainedCell | MemberFailure) -> TrialOutcome:
        if isinstance(trained, MemberFailure):  # diverged inside its population: failed, as it would have alone
            return cls._failure(item, trained.error)
        validation = trained.validation
        attributes = {TASKS_SEEN: trained.tasks_seen, BEST_TASKS: validation.best.tasks_seen,
                      BEST_STEP: validation.best.best_step, SECONDS: trained.meta_train_seconds}
        if trained.stopped:  # pruned: its value is that of the point where it stopped, as Optuna records it
            return TrialOutcome(item.trial_id, TrialState.PRUNED, validation.points[-1].score, attributes)
        return TrialOutcome(item.trial_id, TrialState.COMPLETE, validation.best.score, attributes)


def populations(items: list[TrialItem], space: dict[str, BaseDistribution], size: int) -> list[list[TrialItem]]:
    """The trials in groups of at most ``size`` that share every hyper-parameter that is not continuous (an
    integer or a choice: a different network or loop cannot be vectorised), in the order asked."""
    groups: dict[tuple, list[list[TrialItem]]] = {}
    for item in items:
        key = tuple(sorted((name, repr(value)) for name, value in item.params.items()
                           if not isinstance(space.get(name), FloatDistribution)))
        chunks = groups.setdefault(key, [[]])
        if len(chunks[-1]) >= size:
            chunks.append([])
        chunks[-1].append(item)
    return [chunk for chunks in groups.values() for chunk in chunks]


def requeue_interrupted(study: optuna.Study) -> int:
    """Mark the trials a killed tune left running as interrupted (failed, not counted) and queue each again with its
    index and parameters; return how many. A trial killed while it was being asked (no index yet) is asked anew."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        optuna.trial.Trial(study, trial._trial_id).set_user_attr(INTERRUPTED, True)
        study.tell(trial.number, state=TrialState.FAIL)
        if INDEX in trial.user_attrs:
            study.enqueue_trial(trial.params, user_attrs={INDEX: trial.user_attrs[INDEX]})
    return len(stale)


def ask_batch(study: optuna.Study, plan: StudyPlan, config: TuneConfig) -> list[optuna.Trial]:
    """The next trials to run: those queued again after an interruption, then new ones until the study has a
    multiple of ``batch`` trials (or all of its trials). Empty when the study is done."""
    batch: list[optuna.Trial] = []
    while True:
        trials = study.get_trials(deepcopy=False)
        waiting = any(trial.state == TrialState.WAITING for trial in trials)
        index = len(counted(trials))
        if not waiting and (index >= config.trials or (batch and index % config.batch == 0)):
            return batch
        study.sampler = sampler(config.seed, index, config.trials)  # not consulted for a queued trial
        trial = study.ask(plan.space)
        if INDEX not in trial.user_attrs:
            trial.set_user_attr(INDEX, index)
        batch.append(trial)


def _describe_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())


def _trial_line(plan: StudyPlan, trial: optuna.Trial, outcome: TrialOutcome, trials: int) -> str:
    state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}[outcome.state]
    attributes = outcome.attributes
    result = (attributes[ERROR] if outcome.state == TrialState.FAIL
              else f"val {plan.metric_name} {outcome.value:.4g} where it stopped, at {attributes[TASKS_SEEN]} tasks"
              if outcome.state == TrialState.PRUNED
              else f"val {plan.metric_name} {outcome.value:.4g} (best point: {attributes[BEST_TASKS]} tasks, step "
                   f"{attributes[BEST_STEP]})")
    together = (f"; one of {attributes[POPULATION]} trained together" if attributes.get(POPULATION, 1) > 1
                else f"; {attributes[POPULATION_NOTE]}" if POPULATION_NOTE in attributes else "")
    return (f"  {state:8} {plan.name} trial {trial.user_attrs[INDEX] + 1}/{trials}: {result} "
            f"({_describe_params(trial.params)}{together})")


def run_study(plan: StudyPlan, config: TuneConfig, storage: str, work: TrialWork, registry: Registry,
              execution: Execution, gpus: int, say: Say) -> optuna.Study:
    """Run a study's trials still to run, a batch at a time, telling each outcome as it arrives."""
    study = optuna.create_study(study_name=plan.name, storage=storage, load_if_exists=True, pruner=work.pruner,
                                direction="minimize" if plan.lower_is_better else "maximize")
    again = requeue_interrupted(study)
    if again:
        say(f"  {plan.name}: {again} interrupted trial(s) run again with the same parameters")
    while batch := ask_batch(study, plan, config):
        trials = {trial._trial_id: trial for trial in batch}  # Optuna names a trial to another process by its id
        items = [TrialItem(plan.cell, trial.params, plan.name, trial_id) for trial_id, trial in trials.items()]
        executor = make_executor(registry, dataclasses.replace(execution, workers=config.workers))
        try:
            for outcomes in executor.map(work, populations(items, plan.space, config.population), gpus=gpus):
                for outcome in outcomes:
                    trial = trials[outcome.trial_id]
                    for key, value in outcome.attributes.items():
                        trial.set_user_attr(key, value)
                    study.tell(trial, outcome.value if outcome.state == TrialState.COMPLETE else None,
                               state=outcome.state)
                    say(_trial_line(plan, trial, outcome, config.trials))
        finally:
            executor.close()
    return study


def toml_value(value: Any) -> str:
    """A value as TOML: numbers, booleans, strings, lists and inline tables (tuned.toml's few types)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else "inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string (ASCII, escaped) is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(key)} = {toml_value(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} to TOML")


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def tuned_toml(config: TuneConfig, folder: Path, plans: list[StudyPlan], best: dict[str, dict[str, Any]]) -> str:
    """tuned.toml: the tune's learners, suites and settings, its ``--set`` and the best parameters per study
    (``best``, by study name: {} where nothing was tuned), for ``bench run --config``."""
    run = config.run
    learners = list(dict.fromkeys(plan.cell.learner.name for plan in plans))
    suites = list(dict.fromkeys(plan.cell.suite.name for plan in plans))
    lines = [f"# bench tune: the best hyper-parameters on meta-validation, {config.trials} trials x "
             f"{config.trial_tasks} tasks per learner and suite setting (report: {folder / 'tuning.md'}).",
             f"# Use: bench run --config {folder / TUNED_FILE}",
             f"learners = {toml_value(learners)}", f"suites = {toml_value(suites)}"]
    lines += [f"{key} = {toml_value(getattr(run, key))}" for key in ("shots", "ways") if getattr(run, key)]
    for learner, values in run.set.items():
        lines += ["", f"[set.{toml_key(learner)}]", *(f"{toml_key(k)} = {toml_value(v)}" for k, v in values.items())]
    lines += ["", "[tuned]", f"study = {toml_value(str(folder))}", f"trials = {config.trials}",
              f"trial_tasks = {config.trial_tasks}"]
    for learner in learners:
        lines += ["", f"[tuned.hyperparameters.{toml_key(learner)}]"]
        lines += [f"{toml_key(tuned_key(plan.cell.suite.name, plan.cell.setting))} = {toml_value(best[plan.name])}"
                  for plan in plans if plan.cell.learner.name == learner]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class TuneOutcome:
    """How a tune ended: its folder, status and, when it finished, one summary row per study."""

    folder: Path
    status: str
    summary: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def default_tune_dir(config: TuneConfig) -> Path:
    return Path("results") / f"tune-{time.strftime('%Y%m%d-%H%M%S')}-{'-'.join(config.run.suites)}"


def read_tune_file(folder: Path) -> dict[str, Any]:
    path = folder / TUNE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{folder} is not a tune folder (no {TUNE_FILE})") from None
    except (OSError, json.JSONDecodeError) as error:
        raise StoreError(f"{path} is unreadable or corrupt ({error})") from None


def resumed_tune(folder: Path) -> TuneConfig:
    """The configuration a tune in ``folder`` was started with (``bench tune --resume``)."""
    return tune_config(read_tune_file(folder).get("config", {}), origin=str(folder / TUNE_FILE))


def _open_folder(folder: Path, resume: bool) -> None:
    if resume:
        read_tune_file(folder)
    elif folder.exists() and any(folder.iterdir()):
        hint = " (resume it with --resume)" if (folder / TUNE_FILE).exists() else ""
        raise StoreError(f"{folder} exists and is not empty{hint}; choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create {folder}: {error.strerror}") from None


def run_tune(config: TuneConfig, registry: Registry, execution: Execution, folder: Path | None, *, resume: bool,
             say: Say) -> TuneOutcome:
    """Run (or, with ``resume``, go on with) every study of ``config`` in ``folder``, then write tuned.toml and the
    tuning report. Bad input raises a ``BenchError`` before any trial runs; Ctrl-C leaves the tune resumable."""
    plans = plan_studies(config, registry)
    (executor,) = registry.select("executor", [execution.executor])
    for suite in {plan.cell.suite.name: plan.cell.suite for plan in plans}.values():
        config.run.make_suite(suite.cls).prepare()
    device = resolve_device(config.run.device)
    folder = folder or default_tune_dir(config)
    _open_folder(folder, resume)
    info = {"format_version": 1, "config": config.as_dict(), "studies": [plan.as_dict() for plan in plans],
            "environment": {**environment(registry, device), "executor": execution.executor},
            "sampler": f"TPE, seeded by (seed, trial index), {startup_trials(config.trials)} random startup trials",
            "pruner": f"median of earlier batches' completed trials, after {startup_trials(config.trials)} completed "
                      f"trials and from {config.trial_tasks // WARMUP_FRACTION} tasks on"}
    atomic_write_json(folder / TUNE_FILE, {**info, "status": "running"})
    storage = storage_url(folder)
    work = TrialWork(config.run, str(device), storage,
                     ValidationPruner(startup_trials(config.trials), config.trial_tasks // WARMUP_FRACTION,
                                      config.batch),
                     execution.show_progress and executor.cls.shows_progress)
    say(f"metabench tune: {len(plans)} studies x {config.trials} trials x {config.trial_tasks} tasks on "
        f"{info['environment']['device_name']} with the {execution.executor} executor -> {folder}")
    best: dict[str, dict[str, Any]] = {}
    summary = []
    try:
        for plan in plans:
            if plan.note:
                say(f"  {plan.name}: {plan.note}")
                best[plan.name] = {}
                summary.append({"study": plan.name, "trials": 0, "best": plan.note, "hyper-parameters": ""})
                continue
            say(f"  {plan.name}: searching {', '.join(f'{k} in {v}' for k, v in plan.ranges.items())}")
            study = run_study(plan, config, storage, work, registry, execution, int(device.type == "cuda"), say)
            top = best_trial(study)
            best[plan.name] = dict(top.params) if top else {}
            summary.append({"study": plan.name, "trials": len(counted(study.get_trials(deepcopy=False))),
                            "best": f"{top.value:.4g} (trial {top.user_attrs[INDEX] + 1})" if top
                            else "no trial completed: defaults kept",
                            "hyper-parameters": _describe_params(best[plan.name])})
    except KeyboardInterrupt:
        atomic_write_json(folder / TUNE_FILE, {**info, "status": INTERRUPTED_STATUS})
        say(f"\ninterrupted: finished trials are kept in {folder / STUDY_FILE}; resume with: bench tune --resume {folder}")
        return TuneOutcome(folder, INTERRUPTED_STATUS)
    atomic_write_text(folder / TUNED_FILE, tuned_toml(config, folder, plans, best))
    atomic_write_json(folder / TUNE_FILE, {**info, "status": FINISHED})
    write_tuning_report(folder)
    return TuneOutcome(folder, FINISHED, summary)
