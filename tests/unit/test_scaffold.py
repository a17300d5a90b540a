"""``bench new-plugin --kind suite``: the package it writes holds a suite that passes the kit and runs with the
built-in learners (the learner kind is installed and run in tests/e2e/test_third_party.py)."""
from __future__ import annotations

import importlib
import sys

import pytest

from bench.cli import main
from bench.config import RunConfig
from bench.errors import BenchError
from bench.grid import plan
from bench.plugins import PluginSource, load_plugins
from bench.scaffold import new_plugin
from bench.testing import assert_suite_conforms


@pytest.fixture
def suite_package(tmp_path, monkeypatch):
    """The package of ``bench new-plugin quadratics --kind suite``, importable (its src on sys.path)."""
    assert main(["new-plugin", "quadratics", "--kind", "suite", "--dir", str(tmp_path)]) == 0
    root = tmp_path / "metabench-quadratics"
    monkeypatch.syspath_prepend(str(root / "src"))
    yield root
    for name in [name for name in sys.modules if name.startswith("metabench_quadratics")]:
        del sys.modules[name]


def test_the_suite_template_passes_the_kit_and_plans_with_the_built_in_learners(suite_package):
    assert sorted(path.name for path in (suite_package / "src" / "metabench_quadratics").iterdir()
                  if path.suffix == ".py") == ["__init__.py", "plugin.py", "suite.py"]
    assert 'description = "A metabench suite plugin: quadratics."' in (suite_package / "pyproject.toml").read_text()
    assert "assert_suite_conforms(Quadratics())" in (suite_package / "tests" / "test_conformance.py").read_text()
    suite_class = importlib.import_module("metabench_quadratics.suite").Quadratics
    assert_suite_conforms(suite_class())
    hooks = importlib.import_module("metabench_quadratics.plugin")
    registry = load_plugins(strict=True, extra=[(PluginSource("quadratics", "tests", "tests", "0"), hooks)])
    cells = plan(RunConfig(learners=["maml", "finetune"], suites=["quadratics"], profile="quick", seeds=1), registry)
    assert [(cell.setting.name, cell.learner.name, cell.budget.meta_train_tasks) for cell in cells] == [
        ("K=5", "maml", 50_000), ("K=5", "finetune", 50_000), ("K=10", "maml", 50_000), ("K=10", "finetune", 50_000)]


def test_an_unknown_kind_is_refused(tmp_path, capsys):
    with pytest.raises(BenchError, match="plugin kind 'executor': one of learner, suite"):
        new_plugin("x", tmp_path, "executor")
    with pytest.raises(SystemExit):
        main(["new-plugin", "x", "--kind", "executor", "--dir", str(tmp_path)])
    assert "invalid choice: 'executor'" in capsys.readouterr().err
