"""Peak memory over a block of code: the process's resident set, the C heap in use, and CUDA's peak.

Resident memory (RSS) says what the machine had to provide, but the allocator keeps freed pages, so
RSS depends on what ran before. For comparing implementations on a CPU, the bytes *in use* on the C
heap (glibc's ``mallinfo2``: allocated arena bytes plus mmapped chunks, where torch's CPU tensors
live) are the stable measure; on a GPU, the CUDA caching allocator's peak of allocated bytes.
"""
from __future__ import annotations

import ctypes
import threading

import psutil
import torch


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _load_mallinfo2():
    try:
        function = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):  # not glibc >= 2.33
        return None
    function.restype = _MallInfo2
    return function


_MALLINFO2 = _load_mallinfo2()


def heap_in_use() -> int | None:
    """Bytes allocated on the C heap right now (None where glibc's ``mallinfo2`` is missing)."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return info.uordblks + info.hblkhd


class PeakMemory:
    """Peaks of resident memory and heap in use (sampled every ``interval`` s) and of CUDA memory, in MiB."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.process = psutil.Process()
        self.peak_rss = self.start_heap = self.peak_heap = 0
        self._stop = threading.Event()

    def _measure(self) -> None:
        self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
        self.peak_heap = max(self.peak_heap, heap_in_use() or 0)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._measure()

    def __enter__(self) -> "PeakMemory":
        self.start_heap = heap_in_use() or 0
        self._measure()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._measure()

    @property
    def heap_growth_mib(self) -> float | None:
        """Peak heap in use above its level on entry (None without ``mallinfo2``)."""
        return (self.peak_heap - self.start_heap) / 2**20 if _MALLINFO2 is not None else None

    def as_dict(self) -> dict[str, float | None]:
        cuda = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None
        return {"peak_rss_mib": self.peak_rss / 2**20, "peak_cuda_mib": cuda}
