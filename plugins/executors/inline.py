"""One call at a time, in this process."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from bench.api import Executor, Item, Result


class InlineExecutor(Executor):
    """One cell at a time, in this process, with progress bars (auto's choice on a GPU and for larger networks)."""

    shows_progress = True

    def map(self, work: Callable[[Item], Result], items: Sequence[Item], *, gpus: int = 0) -> Iterator[Result]:
        return map(work, items)
