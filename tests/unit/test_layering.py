"""The host's layers import downward only: no import cycle among bench's modules, at module level or inside
functions, and the plugin contract (bench.api, bench.hookspecs) imports no host internals."""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
CONTRACT = {"bench.api": {"bench.errors", "bench.seeding"}, "bench.hookspecs": {"bench.errors"},
            "bench.loggers": {"bench.api", "bench.errors", "bench.seeding"}}
"""What the plugin contract may import: leaves that import nothing of bench (bench.seeding: numpy only, behind
``episode_rngs``)."""
"""The contract modules and the only bench modules they may import."""


def module_name(path: Path) -> str:
    parts = path.relative_to(BENCH.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(BENCH.rglob("*.py"))}


def imported(name: str) -> set[str]:
    """What module ``name`` imports anywhere in its source (functions and TYPE_CHECKING included), absolute."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 packages
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # "from bench import render" imports the module bench.render; "from bench import hookimpl" imports bench
            targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names)
    return targets


def owner(target: str) -> str | None:
    """The bench module that ``target`` (a module or a name in one) lives in, or None outside bench."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


IMPORTS = {name: imported(name) for name in MODULES}
GRAPH = {name: {owner(target) for target in targets if owner(target)} - {name} for name, targets in IMPORTS.items()}


def test_the_graph_sees_imports_inside_functions():
    assert "bench.runner" in GRAPH["bench.cli"]  # cli imports it inside its commands only
    assert "bench.api" in GRAPH["bench.runner"]


def test_no_import_cycle_among_bench_modules():
    try:
        order = list(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as error:
        cycle = reversed(error.args[1])  # graphlib lists it from importee to importer
        raise AssertionError(f"import cycle (each imports the next): {' -> '.join(cycle)}") from None
    assert set(order) == set(MODULES)


def test_the_plugin_contract_imports_no_host_internals():
    for name, allowed in CONTRACT.items():
        assert GRAPH[name] <= allowed, f"{name} imports {sorted(GRAPH[name] - allowed)}"


def test_the_host_imports_no_plugin():
    for name, targets in IMPORTS.items():
        assert not any(target.startswith("bench_plugins") for target in targets), f"{name} imports a built-in plugin"
