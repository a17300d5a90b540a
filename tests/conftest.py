"""Shared fixtures: the --runslow switch, the built-in registry, a factory for on-disk plugin packages."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from bench.plugins import NO_AUTOLOAD_ENV, load_plugins

# Only the built-ins, in this process and every `bench` it starts: whatever other metabench plugins the
# developer has installed cannot change what the tests see. Tests of third-party plugins turn it back on.
os.environ[NO_AUTOLOAD_ENV] = "1"

collect_ignore = ["fixtures"]  # tests/fixtures/ holds a plugin package with its own tests, run by test_third_party.py


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run the slow learning checks (minutes)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def registry():
    return load_plugins(strict=True)


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
