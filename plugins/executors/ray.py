"""Cells as Ray tasks: on an existing cluster (--ray-address) or a local Ray started for the run."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from bench.api import Executor, Item, Result


def _call(work: Callable[[Item], Result], item: Item) -> Result:
    """One call of the work function, as a Ray task (``ray.remote`` takes a function, not any callable)."""
    return work(item)


class RayExecutor(Executor):
    """Cells as Ray tasks, on a cluster (--ray-address) or a local Ray started for the run (--workers CPUs)."""

    requires = ("ray",)
    install_hint = "pip install 'metabench[ray]'"

    def map(self, work: Callable[[Item], Result], items: Sequence[Item], *, gpus: int = 0) -> Iterator[Result]:
        import ray

        self.started = not ray.is_initialized()
        if self.started:
            if self.options.address:
                ray.init(address=self.options.address, log_to_driver=False)
            else:
                ray.init(num_cpus=max(1, self.options.workers), include_dashboard=False, log_to_driver=False)
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_call)
        shared = ray.put(work)  # sent to the object store once, not with every task
        self.pending = [task.remote(shared, item) for item in items]
        while self.pending:
            done, self.pending = ray.wait(self.pending, num_returns=1)
            yield ray.get(done[0])

    def close(self) -> None:
        import ray

        for reference in getattr(self, "pending", []):
            ray.cancel(reference, force=True)
        if getattr(self, "started", False):
            ray.shutdown()
