"""Shared fixtures: the built-in registry, a factory for on-disk plugin packages, staged Omniglot.

The tests are grouped by what they check: ``unit/`` (the host, in-process), ``plugins/`` (learners and suites:
gradients, learning, conformance, data loading) and ``e2e/`` (real ``bench`` processes: kills and resumes,
executors, pip-installed packages). ``pytest`` runs the first two (pyproject's addopts deselect the markers
``e2e`` and ``slow``); ``pytest -m e2e`` and ``pytest -m slow`` run the others (``make test-e2e``,
``make test-slow``; CI runs all three).

``make test`` and ``make test-slow`` spread the tests over one worker per core (pytest-xdist's ``-n auto``), each worker
on one torch thread (and so every process it starts): the networks under test are small, and two workers with two
threads each on two cores wait for each other's threads (measured 5-7x slower, issue 18).
"""
from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is first imported, and for every process a test starts

from bench.plugins import NO_AUTOLOAD_ENV, load_plugins
from bench.session import EXECUTOR_ENV

# Only the built-ins, in this process and every `bench` it starts: whatever other metabench plugins the
# developer has installed cannot change what the tests see. Tests of third-party plugins turn it back on.
os.environ[NO_AUTOLOAD_ENV] = "1"
# One cell at a time in the test's own process unless a test asks otherwise: tests register plugins in-process and
# monkeypatch learners, which worker processes would not see (tests/unit/test_threads.py covers ``auto``).
os.environ[EXECUTOR_ENV] = "inline"

collect_ignore = ["fixtures"]  # tests/fixtures/ holds a plugin package with its own tests, run by test_third_party.py


@pytest.fixture(scope="session")
def registry():
    return load_plugins(strict=True)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: small networks gain nothing from a second, and on a busy CPU the waiting
    threads made meta-training several times slower (100 Conv-4 episodes: 25 s with two threads, 5 s with one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def plugin_dist(tmp_path: Path):
    """Make an installed-looking distribution on a path entry: modules plus metabench entry points.

    Returns the folder to put on PYTHONPATH; importlib.metadata discovers it like a pip install.
    """

    def make(name: str, modules: dict[str, str], entry_points: dict[str, str], version: str = "0.1") -> Path:
        root = tmp_path / f"site-{name}"
        root.mkdir()
        for module, source in modules.items():
            (root / f"{module}.py").write_text(textwrap.dedent(source))
        dist_info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "\n".join(f"{ep} = {target}" for ep, target in entry_points.items())
        (dist_info / "entry_points.txt").write_text(f"[metabench]\n{lines}\n")
        return root

    return make


@pytest.fixture
def install(plugin_dist, monkeypatch) -> Iterator[Callable[..., Path]]:
    """``install(name, modules, entry_points, version)``: a plugin package on sys.path, found through its entry
    points as a pip-installed one is (third-party autoloading on, for this test only); its modules are
    forgotten afterwards, so that no other test imports them."""
    modules: list[str] = []

    def install(name: str, sources: dict[str, str], entry_points: dict[str, str], version: str = "0.1") -> Path:
        site = plugin_dist(name, sources, entry_points, version)
        monkeypatch.syspath_prepend(site)
        monkeypatch.setenv(NO_AUTOLOAD_ENV, "0")
        modules.extend(sources)
        return site

    yield install
    for module in modules:
        sys.modules.pop(module, None)


@pytest.fixture(scope="session")
def staged(tmp_path_factory) -> Path:
    """Six real Omniglot alphabets (162 characters) shipped in tests/data/omniglot, staged as the standard tree."""
    from omniglot_data import stage

    data = tmp_path_factory.mktemp("data")
    stage(data)
    return data


@pytest.fixture
def private_cache(tmp_path_factory, monkeypatch) -> None:
    """Image caches in the session's temporary folder, and no data folder from the environment."""
    monkeypatch.setenv("METABENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("METABENCH_DATA_DIR", raising=False)
