"""Plugin discovery: the built-ins by module, then third-party packages through the ``metabench`` entry points.

The built-in plugins (``bench_plugins``, the repository's ``plugins/`` folder) are registered by
module, as llm and datasette register their default plugins, so a source checkout that was never
installed works and no environment variable can remove them. ``METABENCH_DISABLE_PLUGIN_AUTOLOAD=1``
loads the built-ins only (the project's own tests use it, so whatever else is installed cannot change
their results); ``METABENCH_DISABLE_PLUGINS`` skips third-party plugins by name.

Every problem with one plugin (import error, misspelled hook, a hook that raises, a class of the
wrong type, a duplicate name) becomes one line in ``Registry.problems`` and the other plugins still
load; ``strict=True`` turns any problem into a ``PluginLoadError``.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

import pluggy

from bench import __version__, hookspecs
from bench.api import Executor, Learner, TaskSuite
from bench.errors import BenchError
from bench.loggers import Logger

ENTRY_POINT_GROUP = hookspecs.PROJECT
BUILTIN_PACKAGE = "bench_plugins"
BUILTIN_PLUGINS = {"learners": "bench_plugins.learners", "l2l": "bench_plugins.learners.l2l",
                   "suites": "bench_plugins.suites", "executors": "bench_plugins.executors",
                   "loggers": "bench_plugins.loggers"}
"""The built-in plugins: name -> module, registered in this order before any entry point."""
BUILTIN_DISTRIBUTION = "metabench"
DISABLE_ENV = "METABENCH_DISABLE_PLUGINS"
NO_AUTOLOAD_ENV = "METABENCH_DISABLE_PLUGIN_AUTOLOAD"
TRACE_ENV = "METABENCH_TRACE_PLUGINS"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
KINDS = {"learner": ("register_learners", Learner), "suite": ("register_suites", TaskSuite),
         "executor": ("register_executors", Executor), "logger": ("register_loggers", Logger)}


class PluginLoadError(BenchError, RuntimeError):
    """Raised in strict mode when any plugin failed to load."""


class UnknownNameError(BenchError, ValueError):
    """A learner, suite, executor or logger name that no plugin registered."""


@dataclasses.dataclass(frozen=True)
class PluginSource:
    """Where a plugin came from: its entry point and the distribution that declared it."""

    name: str
    target: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"plugin '{self.name}' ({self.target}, {self.distribution} {self.version})"


@dataclasses.dataclass(frozen=True)
class Registration:
    kind: str
    name: str
    cls: type
    source: PluginSource

    @property
    def description(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.splitlines()[0] if doc else ""

    @property
    def unavailable_reason(self) -> str | None:
        """Why the class cannot run here (a missing optional module), or None."""
        return self.cls.unavailable_reason()


@dataclasses.dataclass(frozen=True)
class PluginProblem:
    source: PluginSource
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


@dataclasses.dataclass
class Registry:
    learners: dict[str, Registration] = dataclasses.field(default_factory=dict)
    suites: dict[str, Registration] = dataclasses.field(default_factory=dict)
    executors: dict[str, Registration] = dataclasses.field(default_factory=dict)
    loggers: dict[str, Registration] = dataclasses.field(default_factory=dict)
    problems: list[PluginProblem] = dataclasses.field(default_factory=list)

    def of_kind(self, kind: str) -> dict[str, Registration]:
        return {"learner": self.learners, "suite": self.suites, "executor": self.executors,
                "logger": self.loggers}[kind]

    def unavailable(self, kind: str) -> dict[str, str]:
        """The registered classes of ``kind`` that cannot run here, with the reason, by name."""
        reasons = {name: registration.unavailable_reason for name, registration in sorted(self.of_kind(kind).items())}
        return {name: reason for name, reason in reasons.items() if reason}

    def select(self, kind: str, names: str | Iterable[str]) -> list[Registration]:
        """Resolve a list / comma-separated string of names, in the order given, where ``"all"`` stands for every
        available one but those with ``in_all = False`` (``all,l2l-maml``: those and a named one besides)."""
        registered = self.of_kind(kind)
        if isinstance(names, str):
            names = [part.strip() for part in names.split(",") if part.strip()]
        names = list(names)
        unavailable = self.unavailable(kind)
        unknown = [name for name in names if name not in registered and name != "all"]
        if unknown or not names:
            valid = ", ".join(sorted(registered)) or "none installed"
            what = ", ".join(repr(name) for name in unknown) or "nothing"
            raise UnknownNameError(f"unknown {kind} {what}; valid {kind}s: all, {valid}")
        for name in names:
            if name in unavailable:
                raise UnknownNameError(f"{kind} '{name}' is unavailable: {unavailable[name]}")
        everything = [name for name in sorted(registered)
                      if name not in unavailable and getattr(registered[name].cls, "in_all", True)]
        chosen = [one for name in names for one in (everything if name == "all" else [name])]
        return [registered[name] for name in dict.fromkeys(chosen)]


def _source_of(entry_point: EntryPoint) -> PluginSource:
    dist = entry_point.dist
    return PluginSource(
        name=entry_point.name,
        target=entry_point.value,
        distribution=dist.name if dist else "unknown",
        version=dist.version if dist else "unknown",
    )


def _discover() -> list[EntryPoint]:
    """The group's third-party entry points, each once, by name (an older metabench's own entry points for its
    built-ins are skipped: the built-ins are registered by module)."""
    unique = {(ep.name, ep.value): ep for ep in entry_points(group=ENTRY_POINT_GROUP)
              if _source_of(ep).distribution != BUILTIN_DISTRIBUTION}
    return sorted(unique.values(), key=lambda ep: ep.name)


def _import_builtin(module: str) -> ModuleType:
    """Import a built-in plugin module; in a source checkout that was never installed, ``bench_plugins`` is the
    ``plugins/`` folder beside ``bench/``."""
    if BUILTIN_PACKAGE not in sys.modules and importlib.util.find_spec(BUILTIN_PACKAGE) is None:
        folder = Path(__file__).resolve().parents[1] / "plugins"
        spec = importlib.util.spec_from_file_location(BUILTIN_PACKAGE, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[BUILTIN_PACKAGE] = package
        spec.loader.exec_module(package)
    return importlib.import_module(module)


def _autoload() -> bool:
    return os.environ.get(NO_AUTOLOAD_ENV, "") in ("", "0")


def _disabled() -> set[str]:
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def class_problem(kind: str, name: object, cls: object) -> str | None:
    """Why this registration is invalid, or None."""
    base = KINDS[kind][1]
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        return f"{kind} name {name!r} is not a lower-case identifier (letters, digits, '-', '_', '.')"
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        return f"registered {kind} '{name}' as {cls!r}, which is not a subclass of {base.__module__}.{base.__name__}"
    if kind == "suite" and getattr(cls, "name", None) != name:
        return f"suite '{name}' ({cls.__qualname__}) must set name = '{name}' (it seeds the suite's episodes)"
    if kind == "learner" and hasattr(cls, "adapt_batch"):
        return (f"learner '{name}' ({cls.__qualname__}) defines adapt_batch(), which metabench no longer calls: "
                f"implement adapt(support, steps, *, batched=False) with its batched path and drop adapt_batch")
    if kind == "learner" and cls.batched and "batched" not in inspect.signature(cls.adapt).parameters:
        return (f"learner '{name}' ({cls.__qualname__}) sets batched = True, but its adapt() takes no batched "
                f"keyword: accept adapt(support, steps, *, batched=False), or set batched = False")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        return f"{kind} '{name}' ({cls.__qualname__}) does not implement {missing}"
    if kind == "learner" and not dataclasses.is_dataclass(getattr(cls, "Config", None)):
        return f"learner '{name}' ({cls.__qualname__}) needs a Config dataclass of hyper-parameters"
    return None


def _tracing() -> bool:
    return os.environ.get(TRACE_ENV, "") not in ("", "0")


def _trace(message: str) -> None:
    if _tracing():
        print(f"[metabench plugins] {message}", file=sys.stderr)


class _Loader:
    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        if _tracing():  # pluggy's own trace of every hook call, with its arguments and results
            self.manager.trace.root.setwriter(lambda line: print(f"[metabench plugins] {line}", end="", file=sys.stderr))
            self.manager.enable_tracing()
        self.registry = Registry()
        self.sources: dict[str, PluginSource] = {}

    def add(self, source: PluginSource, load: Callable[[], ModuleType]) -> None:
        _trace(f"loading {source}")
        try:
            module = load()
        except Exception as error:  # any failure of third-party code is reported, not raised
            self._problem(source, f"failed to import: {type(error).__name__}: {error}")
            return
        try:
            self.manager.register(module, name=source.name)
        except Exception as error:
            self._problem(source, f"cannot be registered: {error}")
            return
        self.sources[source.name] = source

    def _problem(self, source: PluginSource, message: str) -> None:
        _trace(f"problem: {source}: {message}")
        self.registry.problems.append(PluginProblem(source, message))

    def _drop_unknown_hooks(self) -> None:
        """Unregister plugins that implement hooks the contract does not have (likely misspelled)."""
        while True:
            try:
                self.manager.check_pending()
                return
            except pluggy.PluginValidationError as error:
                name = self.manager.get_name(error.plugin)
                unknown = sorted(
                    hook for hook in dir(self.manager.hook)
                    if not hook.startswith("_")
                    and not getattr(self.manager.hook, hook).has_spec()
                    and any(impl.plugin_name == name for impl in getattr(self.manager.hook, hook).get_hookimpls())
                )
                valid = ", ".join(sorted(KINDS[kind][0] for kind in KINDS))
                self._problem(self.sources[name], f"implements unknown hook {', '.join(unknown)} (valid hooks: {valid})")
                self.manager.unregister(name=name)

    def collect(self) -> Registry:
        self._drop_unknown_hooks()
        for kind, (hook_name, _) in KINDS.items():
            for plugin_name, source in self.sources.items():
                if self.manager.get_plugin(plugin_name) is not None:
                    self._collect_from(kind, hook_name, source)
        return self.registry

    def _collect_from(self, kind: str, hook_name: str, source: PluginSource) -> None:
        others = [plugin for name, plugin in self.manager.list_name_plugin() if name != source.name]
        caller = self.manager.subset_hook_caller(hook_name, remove_plugins=others)
        offered: list[tuple[object, object]] = []
        _trace(f"{source.name}: calling {hook_name}")
        try:
            caller(register=lambda name, cls: offered.append((name, cls)))
        except Exception as error:
            self._problem(source, f"hook {hook_name} raised {type(error).__name__}: {error}")
            return
        registered = self.registry.of_kind(kind)
        for name, cls in offered:
            why = class_problem(kind, name, cls)
            if why:
                self._problem(source, why)
            elif name in registered:
                first = registered[name].source
                self._problem(source, f"{kind} '{name}' is also registered by {first}; keeping the one from '{first.name}'")
            else:
                _trace(f"{source.name}: {kind} '{name}' -> {cls.__module__}.{cls.__qualname__}")
                registered[name] = Registration(kind, name, cls, source)


def load_plugins(strict: bool = False, extra: Iterable[tuple[PluginSource, ModuleType]] = ()) -> Registry:
    """Register the built-ins, discover and validate every third-party plugin (unless autoloading is off);
    ``extra`` adds in-process plugin modules (tests, notebooks)."""
    loader = _Loader()
    for name, module in BUILTIN_PLUGINS.items():
        loader.add(PluginSource(name, module, BUILTIN_DISTRIBUTION, __version__), lambda module=module: _import_builtin(module))
    disabled = _disabled()
    for entry_point in _discover() if _autoload() else ():
        source = _source_of(entry_point)
        if source.name not in disabled and source.distribution not in disabled:
            loader.add(source, entry_point.load)
        else:
            _trace(f"disabled by {DISABLE_ENV}: {source}")
    for source, module in extra:
        loader.add(source, lambda module=module: module)
    registry = loader.collect()
    if strict and registry.problems:
        raise PluginLoadError("plugin problems (strict mode):\n" + "\n".join(f"  {p}" for p in registry.problems))
    return registry
