"""Cells in parallel worker processes on this machine."""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from bench.api import Executor, Item, Result


def _start_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class ProcessExecutor(Executor):
    """Cells in parallel worker processes on this machine (--workers N); each worker uses cores/N threads."""

    def map(self, work: Callable[[Item], Result], items: Sequence[Item], *, gpus: int = 0) -> Iterator[Result]:
        workers = max(1, self.options.workers)
        threads = max(1, (os.cpu_count() or 1) // workers)
        # spawn, not fork: a forked copy of a process that already used torch (threads, CUDA) is unsafe.
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_worker, initargs=(threads,))
        self.pending: set[Future] = {self.pool.submit(work, item) for item in items}
        while self.pending:
            done, self.pending = wait(self.pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()

    def close(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is None:
            return
        if self.pending:  # stopped early (an error, Ctrl-C): running cells are abandoned, not awaited
            # (the pool has no public way to stop busy workers before Python 3.14's terminate_workers)
            for process in list(pool._processes.values()):
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
