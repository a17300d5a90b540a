"""Cells as Ray tasks: on an existing cluster (--ray-address) or a local Ray started for the run."""
from __future__ import annotations

from collections.abc import Iterator

from bench.executors import CellJob, CellResult, Executor, run_one


class RayExecutor(Executor):
    """Cells as Ray tasks, on a cluster (--ray-address) or a local Ray started for the run (--workers CPUs)."""

    requires = ("ray",)
    install_hint = "pip install 'metabench[ray]'"

    def run(self, cells: list, job: CellJob) -> Iterator[CellResult]:
        import ray

        self.started = not ray.is_initialized()
        if self.started:
            if self.options.address:
                ray.init(address=self.options.address, log_to_driver=False)
            else:
                ray.init(num_cpus=max(1, self.options.workers), include_dashboard=False, log_to_driver=False)
        gpus = 1 if job.device == "cuda" else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(run_one)
        self.pending = [task.remote(cell, job) for cell in cells]
        while self.pending:
            done, self.pending = ray.wait(self.pending, num_returns=1)
            yield ray.get(done[0])

    def close(self) -> None:
        import ray

        for reference in getattr(self, "pending", []):
            ray.cancel(reference, force=True)
        if getattr(self, "started", False):
            ray.shutdown()
