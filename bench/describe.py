"""``bench describe NAME``: what a learner takes (hyper-parameters, their defaults per suite setting, what ``bench
tune`` searches) or what a suite offers (settings, budgets per profile), read from the plugins without running."""
from __future__ import annotations

import dataclasses
import typing

from tabulate import tabulate

from bench.api import Learner, TaskKind, declined
from bench.config import PROFILES, RunConfig
from bench.grid import plan
from bench.plugins import Registration, Registry


def describe(registration: Registration, registry: Registry, profile: str) -> str:
    """The text ``bench describe`` prints for one registered learner or suite."""
    header = f"{registration.kind} {registration.name} ({registration.source}): {registration.description}"
    if registration.kind == "learner":
        return "\n\n".join([header, *_learner_sections(registration, registry, profile)]) + "\n"
    return "\n\n".join([header, *_suite_sections(registration)]) + "\n"


def _learner_sections(learner: Registration, registry: Registry, profile: str) -> list[str]:
    defaults = learner.cls.Config()
    hints = typing.get_type_hints(learner.cls.Config)
    fields = [{"hyper-parameter": field.name, "type": _type_text(hints[field.name]),
               "default": _value_text(getattr(defaults, field.name))} for field in dataclasses.fields(defaults)]
    sections = ["Hyper-parameters (--set " + learner.name + ".NAME=VALUE):\n" + tabulate(fields, headers="keys")]
    cells = plan(RunConfig(learners=[learner.name], suites=["all"], profile=profile, seeds=1), registry)
    rows = []
    for cell in cells:
        reason = declined(learner.cls, RunConfig().make_suite(cell.suite.cls), cell.setting)
        changed = {name: value for name, value in dataclasses.asdict(cell.hyperparameters).items()
                   if value != getattr(defaults, name)}
        rows.append({"suite": cell.suite.name, "setting": cell.setting.name,
                     f"tasks ({profile})": f"{cell.budget.meta_train_tasks:,}",
                     "differs from the defaults": f"n/a: {reason}" if reason else
                     " ".join(f"{name}={_value_text(value)}" for name, value in changed.items()) or "–"})
    sections.append(f"Per suite setting (suite defaults and suggestions; profile {profile}):\n"
                    + tabulate(rows, headers="keys"))
    spaces = [{"suite kind": kind.value, "searched by bench tune": " ".join(
        f"{name}={space}" for name, space in learner.cls.search_space(kind).items()) or "nothing (runs its defaults)"}
        for kind in TaskKind]
    sections.append("Search space:\n" + tabulate(spaces, headers="keys"))
    return sections


def _type_text(hint: object) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _value_text(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _suite_sections(suite: Registration) -> list[str]:
    instance = RunConfig().make_suite(suite.cls)
    sections = [f"kind {instance.kind.value}, metric {instance.metric_name} "
                f"({'lower' if instance.lower_is_better else 'higher'} is better)"
                + ("; test-only: run it with --test-suites" if instance.test_only else "")]
    if instance.backbone_names:
        sections.append(f"backbones (--backbone NAME): {', '.join(instance.backbone_names)} "
                        f"(default {instance.backbone_names[0]})")
    rows = []
    for setting in instance.settings():
        row = {"setting": setting.name, "shots": setting.shots, "ways": setting.ways or "–",
               "test query": setting.query, "train query": setting.query_for("train")}
        for profile in PROFILES:
            budget = RunConfig(profile=profile).budget_for(suite.cls, setting, Learner)
            row[f"{profile} tasks / test episodes"] = f"{budget.meta_train_tasks:,} / {budget.test_episodes}"
        rows.append(row)
    sections.append("Settings and budgets (the paper profile may give a learner its paper's own: bench run "
                    "--dry-run shows each cell's):\n" + tabulate(rows, headers="keys"))
    return sections
