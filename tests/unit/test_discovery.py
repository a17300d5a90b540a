"""Built-in plugins are registered by module: no entry point, install or environment variable needed."""
from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import bench.plugins
from bench.plugins import BUILTIN_PLUGINS, load_plugins

ROOT = Path(__file__).resolve().parents[2]


def test_builtins_are_registered_without_entry_points(monkeypatch):
    monkeypatch.setattr(bench.plugins, "entry_points", lambda group: [])
    registry = load_plugins(strict=True)
    assert {"maml", "finetune", "protonet"} <= set(registry.learners)
    assert {"sinusoid", "omniglot"} <= set(registry.suites) and "inline" in registry.executors
    assert {registration.source.name for registration in registry.learners.values()} == {"learners", "l2l"}


def test_disabling_plugins_by_name_leaves_the_builtins(monkeypatch):
    monkeypatch.setenv("METABENCH_DISABLE_PLUGINS", ",".join([*BUILTIN_PLUGINS, "metabench"]))
    registry = load_plugins(strict=True)
    assert "maml" in registry.learners and "sinusoid" in registry.suites and "inline" in registry.executors


def test_a_source_checkout_that_was_never_installed_lists_the_builtins():
    """No site processing (so no editable install's finder): only the repository folder and the dependencies."""
    program = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {sysconfig.get_paths()['purelib']!r}]; "
               "assert not any('editable' in repr(finder).lower() for finder in sys.meta_path); "
               "from bench.cli import main; code = main(['plugins', '--json']); "
               "import bench_plugins; print(bench_plugins.__file__, file=sys.stderr); sys.exit(code)")
    result = subprocess.run([sys.executable, "-S", "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    listed = {entry["name"] for entry in json.loads(result.stdout)["plugins"]}
    assert {"maml", "reptile", "sinusoid", "omniglot", "inline", "processes"} <= listed
    assert result.stderr.strip().endswith(str(ROOT / "plugins" / "__init__.py"))
