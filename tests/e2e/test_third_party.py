"""A third-party plugin package, installed with pip, works end to end: listed, traced, run, checked by the kit."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers import run_bench

pytestmark = pytest.mark.e2e

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "metabench-example"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """``pip install`` the fixture package (a copy: pip writes build files beside the sources) into a folder."""
    source = shutil.copytree(FIXTURE, tmp_path_factory.mktemp("source") / FIXTURE.name)
    target = tmp_path_factory.mktemp("site-packages")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True)
    return target


def test_installed_package_is_listed_with_its_distribution(site):
    result = run_bench("plugins", "--json", pythonpath=[site])
    assert result.returncode == 0, result.stderr
    listed = {(entry["kind"], entry["name"]): entry for entry in json.loads(result.stdout)["plugins"]}
    for key in (("learner", "ridge-head"), ("suite", "polynomials")):
        entry = listed[key]
        assert (entry["plugin"], entry["distribution"], entry["version"]) == ("example", "metabench-example", "0.1.0")
    assert listed[("learner", "ridge-head")]["description"].startswith("Ridge head (R2-D2)")
    assert ("learner", "maml") in listed


def test_run_all_learners_on_the_third_party_suite(site, tmp_path):
    """The third-party learner runs beside the built-ins, on its own suite and on a built-in one."""
    out = tmp_path / "run"
    result = run_bench("run", "--learners", "all", "--suites", "polynomials,sinusoid", "--shots", "5",
                       "--profile", "smoke", "--tasks", "100", "--episodes", "5", "--steps", "2", "--no-progress",
                       "--out", str(out), pythonpath=[site])
    assert result.returncode == 0, result.stderr
    cells = [json.loads(path.read_text()) for path in (out / "cells").glob("*.json")]
    status = {(cell["suite"], cell["learner"]): cell["status"] for cell in cells}
    assert status[("polynomials", "ridge-head")] == status[("sinusoid", "ridge-head")] == "ok"
    assert status[("polynomials", "maml")] == "ok"
    records = pd.read_csv(out / "records.csv")
    ridge = records[records["learner"] == "ridge-head"]
    assert set(ridge["step"]) == {0} and len(ridge) == 2 * 5  # two suites x 5 episodes, a single step each
    report = (out / "report.md").read_text()
    assert "| polynomials | K=5       | ridge-head" in report


def test_the_authors_conformance_test_passes(site):
    """The package's own test (one call of the kit per plugin), run as its author runs it."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(FIXTURE / "tests")],
                            cwd=FIXTURE, capture_output=True, text=True, timeout=600,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_trace_shows_loading_and_hook_calls(site):
    result = run_bench("plugins", pythonpath=[site], env={"METABENCH_TRACE_PLUGINS": "1"})
    assert result.returncode == 0, result.stderr
    trace = [line for line in result.stderr.splitlines() if line.startswith("[metabench plugins]")]
    assert "[metabench plugins] loading plugin 'example' (metabench_example.plugin, metabench-example 0.1.0)" in trace
    assert "[metabench plugins] example: calling register_learners" in trace
    assert "[metabench plugins] example: learner 'ridge-head' -> metabench_example.ridge.RidgeHead" in trace
    assert any("finish register_suites" in line for line in trace)  # pluggy's own hook-call trace
    assert not run_bench("plugins", pythonpath=[site]).stderr  # silent unless asked


def test_disable_the_third_party_plugin(site):
    result = run_bench("plugins", "--json", pythonpath=[site], env={"METABENCH_DISABLE_PLUGINS": "metabench-example"})
    names = {entry["name"] for entry in json.loads(result.stdout)["plugins"]}
    assert "ridge-head" not in names and "maml" in names


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory) -> tuple[Path, Path]:
    """``bench new-plugin my-learner``, then ``pip install`` of the package it wrote: (package folder, site)."""
    parent = tmp_path_factory.mktemp("scaffold")
    result = run_bench("new-plugin", "my-learner", "--dir", str(parent))
    assert result.returncode == 0, result.stderr
    package = parent / "metabench-my-learner"
    target = tmp_path_factory.mktemp("scaffold-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(package)], check=True)
    return package, target


def test_new_plugin_scaffold_installs_and_runs(scaffolded, tmp_path):
    package, site = scaffolded
    assert sorted(str(path.relative_to(package)) for path in package.rglob("*") if path.is_file()
                  and "egg-info" not in str(path) and "build" not in path.parts) == [
        "README.md", "pyproject.toml", "src/metabench_my_learner/__init__.py", "src/metabench_my_learner/learner.py",
        "src/metabench_my_learner/plugin.py", "tests/test_conformance.py"]
    listed = json.loads(run_bench("plugins", "--json", pythonpath=[site]).stdout)["plugins"]
    assert {"name": "my-learner", "distribution": "metabench-my-learner"}.items() <= next(
        entry for entry in listed if entry["name"] == "my-learner").items()
    result = run_bench("run", "--learners", "my-learner", "--profile", "smoke", "--shots", "5", "--tasks", "100",
                       "--episodes", "5", "--no-progress", "--out", str(tmp_path / "run"), pythonpath=[site])
    assert result.returncode == 0, result.stderr
    assert "my-learner" in (tmp_path / "run" / "report.md").read_text()


def test_new_plugin_refuses_bad_names_and_existing_folders(tmp_path):
    bad = run_bench("new-plugin", "My Learner", "--dir", str(tmp_path))
    assert bad.returncode == 2 and "use lower-case letters" in bad.stderr
    (tmp_path / "metabench-taken").mkdir()
    taken = run_bench("new-plugin", "taken", "--dir", str(tmp_path))
    assert taken.returncode == 2 and "already exists" in taken.stderr


@pytest.mark.slow
def test_scaffolded_plugin_passes_its_conformance_test(scaffolded):
    """The template learner is a working starting point: the package's own test passes (about a minute)."""
    package, site = scaffolded
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=package,
                            capture_output=True, text=True, timeout=900, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
