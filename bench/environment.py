"""Provenance recorded in run.json: versions, git revision, machine and device."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from bench.plugins import Registry

LIBRARIES = ("torch", "numpy", "scipy", "pandas", "matplotlib", "pluggy", "tabulate", "learn2learn")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def git_revision(path: Path) -> str | None:
    """The commit of the source tree at ``path`` (with ``-dirty`` for local changes), if it is a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty else "")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


def environment(registry: Registry, device: torch.device) -> dict[str, Any]:
    plugins = {
        registration.source.name: f"{registration.source.distribution} {registration.source.version}"
        for registration in (*registry.learners.values(), *registry.suites.values())
    }
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "metabench": _version("metabench"),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "plugins": dict(sorted(plugins.items())),
        "git_revision": git_revision(Path(__file__).resolve().parent.parent),
        "device": str(device),
        "device_name": describe_device(device),
        "command": sys.argv,
    }
