"""What ``bench tune`` keeps in Optuna: the tune folder's layout, search spaces as Optuna distributions, the seeded
sampler, the pruner on the meta-validation curve, and the trials read back as rows.

Every trial records its position in its study (``index``, 0..trials-1): Optuna's own trial numbers also count the
trials a killed tune left running, which are marked ``interrupted`` (failed) and run again under the same index
with the same parameters, so indices are what a resumed tune and an uninterrupted one share.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from bench.api import Choice, FloatRange, IntRange, SearchRange
from bench.errors import BenchError

TUNE_FILE = "tune.json"
STUDY_FILE = "study.db"
TUNED_FILE = "tuned.toml"

INDEX, INTERRUPTED, ERROR = "index", "interrupted", "error"
"""Trial user attributes: the trial's position in its study; set on a trial a killed tune left running; why a
trial failed (a learner error or a non-finite loss: it counts as one of the study's trials)."""
TASKS_SEEN, BEST_TASKS, BEST_STEP, SECONDS = "tasks_seen", "best_tasks", "best_step", "meta_train_seconds"
"""Trial user attributes of a finished trial: tasks meta-trained, where its best validation point was (tasks and
adaptation step), meta-training seconds (without meta-validation)."""
POPULATION, POPULATION_NOTE = "population", "population_note"
"""Trial user attributes: how many trials meta-trained together with it as one vectorised model (it included; 1:
alone); why a trial asked to train in a population trained alone (``bench tune --population``)."""

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_url(folder: Path) -> str:
    """The SQLite URL of a tune folder's studies (absolute, so that workers elsewhere find it on a shared disk)."""
    return f"sqlite:///{(folder / STUDY_FILE).resolve()}"


def distributions(learner: str, space: dict[str, SearchRange], fields: set[str]) -> dict[str, BaseDistribution]:
    """A learner's search space as Optuna distributions; a key that is no hyper-parameter or a bad range is an error
    naming the learner."""
    result: dict[str, BaseDistribution] = {}
    for key, spec in space.items():
        if key not in fields:
            raise BenchError(f"learner '{learner}': search_space names {key!r}, which is not one of its "
                             f"hyper-parameters ({', '.join(sorted(fields))})")
        try:
            if isinstance(spec, FloatRange):
                result[key] = FloatDistribution(spec.low, spec.high, log=spec.log)
            elif isinstance(spec, IntRange):
                result[key] = IntDistribution(spec.low, spec.high, log=spec.log)
            elif isinstance(spec, Choice):
                result[key] = CategoricalDistribution(spec.options)
            else:
                raise ValueError(f"expected a FloatRange, IntRange or Choice, got {spec!r}")
        except ValueError as error:
            raise BenchError(f"learner '{learner}': search_space[{key!r}]: {error}") from None
    return result


def describe(spec: SearchRange) -> str:
    """A search range for people: ``0.001..0.1 (log)``, ``1..10``, ``one of 1, 5``."""
    if isinstance(spec, Choice):
        return "one of " + ", ".join(map(str, spec.options))
    return f"{spec.low:g}..{spec.high:g}" + (" (log)" if spec.log else "")


def startup_trials(trials: int) -> int:
    """Random trials before TPE models the results, and completed trials before pruning starts: a third of the
    budget, at least 3 (TPE splits its observations into good and bad ones) and at most Optuna's default 10 (which
    would leave a study of 10 trials or fewer a random search)."""
    return min(10, max(3, trials // 3))


def sampler(seed: int, index: int, trials: int) -> optuna.samplers.TPESampler:
    """The TPE sampler that asks trial ``index`` of a study: seeded by (seed, index) alone, so that a resumed study
    asks what an uninterrupted one asks (its history of finished trials being the same)."""
    entropy = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=entropy, n_startup_trials=startup_trials(trials))


class ValidationPruner(optuna.pruners.BasePruner):
    """Median pruning on the meta-val curve: a trial stops at a validation point where its best score so far is
    worse than the median of the best scores the completed trials of earlier batches had reached by the same number
    of tasks. Comparing only with earlier batches (not with trials running beside it, nor with those finished while
    it runs) makes the decision the same however workers are scheduled, and after a resume.

    ``startup``: completed trials needed before any pruning; ``warmup_tasks``: no pruning before this many tasks;
    ``batch``: trials asked at a time (trial ``index`` belongs to batch ``index // batch``)."""

    def __init__(self, startup: int, warmup_tasks: int, batch: int) -> None:
        self.startup, self.warmup_tasks, self.batch = startup, warmup_tasks, batch

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.warmup_tasks:
            return False
        batch = trial.user_attrs[INDEX] // self.batch
        peers = [peer for peer in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if peer.user_attrs[INDEX] // self.batch < batch]
        if len(peers) < self.startup:
            return False
        minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
        best = min if minimize else max
        reached = [best(value for at, value in peer.intermediate_values.items() if at <= step) for peer in peers
                   if any(at <= step for at in peer.intermediate_values)]
        if not reached:
            return False
        median = float(np.median(reached))
        mine = best(trial.intermediate_values.values())
        return mine > median if minimize else mine < median


@dataclasses.dataclass(frozen=True)
class TrialRow:
    """One trial of a study as the tuning report shows it."""

    index: int
    state: str
    """``complete``, ``pruned``, ``failed`` or, while a tune runs, ``running`` / ``waiting``."""
    value: float | None
    """The objective (the best validation point's score; pruned: the last reported score)."""
    params: dict[str, Any]
    tasks_seen: int | None
    error: str | None


STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count towards a study's budget: all but those a killed tune left running."""
    return [trial for trial in trials if not trial.user_attrs.get(INTERRUPTED)]


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """The study's counted trials, by index."""
    rows = [TrialRow(trial.user_attrs.get(INDEX, -1), STATES[trial.state], trial.value, trial.params,
                     trial.user_attrs.get(TASKS_SEEN), trial.user_attrs.get(ERROR))
            for trial in counted(study.get_trials(deepcopy=False))]
    return sorted(rows, key=lambda row: row.index)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The completed trial with the best objective (the first of equals), or None when none completed."""
    try:
        return study.best_trial
    except ValueError:  # no completed trial
        return None
