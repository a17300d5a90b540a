"""The shared episodic protocol: fixed, paired test episodes scored by the host after every adaptation step."""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import numpy as np
import torch

from bench.api import Learner, Setting, TaskKind, TaskSuite

TEST_SPLIT = "test"


class ProtocolError(RuntimeError):
    """A learner broke the contract (for example yielded the wrong number of predictors)."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


EXAMPLES_PER_BATCH = 4096
"""Batched evaluation adapts as many episodes at once as keep support + query examples under this."""


def evaluate(
    learner: Learner,
    suite: TaskSuite,
    setting: Setting,
    seed: int,
    episodes: int,
    steps: int,
    device: torch.device,
    on_episodes: Callable[[int], None] = lambda count: None,
    batched: bool | None = None,
    split: str = TEST_SPLIT,
) -> tuple[np.ndarray, np.ndarray]:
    """Adapt ``learner`` to episodes 0..episodes-1 of ``split`` (the test split unless meta-validation asks for
    ``val``) and score the query set after each step.

    The learner sees the support set and the query inputs, never the query labels; the metric is
    computed here from its predictions. Learners that set ``batched`` adapt many episodes at once, in one
    ``adapt(support, last, batched=True)`` call (``batched`` forces the choice; see ``default_batching``); the
    others are called as ``adapt(support, last)``, one episode at a time, where ``last`` is the learner's own
    number of steps (``Learner.adaptation_steps``). Returns ``metric[episode, i]``, the metric after step
    ``curve_steps(learner, setting, steps)[i]`` (non-finite values kept as they are: divergence is a result),
    and the adaptation seconds per episode (through all ``last`` steps, the scoring included).
    """
    recorded = curve_steps(learner, setting, steps)
    if batched is None:  # a variable setting's episodes cannot be stacked: one at a time
        batched = default_batching(learner, suite, device) and setting.variable is None
    if batched and not learner.batched:
        raise ValueError(f"{type(learner).__name__} adapts one task at a time (it does not set batched = True)")
    size = _episodes_per_batch(suite, split, setting, seed) if batched else 1
    metric = np.empty((episodes, len(recorded)))
    seconds = np.empty(episodes)
    for start in range(0, episodes, size):
        stop = min(start + size, episodes)
        if batched:
            batch = suite.sample_batch(split, setting, seed, range(start, stop)).to(device)
            predictors = learner.adapt(batch.support, recorded[-1], batched=True)

            def score(predictions: torch.Tensor, targets: torch.Tensor = batch.query_y) -> torch.Tensor:
                return torch.stack([suite.metric(p, y) for p, y in zip(predictions, targets)])
        else:
            batch = suite.sample_episode(split, setting, seed, start).to(device)
            predictors = learner.adapt(batch.support, recorded[-1])

            def score(predictions: torch.Tensor, targets: torch.Tensor = batch.query_y) -> torch.Tensor:
                return suite.metric(predictions, targets).reshape(1)
        synchronize(device)
        began = time.perf_counter()
        metric[start:stop] = _curve(predictors, batch.query_x, score, recorded).double().cpu().numpy()
        seconds[start:stop] = (time.perf_counter() - began) / (stop - start)
        on_episodes(stop - start)
    return metric, seconds


def curve_steps(learner: Learner, setting: Setting, steps: int) -> list[int]:
    """The steps a learner's curve is scored after, when the protocol's are ``steps``: it takes
    ``learner.adaptation_steps(setting, steps)`` steps (the last entry) and is scored after each of 0..min(steps, that)
    and, where it takes more than ``steps``, at the 1-2-5 steps beyond (20, 50, 100, 200, ...) and its last. Curves of
    different lengths so share steps 0..``steps``, and a long one costs a few scorings per decade."""
    last = learner.adaptation_steps(setting, steps)
    if last < 0:
        raise ProtocolError(f"{type(learner).__name__}.adaptation_steps() returned {last}; steps count from 0")
    dense = list(range(min(steps, last) + 1))
    return dense + [step for step in _one_two_five(last) if step > dense[-1]] + ([last] if last > dense[-1] else [])


def _one_two_five(below: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... less than ``below``."""
    found, decade = [], 1
    while decade < below:
        found += [step for step in (decade, 2 * decade, 5 * decade) if step < below]
        decade *= 10
    return found


def episodes_fingerprint(suite: TaskSuite, setting: Setting, seed: int, episodes: int) -> str:
    """A hash of every tensor of test episodes 0..episodes-1: two cells scored the same episodes (and can
    be compared pair by pair) exactly when their fingerprints agree, whatever the data folder or version."""
    digest = hashlib.sha256()
    size = 1 if setting.variable is not None else 256  # a variable setting's episodes do not stack
    for start in range(0, episodes, size):
        batch = suite.sample_batch(TEST_SPLIT, setting, seed, range(start, min(start + size, episodes)))
        for field in batch:
            digest.update(field.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def default_batching(learner: Learner, suite: TaskSuite, device: torch.device) -> bool:
    """Batched adaptation where it pays: on a GPU, and on a CPU for regression (small MLPs) or for a learner that says
    it batches well there (``batched_on_cpu``).

    On a CPU, per-episode convolution weights under ``vmap`` become grouped convolutions, measured
    about 2x slower than one episode at a time for the Conv-4 on Omniglot; the numbers are the same.
    """
    return learner.batched and (device.type == "cuda" or suite.kind is TaskKind.REGRESSION or learner.batched_on_cpu)


def _episodes_per_batch(suite: TaskSuite, split: str, setting: Setting, seed: int) -> int:
    """How many episodes batched evaluation adapts at once: one for a variable setting (its episodes differ in shape),
    else as many as keep their examples under ``EXAMPLES_PER_BATCH``."""
    if setting.variable is not None:
        return 1
    episode = suite.sample_episode(split, setting, seed, 0)
    examples = episode.support_x.shape[0] + episode.query_x.shape[0]
    return max(1, EXAMPLES_PER_BATCH // examples)


def _curve(predictors, query_x: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor],
           recorded: list[int]) -> torch.Tensor:
    """``score`` of the query predictions of the predictors after the ``recorded`` steps, as [episodes, len(recorded)];
    checks that there is one predictor per step 0..recorded[-1]."""
    steps, wanted = recorded[-1], set(recorded)
    values, yielded = [], 0
    for step, predictor in enumerate(predictors):
        if step > steps:
            raise ProtocolError(f"adapt() yielded more than steps + 1 = {steps + 1} predictors")
        yielded = step + 1
        if step in wanted:
            with torch.no_grad():
                values.append(score(predictor(query_x)).detach())
    if yielded != steps + 1:
        raise ProtocolError(f"adapt() yielded {yielded} predictors; the protocol needs steps + 1 = {steps + 1}")
    return torch.stack(values, dim=1)
