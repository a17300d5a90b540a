"""Reptile's defaults on a regression suite it does not know, with targets larger than sinusoid's (issue 18 item 3).

The fixture package's cubic polynomials (coefficients N(0, 1)) on x in U[-R, R]: R = 1 keeps the targets within a
few units, R = 3 sends them to about 90. Meta-trains reptile with the sine script's SGD and with
``SCALE_FREE_REGRESSION`` (what reptile now falls back to on such a suite), then prints the meta-validation MSE
(the ``val`` split: the choice is made there, never on test episodes) at steps 0 / 1 / 10, trained and untrained,
200 episodes, seed 0, one torch thread.

usage: python benchmarks/reptile_scale.py [TASKS]   (default 5,000 meta-training tasks; about 10 minutes on 2 cores)
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from bench_plugins.learners.reptile import SCALE_FREE_REGRESSION, Reptile, ReptileConfig  # noqa: E402
from helpers import wide_polynomials  # noqa: E402

from bench.protocol import evaluate  # noqa: E402
from bench.runner import HostContext, NonFiniteLossError  # noqa: E402

CPU = torch.device("cpu")


def val_mse(suite, overrides: dict, tasks: int) -> str:
    """Meta-val MSE at steps 0 / 1 / 10 after meta-training on ``tasks`` tasks, or how meta-training failed."""
    setting = suite.settings()[1]
    learner = Reptile(ReptileConfig(**overrides))
    try:
        learner.meta_train(HostContext(suite, setting, 0, tasks, CPU, lambda tasks, loss: None))
    except NonFiniteLossError as error:
        return f"meta-training failed: {error}"
    metric, _ = evaluate(learner, suite, setting, 0, 200, 10, CPU, split="val")
    return str([round(float(value), 3) for value in metric[:, [0, 1, 10]].mean(0)])


def main() -> None:
    torch.set_num_threads(1)
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000
    for half_width in (1.0, 3.0):
        suite = wide_polynomials(half_width)
        for label, overrides in (("sine script SGD", {}), ("SCALE_FREE_REGRESSION", SCALE_FREE_REGRESSION)):
            print(f"x in [-{half_width:g}, {half_width:g}], {label}: meta-val MSE at steps 0/1/10 after {tasks:,} tasks "
                  f"{val_mse(suite, overrides, tasks)}, untrained {val_mse(suite, overrides, 0)}", flush=True)


if __name__ == "__main__":
    main()
