"""How a long loop shows its progress: a tqdm bar, or, without one (``--no-progress``), a heartbeat line."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType

from tqdm.auto import tqdm

HEARTBEAT_SECONDS = 60.0
"""Seconds between two heartbeat lines of one loop."""


class Heartbeat:
    """Without a progress bar, one line on stderr every ``HEARTBEAT_SECONDS`` of a loop: how far, how fast, the last
    loss. The interface ``progress_bar``'s callers use of tqdm: ``update``, ``set_postfix`` and a context."""

    def __init__(self, total: int, description: str, unit: str) -> None:
        self.total, self.description, self.unit = total, description, unit
        self.done, self.postfix = 0, ""
        self.started = self.last = time.monotonic()

    def update(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_SECONDS:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            print(f"  ...    {self.description}: {self.done:,} / {self.total:,} {self.unit}s, {rate:,.1f} {self.unit}s/s"
                  f"{self.postfix}", file=sys.stderr, flush=True)

    def set_postfix(self, refresh: bool = False, **values: str) -> None:
        self.postfix = "".join(f", {name} {value}" for name, value in values.items())

    def __enter__(self) -> "Heartbeat":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        return None


def progress_bar(total: int, description: str, unit: str, show: bool) -> tqdm | Heartbeat:
    """A tqdm bar where one can be shown (``show``, on a terminal), else a ``Heartbeat`` (``--no-progress``, a log)."""
    if not (show and sys.stderr.isatty()):
        return Heartbeat(total, description, unit)
    return tqdm(total=total, desc=description, unit=unit, leave=False, dynamic_ncols=True)


def loss_progress(bar: tqdm | Heartbeat) -> Callable[[int, float | None], None]:
    """The ``(tasks, loss)`` callback of meta-training, shown on ``bar``."""
    def progress(tasks: int, loss: float | None) -> None:
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.update(tasks)
    return progress
