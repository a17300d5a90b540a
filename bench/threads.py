"""How a CPU run uses the cores: torch threads per cell from the size of its network, and small cells side by side.

Measured on a 2-core machine, meta-training tasks/s or seconds, nothing else running:

- sinusoid MLP (1,761 weights), maml K=10, 50,000 tasks (issue 18): alone 20.6 s with 2 threads and 15.8 s with 1;
  two such cells at once 17.4 s and 18.6 s with 1 thread each (twice the throughput of one after the other), 104.9 s
  and 96.6 s with 2 threads each (the threads wait for each other).
- Omniglot Conv-4 (112,261 weights), maml 5-way 1-shot, eager (``benchmarks/threads.sh``): alone 25.5 tasks/s with 1
  thread and 31.4 with 2; two such cells at once 16.6 and 15.1 tasks/s with 1 thread each, 31.7 together: no gain
  over one cell on both cores.

So a network as small as the MLP runs on one thread, and a run of several such cells runs them side by side, one
worker per core; a larger one (the Conv-4s, ResNet-12) runs alone on every thread its process has.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from bench.machine_load import cpu_cores

if TYPE_CHECKING:
    from bench.api import Setting, TaskSuite

SMALL_NETWORK_WEIGHTS = 10_000
"""Networks with fewer weights meta-train on one torch thread and side by side: the sinusoid MLP (1,761); not the
Conv-4s (28,485 to 121,093) or ResNet-12 (12.4 million). The measurements above are the line's evidence."""


def network_weights(suite: "TaskSuite", setting: "Setting") -> int:
    """The number of weights of the network ``suite`` builds for ``setting``, built on the meta device (no memory, no
    draw from torch's generators); a backbone that cannot be built there is built for real, its draws undone."""
    import torch

    try:
        with torch.device("meta"):
            network = suite.backbone(setting)
    except Exception:  # e.g. a backbone that reads a value off a tensor while it builds
        with torch.random.fork_rng(devices=[]):
            network = suite.backbone(setting)
    return sum(weight.numel() for weight in network.parameters())


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
