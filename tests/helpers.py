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


def learn2learn_meta_loss(wrapper, batch, steps: int):
    """learn2learn's documented usage on a batch of regression tasks: per task ``clone()``, ``adapt(loss)`` per
    inner step, the query loss; the mean over tasks (the reference our meta-gradients are checked against)."""
    import torch
    from torch.nn import functional as F

    losses = []
    for task in range(batch.support_x.shape[0]):
        clone = wrapper.clone()
        for _ in range(steps):
            clone.adapt(F.mse_loss(clone(batch.support_x[task]), batch.support_y[task]))
        losses.append(F.mse_loss(clone(batch.query_x[task]), batch.query_y[task]))
    return torch.stack(losses).mean()
