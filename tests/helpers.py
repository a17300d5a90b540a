"""Helpers for tests that drive the ``bench`` command and build throw-away plugins."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = str(Path(sys.executable).with_name("bench"))


def run_bench(*args: str, cwd: Path | None = None, pythonpath: list[Path] = (), env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the ``bench`` command as a user would, in a subprocess."""
    environment = {**os.environ, **(env or {})}
    if pythonpath:
        environment["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), environment.get("PYTHONPATH", "")])
    return subprocess.run([BENCH, *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)
