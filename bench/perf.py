"""``bench perf``: meta-training throughput, peak memory and evaluation speed of learners, with each
learner's reference implementation (where it declares one, e.g. learn2learn) timed side by side on
the identical configuration and, where both implement ``bench.api.MetaGradient``, checked for the same
meta-gradient.

Method: every learner meta-trains through the host's own context on the same task stream; each
iteration is timed (with a device sync on CUDA), the first ``warmup`` are dropped and the median of
the rest gives tasks/s. Peak memory is the CUDA allocator's peak on a GPU and, on a CPU, the peak
growth of the C heap in use (``bench.memory``; resident memory where glibc's ``mallinfo2`` is
missing), which, unlike resident memory, does not depend on what the allocator kept from earlier. Evaluation: episodes/s over the test protocol (10 adaptation steps). All
measurements run one after another in this one process.

How close to the limit: for a learner implementing ``MetaGradient``, the dense FLOPs of one meta-gradient
(matrix products and convolutions of the forward passes, the inner backward passes and the second-order backward,
counted by ``torch.utils.flop_counter``; elementwise work is not counted) per task, times its tasks/s, give its
achieved GFLOP/s, reported as a fraction of this device's dense float32 matrix-product peak, measured in the same
command.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from bench.api import Episode, Learner, MetaGradient, Setting, TaskSuite, declined
from bench.config import RunConfig
from bench.errors import BenchError, DataError
from bench.grid import Cell
from bench.protocol import evaluate, synchronize
from bench.memory import PeakMemory
from bench.runner import HostContext

GRADIENT_TOLERANCE = 1e-5


@dataclasses.dataclass
class PerfRow:
    suite: str
    setting: str
    learner: str
    implementation: str
    meta_batch: int
    train_tasks_per_s: float
    train_peak_mib: float
    eval_episodes_per_s: float | None
    speedup_vs_reference: float | None = None
    memory_vs_reference: float | None = None
    gradient_rel_diff: float | None = None
    gradient_check: str | None = None
    """Whether the meta-gradients were compared: "checked" (see ``gradient_rel_diff``), "not checked (...)" with
    the reason, or None without a reference."""
    mflop_per_task: float | None = None
    """Dense MFLOPs of one task's share of a meta-gradient (None: the learner does not implement MetaGradient)."""
    achieved_gflops: float | None = None
    """``mflop_per_task`` x tasks/s: the dense GFLOP/s meta-training achieved."""
    fraction_of_matmul_peak: float | None = None
    """``achieved_gflops`` over the device's measured dense matrix-product GFLOP/s (``matmul_peak_gflops``)."""
    notes: str | None = None
    """How the learner chose to run with a run's budget for the cell (e.g. ``compile=auto``'s decision)."""


def _release_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the RSS baseline is just less tight
        pass


def _timed_training(learner: Learner, cell: Cell, suite: TaskSuite, device: torch.device, iterations: int, warmup: int,
                    cell_budget: int) -> tuple[float, int, float, list[str]]:
    """Median tasks/s over ``iterations`` timed meta-training iterations, tasks per iteration, peak MiB and what the
    learner noted (``MetaTrainContext.note``). The learner sees ``cell_budget``, a run's budget for the cell (what it
    may weigh, e.g. ``compile=auto``), and its episode stream ends after the timed iterations."""
    stamps: list[tuple[float, int]] = []

    def on_batch(tasks: int, loss: float | None) -> None:
        if tasks:
            synchronize(device)
            stamps.append((time.perf_counter(), tasks))

    try:
        learner.meta_train(_BatchSizeProbe(suite, cell.setting, 0, 0, device, on_batch))
    except _BatchSizeFound as found:
        batch_tasks = found.tasks
    else:
        raise BenchError(f"{type(learner).__qualname__} meta-trains without asking ctx.batches for tasks: nothing to time")
    _release_memory()
    context = _StoppingContext(suite, cell.setting, 0, max(cell_budget, (warmup + iterations + 1) * batch_tasks),
                               device, on_batch)
    context.stop_after = (warmup + iterations + 1) * batch_tasks
    stamps.clear()
    with PeakMemory(device) as memory:
        baseline_rss = memory.peak_rss
        learner.meta_train(context)
    rates = [tasks / (later - earlier) for (earlier, _), (later, tasks) in zip(stamps, stamps[1:])][warmup:]
    if device.type == "cuda":
        peak = memory.as_dict()["peak_cuda_mib"]
    else:
        peak = memory.heap_growth_mib if memory.heap_growth_mib is not None else (memory.peak_rss - baseline_rss) / 2**20
    return statistics.median(rates), batch_tasks, peak, context.notes


class _BatchSizeFound(Exception):
    """How many tasks per iteration a learner asked for; stops its ``meta_train`` there."""

    def __init__(self, tasks: int) -> None:
        super().__init__(tasks)
        self.tasks = tasks


class _StoppingContext(HostContext):
    """A context with a cell's budget whose episode stream ends after ``stop_after`` tasks."""

    stop_after: int = 0

    def batches(self, meta_batch: int, *, setting: Setting | None = None) -> Iterator[Episode]:
        for batch in super().batches(meta_batch, setting=setting):
            yield batch
            if self.tasks_seen >= self.stop_after:
                return


class _BatchSizeProbe(HostContext):
    """A context that stops a learner's ``meta_train`` at its first request for batches (``_BatchSizeFound``)."""

    def batches(self, meta_batch: int, *, setting: Setting | None = None) -> Iterator[Episode]:
        raise _BatchSizeFound(meta_batch)


def _eval_speed(learner: Learner, cell: Cell, suite: TaskSuite, device: torch.device, episodes: int) -> float:
    evaluate(learner, suite, cell.setting, 0, min(episodes, 5), 10, device)  # warm-up
    start = time.perf_counter()
    evaluate(learner, suite, cell.setting, 0, episodes, 10, device)
    synchronize(device)
    return episodes / (time.perf_counter() - start)


class _Float64Context(HostContext):
    """The host context with a float64 backbone, for the gradient check."""

    def backbone(self) -> torch.nn.Module:
        return super().backbone().double()


def _meta_gradient(learner_class: type[MetaGradient], cell: Cell, suite: TaskSuite, batch: Episode, device: torch.device) -> torch.Tensor:
    """The meta-gradient of one batch from the seeded initial weights every implementation shares, in
    float64, so that the check compares the algorithms rather than float32 summation orders (a compiled
    graph sums in another order; second-order terms and batch norm amplify that to ~1e-4 in float32)."""
    learner = learner_class(cell.hyperparameters)
    learner.build(_Float64Context(suite, cell.setting, 0, 0, device, lambda tasks, loss: None))
    learner.accumulate_meta_gradient(Episode(*(field.double() if field.is_floating_point() else field for field in batch)))
    return torch.cat([p.grad.flatten() for p in learner.meta_parameters()])


def _mflop_per_task(learner_class: type[MetaGradient], cell: Cell, suite: TaskSuite, device: torch.device) -> float:
    """Dense MFLOPs of the meta-gradient of one task, from the seeded initial weights. Counted on a batch of one:
    a vmapped batch turns per-task convolutions into grouped ones, whose backward the counter over-counts (9x for
    the Conv-4, against learn2learn's per-task loop); one task is the algorithm's own count."""
    from torch.utils.flop_counter import FlopCounterMode

    learner = learner_class(cell.hyperparameters)
    learner.build(HostContext(suite, cell.setting, 0, 0, device, lambda tasks, loss: None))
    task = suite.sample_batch("train", cell.setting, 0, range(1)).to(device)
    with FlopCounterMode(display=False) as counter:
        learner.accumulate_meta_gradient(task)
    return counter.get_total_flops() / 1e6


def matmul_peak_gflops(device: torch.device, repeats: int = 5) -> float:
    """This device's dense float32 matrix-product GFLOP/s: the best of ``repeats`` square products (2,048 on a CPU,
    8,192 on a GPU), after one warm-up."""
    size = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    times = []
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times[1:]) / 1e9


def _implementation(learner_class: type[Learner], cell: Cell) -> str:
    """How rows name an implementation: its ``implementation``, else the distribution that registered the learner
    (a reference class that declares none: its qualified name)."""
    if learner_class.implementation:
        return learner_class.implementation
    if learner_class is cell.learner.cls:
        return cell.learner.source.distribution
    return f"{learner_class.__module__}.{learner_class.__qualname__}"


def measure(cell: Cell, suite: TaskSuite, device: torch.device, iterations: int, warmup: int, eval_episodes: int,
            peak_gflops: float | None = None, cell_budget: int = 0) -> list[PerfRow]:
    """Rows for one learner on one suite setting: the learner, then its reference implementation if any; with
    ``peak_gflops`` (``matmul_peak_gflops``), each row's achieved GFLOP/s as a fraction of it. The learners see
    ``cell_budget`` tasks as their budget (a run's, for what they decide from it)."""
    implementations: list[type[Learner]] = [cell.learner.cls]
    reference = cell.learner.cls.reference()
    if reference is not None and reference.unavailable_reason() is None and not declined(reference, suite, cell.setting):
        implementations.append(reference)  # not where it is not installed or does not apply (e.g. on 'vary')
    rows = []
    for learner_class in implementations:
        learner = learner_class(cell.hyperparameters)
        tasks_per_s, batch_tasks, peak, notes = _timed_training(learner, cell, suite, device, iterations, warmup,
                                                                cell_budget)
        row = PerfRow(cell.suite.name, cell.setting.name, cell.learner.name, _implementation(learner_class, cell),
                      batch_tasks, tasks_per_s, peak, _eval_speed(learner, cell, suite, device, eval_episodes),
                      notes="; ".join(notes) or None)
        if issubclass(learner_class, MetaGradient):
            row.mflop_per_task = _mflop_per_task(learner_class, cell, suite, device)
            row.achieved_gflops = row.mflop_per_task * tasks_per_s / 1e3
            row.fraction_of_matmul_peak = row.achieved_gflops / peak_gflops if peak_gflops else None
        rows.append(row)
    if len(rows) == 2:
        ours, theirs = rows
        without = [learner_class.__qualname__ for learner_class in implementations
                   if not issubclass(learner_class, MetaGradient)]
        if without:
            ours.gradient_check = f"not checked (no MetaGradient: {', '.join(without)})"
        else:
            batch = suite.sample_batch("train", cell.setting, 0, range(ours.meta_batch)).to(device)
            mine, other = (_meta_gradient(learner_class, cell, suite, batch, device) for learner_class in implementations)
            ours.gradient_rel_diff = float((mine - other).abs().max() / other.abs().max())
            ours.gradient_check = "checked"
        ours.speedup_vs_reference = ours.train_tasks_per_s / theirs.train_tasks_per_s
        ours.memory_vs_reference = ours.train_peak_mib / theirs.train_peak_mib if theirs.train_peak_mib > 0 else None
    return rows


def measure_plan(cells: list[Cell], config: RunConfig, device: torch.device, iterations: int, warmup: int,
                 eval_episodes: int, say: Callable[[str], None]) -> list[PerfRow]:
    """``measure`` each learner on the first planned setting of each suite; a suite whose data is missing is
    skipped with a warning, a learner that does not apply to the setting (its cells would be "n/a") with a note
    (``say``)."""
    rows: list[PerfRow] = []
    timed: set[tuple[str, str]] = set()
    skipped: set[str] = set()
    peak_gflops = matmul_peak_gflops(device)
    say(f"dense float32 matrix-product peak of this device: {peak_gflops:,.1f} GFLOP/s")
    for cell in cells:
        if cell.suite.name in skipped or (cell.suite.name, cell.learner.name) in timed:
            continue
        suite = config.make_suite(cell.suite.cls)
        try:
            suite.prepare()
        except DataError as error:
            say(f"warning: skipping suite '{cell.suite.name}': {error}")
            skipped.add(cell.suite.name)
            continue
        timed.add((cell.suite.name, cell.learner.name))
        reason = declined(cell.learner.cls, suite, cell.setting)
        if reason:
            say(f"note: skipping {cell.learner.name} on {cell.suite.name} {cell.setting.name}: {reason}")
            continue
        say(f"timing {cell.learner.name} on {cell.suite.name} {cell.setting.name} ...")
        rows.extend(measure(cell, suite, device, iterations, warmup, eval_episodes, peak_gflops,
                            cell.budget.meta_train_tasks))
    return rows


def gradient_mismatches(rows: list[PerfRow]) -> list[PerfRow]:
    """The rows whose meta-gradient differs from their reference's by more than ``GRADIENT_TOLERANCE``."""
    return [row for row in rows if row.gradient_rel_diff is not None and row.gradient_rel_diff > GRADIENT_TOLERANCE]


def as_records(rows: list[PerfRow]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(row) for row in rows]
