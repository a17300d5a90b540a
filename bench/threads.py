"""How a CPU run uses the cores: torch threads per cell from the size of its network, and small cells side by side.

Measured on a 2-core machine (issue 18), sinusoid MLP (1,761 weights), 50,000 tasks: maml meta-trained in 20.6 s
with 2 threads and 15.8 s with 1; two such cells at once took 17.4 s and 18.6 s with 1 thread each (twice the
throughput of one after the other) and 104.9 s and 96.6 s with 2 threads each (threads waiting for each other).
A small network gains nothing from a second intra-op thread, so it gets one, and a run of several such cells
runs them side by side, one worker per core.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from bench.machine_load import cpu_cores

if TYPE_CHECKING:
    from bench.api import Setting, TaskSuite

SMALL_NETWORK_WEIGHTS = 200_000
"""Networks with fewer weights meta-train on one torch thread (the 1,761-weight sinusoid MLP and the Conv-4s of
Omniglot and mini-ImageNet, 32-64 filters, below 130,000); larger ones (ResNet-12, 12 million) on all the threads
a worker has. See ``benchmarks/threads.sh`` for the measurement behind the line."""


def network_weights(suite: "TaskSuite", setting: "Setting") -> int:
    """The number of weights of the network ``suite`` builds for ``setting``."""
    return sum(weight.numel() for weight in suite.backbone(setting).parameters())


def cell_threads(weights: int, available: int) -> int:
    """Torch threads for a cell whose network has ``weights`` weights, in a process with ``available`` threads."""
    return 1 if weights < SMALL_NETWORK_WEIGHTS else max(1, available)


def side_by_side_workers(networks: Iterable[int], groups: int, cores: int | None = None) -> int:
    """Worker processes for a CPU run of ``groups`` independent work items whose networks have ``networks`` weights:
    one per core (at most one per item) when every network is small and there is more than one item and core; else 1,
    one item after another in this process."""
    cores = cpu_cores() if cores is None else cores
    small = all(weights < SMALL_NETWORK_WEIGHTS for weights in networks)
    return min(cores, groups) if small and groups > 1 and cores > 1 else 1
