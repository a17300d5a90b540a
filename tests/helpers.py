"""Helpers for tests that drive the ``bench`` command and build throw-away plugins."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench.cells import CellMetadata, CellStatus
from bench.plugins import NO_AUTOLOAD_ENV

if TYPE_CHECKING:
    import pandas as pd

    from bench.api import Setting, TaskSuite

BENCH = str(Path(sys.executable).with_name("bench"))

TROUBLE = '''
    import dataclasses, time
    from bench import hookimpl
    from bench.api import Learner

    @dataclasses.dataclass
    class Config:
        pass

    class Trouble(Learner):
        """Raises on K=5 seed 1, reports a NaN loss on K=10 seed 0, sleeps on K=10 seed 1 when asked to."""
        Config = Config

        def meta_train(self, ctx):
            import torch
            where = (ctx.setting.shots, ctx.seed)
            if where == (5, 1):
                raise RuntimeError("exploded on purpose")
            for _ in ctx.batches(10):
                ctx.log(torch.tensor(float("nan") if where == (10, 0) else 1.0))
            if where == (10, 1) and SLEEP:
                time.sleep(SLEEP)

        def adapt(self, support, steps):
            import torch
            for _ in range(steps + 1):
                yield lambda x: torch.zeros_like(x)

    @hookimpl
    def register_learners(register):
        register("trouble", Trouble)
'''
"""A plugin module's source: the learner ``trouble`` failing on purpose in some cells (replace ``SLEEP``)."""


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


def cells_of(out: Path) -> dict[str, dict]:
    """A run folder's cell metadata files, by cell file name."""
    return {path.stem: json.loads(path.read_text()) for path in (out / "cells").glob("*.json")}


def records_of(out: Path) -> pd.DataFrame:
    """A run folder's records.csv as a DataFrame, in a fixed order."""
    import pandas as pd

    records = pd.read_csv(out / "records.csv")
    return records.sort_values(["suite", "setting", "learner", "seed", "episode", "step"]).reset_index(drop=True)


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


def three_learner_run(tasks: int) -> tuple[str, ...]:
    """``bench run`` flags of the long-run tests' reference run: 3 learners x 2 seeds on sinusoid K=5."""
    return ("--learners", "maml,fomaml,finetune", "--suites", "sinusoid", "--shots", "5", "--seeds", "2",
            "--profile", "smoke", "--tasks", str(tasks), "--episodes", "5", "--steps", "2", "--no-progress")


def trouble_run(tasks: int) -> tuple[str, ...]:
    """``bench run`` flags (but the learners) of the runs of the ``trouble`` learner: 2 settings x 2 seeds."""
    return ("--suites", "sinusoid", "--shots", "5,10", "--seeds", "2", "--profile", "smoke", "--tasks", str(tasks),
            "--episodes", "3", "--steps", "2", "--no-progress")


TINY = '''
import dataclasses, time
from bench import hookimpl
from bench_plugins.suites.sinusoid import Sinusoid
from bench.api import Choice, FloatRange, IntRange, Learner

SAMPLED = []
"""The splits the watched suite was asked for, one list per suite instance."""
SLEEP = 0
"""Seconds Tiny sleeps per meta-batch (for tests that kill a tune mid-trial)."""


@dataclasses.dataclass
class Config:
    lr: float = 0.1
    step_size: float = 0.5
    meta_batch: int = 10
    shrink: bool = False


class Tiny(Learner):
    """Learns one constant; adapts it towards the support mean (fast, and its val metric depends on every key)."""

    Config = Config

    @classmethod
    def search_space(cls, kind):
        return {"lr": FloatRange(1e-3, 1.0, log=True), "step_size": FloatRange(0.0, 1.0),
                "meta_batch": IntRange(5, 20), "shrink": Choice((False, True))}

    def meta_train(self, ctx):
        import torch
        self.c = torch.zeros(())
        for batch in ctx.batches(self.config.meta_batch):
            error = self.c - batch.query_y
            self.c = self.c - self.config.lr * 2 * error.mean()
            ctx.log((error ** 2).mean())
            time.sleep(SLEEP)

    def state_dict(self):
        return {"c": self.c}

    def load_state_dict(self, state):
        self.c = state["c"]

    def adapt(self, support, steps):
        import torch
        c = self.c.clone() * (0.5 if self.config.shrink else 1.0)
        for _ in range(steps + 1):
            yield lambda x, c=c: torch.full_like(x, float(c))
            c = c + self.config.step_size * (support.y.mean() - c)


class Fixed(Tiny):
    """Tiny with nothing to tune."""

    @classmethod
    def search_space(cls, kind):
        return {}


class Misnamed(Tiny):
    """Searches a key it does not have."""

    @classmethod
    def search_space(cls, kind):
        return {"learning_rate": FloatRange(0.1, 1.0)}


class WatchedSinusoid(Sinusoid):
    """The sinusoid suite, recording every split it is asked for."""

    name = "watched-sinusoid"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sampled = []
        SAMPLED.append(self.sampled)

    def sample_episode(self, split, setting, seed, index):
        self.sampled.append(split)
        return super().sample_episode(split, setting, seed, index)

    def sample_batch(self, split, setting, seed, indices):
        self.sampled.append(split)
        return super().sample_batch(split, setting, seed, indices)


@hookimpl
def register_learners(register):
    register("tiny", Tiny)
    register("fixed", Fixed)
    register("misnamed", Misnamed)


@hookimpl
def register_suites(register):
    register("watched-sinusoid", WatchedSinusoid)
'''
"""A plugin module's source for ``bench tune`` tests: the learners ``tiny`` (a fast learner with a search space),
``fixed`` (nothing to tune), ``misnamed`` (a search space naming no hyper-parameter) and the suite
``watched-sinusoid`` (records the splits it is asked for)."""


def interrupt_once_saved(monkeypatch, checkpoint: Path) -> Callable[[], None]:
    """Make the host stop as Ctrl-C would (``KeyboardInterrupt``) right after writing a checkpoint, once
    ``checkpoint`` exists; return the function that lets it save normally again."""
    from bench import runner

    save = runner.HostContext.checkpoint

    def save_then_interrupt(context: runner.HostContext, state: Callable[[], dict]) -> None:
        save(context, state)
        if checkpoint.exists():
            raise KeyboardInterrupt

    monkeypatch.setattr(runner.HostContext, "checkpoint", save_then_interrupt)
    return lambda: monkeypatch.setattr(runner.HostContext, "checkpoint", save)


def readme_sql() -> list[str]:
    """The README's example SQL queries (its ```sql blocks), in the README's order: the tests run them as written."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.findall(r"^```sql\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)


def setting(suite: "TaskSuite", name: str) -> "Setting":
    """The suite's setting called ``name``."""
    return next(s for s in suite.settings() if s.name == name)


def expect_error(suite: "TaskSuite", *fragments: str, split: str | None = None) -> str:
    """The one-line ``DataError`` of loading ``split`` of ``suite`` (all of it when None), checked to contain each of
    ``fragments``."""
    import pytest

    from bench.errors import DataError

    with pytest.raises(DataError) as caught:
        suite.pool(split) if split else suite.prepare()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def wide_polynomials(half_width: float):
    """A third-party regression suite with larger targets: the fixture package's cubic polynomials (coefficients
    N(0, 1)) on x in U[-half_width, half_width] (3: targets up to about 90)."""
    import importlib.util

    import torch

    from bench.api import Episode, episode_rng

    source = Path(__file__).parent / "fixtures" / "metabench-example" / "src" / "metabench_example" / "polynomials.py"
    spec = importlib.util.spec_from_file_location("fixture_polynomials", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Wide(module.Polynomials):
        name = f"polynomials-x{half_width:g}"

        def sample_episode(self, split, setting, seed, index):
            rng = episode_rng(self.name, split, setting.name, seed, index)
            coefficients = torch.from_numpy(rng.standard_normal(4)).float()
            x = torch.from_numpy(rng.uniform(-half_width, half_width, size=(setting.shots + setting.query, 1))).float()
            y = sum(c * x**power for power, c in enumerate(coefficients))
            return Episode(x[: setting.shots], y[: setting.shots], x[setting.shots:], y[setting.shots:],
                           torch.zeros(0, dtype=torch.long))

    return Wide()
