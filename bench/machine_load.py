"""How busy the machine was while a cell ran: the threads ready to run, against the CPU cores.

Timings mean something only on a machine that was not oversubscribed: two torch processes with two threads each on
two cores were measured 5-7x slower than either alone (issue 18). Linux's ``/proc/loadavg`` says how many threads are
runnable at this instant (its fourth field, ``running/total``); sampled through the cell and averaged, that is the
cell's own threads plus everything else that wanted a core. Elsewhere the 1-minute load average stands in for it
(it lags: a short cell reads the minute before it).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

LOADAVG = Path("/proc/loadavg")

BUSY_MARGIN = 0.5
"""Runnable threads beyond the cores, on average, from which a cell's timings count as taken on a busy machine."""


def runnable_threads() -> float:
    """Threads ready to run now, not counting the caller (the 1-minute load average where /proc is missing)."""
    try:
        running = LOADAVG.read_text().split()[3]
        return float(int(running.split("/")[0]) - 1)
    except (OSError, IndexError, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


BUSY_MIN_SECONDS = 2.0
"""Cells that meta-trained for less are not judged: their few samples say little, and their seconds less."""


def is_busy(load: float | None, cores: int | None, seconds: float | None) -> bool:
    """Whether a cell that meta-trained for ``seconds`` and saw ``load`` runnable threads on average on ``cores`` cores
    waited for a core."""
    return (None not in (load, cores, seconds) and seconds >= BUSY_MIN_SECONDS
            and load > cores + BUSY_MARGIN)


class MachineLoad:
    """The mean of ``runnable_threads`` sampled every ``interval`` s while the block runs (at least once)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        self.samples.append(runnable_threads())
        while not self._stop.wait(self.interval):
            self.samples.append(runnable_threads())

    def __enter__(self) -> "MachineLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples)
