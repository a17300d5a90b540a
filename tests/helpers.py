"""Helpers for tests that drive the ``bench`` command and build throw-away plugins."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.cells import CellMetadata, CellStatus
from bench.plugins import NO_AUTOLOAD_ENV

BENCH = str(Path(sys.executable).with_name("bench"))


def run_bench(*args: str, cwd: Path | None = None, pythonpath: list[Path] = (), env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the ``bench`` command as a user would, in a subprocess. With ``pythonpath`` (plugin packages to
    discover) third-party plugins are loaded, as for a user; otherwise only the built-ins (tests/conftest.py)."""
    environment = {**os.environ}
    if pythonpath:
        environment["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), environment.get("PYTHONPATH", "")])
        environment[NO_AUTOLOAD_ENV] = "0"
    environment.update(env or {})
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


def finished_cell(suite: str, setting: str, learner: str, *, test_episodes: int, test_steps: int,
                  **measured) -> CellMetadata:
    """A finished cell's metadata (seed 0, on the CPU), for tests that write run folders by hand: what the
    report reads comes from the arguments, placeholders stand where it reads nothing."""
    return CellMetadata(
        cell_id=f"{learner}-{suite}-{setting}-0", suite=suite, setting=setting, setting_index=0, shots=5, ways=None,
        learner=learner, seed=0, hyperparameters={}, device="cpu", learner_plugin={}, suite_plugin={},
        task_budget=16, test_episodes=test_episodes, test_steps=test_steps, status=CellStatus.OK, **measured)
