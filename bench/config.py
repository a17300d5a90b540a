"""Run configuration: profiles, the config file (TOML or YAML), ``--set`` overrides, validation.

The file and the command line share one set of keys; the command line wins. Every mistake is a
``ConfigError`` whose message names the key and what was expected.
"""
from __future__ import annotations

import contextlib
import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.api import VARY, Learner, Setting, TaskSuite, config_fields
from bench.errors import BenchError


class ConfigError(BenchError, ValueError):
    """A configuration value that cannot be used; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Profile:
    """A named budget: meta-training tasks per cell, test episodes, adaptation steps at test, meta-validation."""

    name: str
    meta_train_tasks: int
    test_episodes: int
    test_steps: int
    val_points: int
    """Meta-validation points over meta-training (unless ``val_every`` says otherwise)."""
    val_episodes: int
    """Meta-val episodes scored at each point (0: no meta-validation)."""
    description: str
    val_every: int | None = None
    """Tasks between validation points; None in ``PROFILES`` (``budget_for`` resolves it from ``val_points``)."""


PROFILES = {
    profile.name: profile
    for profile in (
        Profile("smoke", 500, 25, 10, 2, 10, "seconds: tests and CI"),
        Profile("quick", 100_000, 600, 10, 10, 100, "minutes on a laptop CPU (the default)"),
        Profile("paper", 1_750_000, 600, 10, 20, 600, "published budgets (MAML: 70,000 iterations x 25 tasks), for a GPU"),
    )
}
DEFAULT_SEEDS = {"smoke": 1, "quick": 3, "paper": 5}
"""Seeds per profile unless ``--seeds`` says otherwise: an interval over independently trained models needs several
(smoke: one, for speed). Not part of a cell's budget: a cell's numbers do not depend on how many seeds its run has."""
DEVICES = ("auto", "cpu", "cuda")
SELECT_MODES = ("best-val", "last")
"""``--select``: test the state at the best meta-validation point, or the last state."""


@dataclasses.dataclass
class RunConfig:
    """Everything that defines a run; saved resolved in run.json so a run can be repeated."""

    learners: list[str] = dataclasses.field(default_factory=lambda: ["all"])
    suites: list[str] = dataclasses.field(default_factory=lambda: ["sinusoid"])
    profile: str = "quick"
    seeds: int | None = None
    """Seeds 0..seeds-1; None: the profile's (set when the configuration is made, so run.json holds the number)."""
    shots: list[int | str] | None = None
    """Only the settings with these shots; ``"vary"`` (``bench.api.VARY``) selects the settings whose episodes vary in
    ways and shots (``Setting.variable``); None: every setting."""
    ways: list[int] | None = None
    steps: int | None = None
    episodes: int | None = None
    tasks: int | None = None
    val_every: int | None = None
    """Tasks between meta-validation points; None: the profile's number of points over the budget."""
    val_episodes: int | None = None
    """Meta-val episodes per point; None: the profile's; 0: no meta-validation."""
    select: str = "best-val"
    device: str = "auto"
    out: str | None = None
    data_dir: str | None = None
    backbone: str | None = None
    """The network every suite of the run builds (one of each suite's ``backbone_names``); None: each suite's
    default."""
    test_suites: list[str] | None = None
    """Suites to test on besides each meta-training suite's own test split (cross-domain: meta-train on a ``suites``
    suite, test on one of these with the same kind, ways and shots); None: none."""
    save_models: bool = False
    """Keep each finished cell's tested model in the run folder (``cells/<cell>.model.pt``, ``bench.saved_models``) for
    ``bench eval``. Changes no number: not part of the run's identity (``bench.store.run_identity``)."""
    set: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    tuned: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Hyper-parameters found by ``bench tune`` (its tuned.toml): ``study``, ``trials``, ``trial_tasks`` and
    ``hyperparameters`` = {learner: {"<suite> <setting>": {key: value}}}, applied over the suite defaults and under
    ``--set``; {}: not tuned."""

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"profile: unknown profile {self.profile!r}; valid: {', '.join(PROFILES)}")
        if self.device not in DEVICES:
            raise ConfigError(f"device: expected one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.select not in SELECT_MODES:
            raise ConfigError(f"select: expected one of {', '.join(SELECT_MODES)}, got {self.select!r}")
        if self.seeds is None:
            self.seeds = DEFAULT_SEEDS[self.profile]
        for shots in self.shots or []:
            if shots != VARY and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
                raise ConfigError(f"shots: expected positive integers or {VARY!r} (variable ways and shots), "
                                  f"got {shots!r}")
        for key in ("seeds", "steps", "episodes", "tasks", "val_every", "val_episodes"):
            value = getattr(self, key)
            least = 0 if key in ("steps", "val_episodes") else 1
            if value is not None and value < least:
                raise ConfigError(f"{key}: must be {'>= 0' if least == 0 else 'positive'}, got {value}")

    def make_suite(self, suite: type) -> Any:
        """An instance of a suite class that reads its data from this run's data folder and builds this run's
        ``backbone`` (unchecked here: ``grid.plan`` refuses a backbone a meta-training suite does not offer)."""
        instance = suite(data_dir=Path(self.data_dir) if self.data_dir else None)
        if self.backbone and self.backbone in suite.backbone_names:
            instance.backbone_name = self.backbone
        return instance

    def budget_for(self, suite: type[TaskSuite], setting: Setting, learner: type[Learner]) -> Profile:
        """The budget of one suite setting and learner: the profile's, where the suite names its own the suite's
        (``TaskSuite.budget``), under the ``paper`` profile the learner's paper's (``Learner.paper_budget``), then
        this run's overrides."""
        fields = suite.budget(self.profile, setting)
        if self.profile == "paper":
            fields.update(learner.paper_budget(suite, setting))
        base = dataclasses.replace(PROFILES[self.profile], **fields)
        tasks = self.tasks or base.meta_train_tasks
        return dataclasses.replace(
            base,
            meta_train_tasks=tasks,
            test_episodes=self.episodes or base.test_episodes,
            test_steps=base.test_steps if self.steps is None else self.steps,
            val_episodes=base.val_episodes if self.val_episodes is None else self.val_episodes,
            val_every=self.val_every or -(-tasks // base.val_points),
        )


CONFIG_KEYS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(RunConfig))
"""The keys of a config file, of ``run.json``'s configuration, and of the ``bench run`` flags that set them."""


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` (a string from the command line or a value from a file) to ``annotation``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        first, *others = [arg for arg in args if arg is not type(None)]
        try:
            return coerce(value, first, where)
        except ConfigError:
            for option in others:  # several types (e.g. int | str): the first that takes the value; else first's error
                with contextlib.suppress(ConfigError):
                    return coerce(value, option, where)
            raise
    if origin is typing.Literal:  # e.g. Literal["auto", "true", "false"]; a TOML true / false reads as "true" / "false"
        text = str(value).lower() if isinstance(value, bool) else value
        if text not in args:
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, args))}, got {value!r}")
        return text
    if origin is list:
        if isinstance(value, str):
            items = value.split(",")
        else:  # a single value stands for a list of one
            items = value if isinstance(value, list) else [value]
        return [coerce(item.strip() if isinstance(item, str) else item, args[0], where) for item in items]
    if origin is dict or annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool) or (annotation is int and isinstance(value, float)):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
        try:
            return annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(annotation)}")


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or YAML config file into a dict (never executes anything from it)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"config file {path}: cannot read: {error.strerror}") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path}: expected a .toml, .yaml or .yml file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"config file {path}: not valid {path.suffix[1:].upper()}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a table of keys at the top level")
    return data


def build_run_config(values: dict[str, Any], origin: str) -> RunConfig:
    """Validate ``values`` (keys of RunConfig) and make a RunConfig; ``origin`` prefixes errors."""
    hints = typing.get_type_hints(RunConfig)
    unknown = sorted(set(values) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"{origin}: unknown key {', '.join(unknown)}; valid keys: {', '.join(CONFIG_KEYS)}")
    typed = {key: coerce(value, hints[key], f"{origin}: {key}") for key, value in values.items()}
    if "set" in typed:
        typed["set"] = _check_set_table(typed["set"], origin)
    if "tuned" in typed:
        typed["tuned"] = _check_tuned_table(typed["tuned"], origin)
    try:
        return RunConfig(**typed)
    except ConfigError as error:  # RunConfig's own checks (__post_init__)
        raise ConfigError(f"{origin}: {error}") from None


def resolve_run_config(config_file: Path | None, given: dict[str, Any], set_options: list[str]) -> RunConfig:
    """The config file's values (validated alone, so that errors name the file), then the ``given`` values
    (None: not given) and the ``--set`` options on top."""
    values = read_config_file(config_file) if config_file else {}
    if config_file:
        build_run_config(values, origin=f"config file {config_file}")
    values |= {key: value for key, value in given.items() if value is not None}
    if set_options:
        values["set"] = parse_set_options(set_options, values.get("set", {}))
    return build_run_config(values, origin="command line")


def _check_set_table(table: Any, origin: str) -> dict[str, dict[str, Any]]:
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ConfigError(f"{origin}: set: expected a table per learner, e.g. [set.maml] inner_lr = 0.01")
    return table


TUNED_FORM = ('{study = "<tune folder>", trials = N, trial_tasks = B, '
              'hyperparameters = {<learner> = {"<suite> <setting>" = {<key> = <value>}}}}, as bench tune writes it')


def _check_tuned_table(table: Any, origin: str) -> dict[str, Any]:
    """The ``tuned`` table of a config file, checked for its shape (the values are checked per learner by the plan)."""
    if table == {}:
        return table

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{origin}: tuned: {problem}; expected {TUNED_FORM}")

    if not isinstance(table, dict):
        raise bad(f"expected a table, got {table!r}")
    expected = {"study", "trials", "trial_tasks", "hyperparameters"}
    for problem, keys in (("unknown", set(table) - expected), ("missing", expected - set(table))):
        if keys:
            raise bad(f"{problem} key {', '.join(sorted(keys))}")
    if not isinstance(table["study"], str):
        raise bad(f"study: expected a folder name, got {table['study']!r}")
    for key, least in (("trials", 0), ("trial_tasks", 1)):
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise bad(f"{key}: expected an integer of at least {least}, got {value!r}")
    for learner, settings in _table(table["hyperparameters"], "hyperparameters", bad).items():
        for setting, values in _table(settings, f"hyperparameters.{learner}", bad).items():
            _table(values, f"hyperparameters.{learner}.{setting!r}", bad)
    return table


def _table(value: Any, where: str, bad: Callable[[str], ConfigError]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(f"{where}: expected a table, got {value!r}")
    return value


def parse_set_options(options: list[str], table: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The ``set`` table of ``--set LEARNER.KEY=VALUE`` options, on top of a validated ``table`` (not changed)."""
    merged = {learner: dict(values) for learner, values in (table or {}).items()}
    for option in options:
        target, sep, value = option.partition("=")
        learner, dot, key = target.strip().partition(".")
        if not sep or not dot or not learner or not key.strip():
            raise ConfigError(f"--set {option!r}: expected LEARNER.KEY=VALUE, e.g. maml.inner_lr=0.01")
        merged.setdefault(learner, {})[key.strip()] = value.strip()
    return merged


def learner_config(learner: str, config_class: type, overrides: dict[str, Any], origin: str = "--set") -> Any:
    """Instantiate a learner's Config dataclass with overrides, naming any bad key or value (and ``origin``, where
    the overrides come from)."""
    fields = config_fields(config_class)
    hints = typing.get_type_hints(config_class)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(
            f"{origin} {learner}.{unknown[0]}: learner '{learner}' has no hyper-parameter {unknown[0]!r}; "
            f"valid: {', '.join(fields)}"
        )
    typed = {key: coerce(value, hints[key], f"{origin} {learner}.{key}") for key, value in overrides.items()}
    try:
        return config_class(**typed)
    except (TypeError, ValueError) as error:  # the Config's own validation (__post_init__)
        raise ConfigError(f"{origin} {learner}: {error}") from None
