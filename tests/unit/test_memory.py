"""The memory measure behind `bench perf` and the runs' metadata."""
from __future__ import annotations

import pytest
import torch

from bench.memory import PeakMemory, heap_in_use


@pytest.mark.skipif(heap_in_use() is None, reason="needs glibc's mallinfo2")
def test_peak_heap_growth_counts_tensors_allocated_inside_the_block():
    with PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, alive when the block ends
    del block
    assert 63 <= memory.heap_growth_mib < 80
    with PeakMemory(torch.device("cpu")) as idle:
        pass
    assert idle.heap_growth_mib < 8
