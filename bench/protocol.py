"""The shared episodic protocol: fixed, paired test episodes scored by the host after every adaptation step."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from bench.api import Learner, Setting, TaskSuite

TEST_SPLIT = "test"


class ProtocolError(RuntimeError):
    """A learner broke the contract (for example yielded the wrong number of predictors)."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    learner: Learner,
    suite: TaskSuite,
    setting: Setting,
    seed: int,
    episodes: int,
    steps: int,
    device: torch.device,
    on_episode: Callable[[], None] = lambda: None,
) -> tuple[np.ndarray, np.ndarray]:
    """Adapt ``learner`` to test episodes 0..episodes-1 and score the query set after each step.

    The learner sees the support set and the query inputs, never the query labels; the metric is
    computed here from its predictions. Returns ``metric[episode, step]`` (non-finite values kept
    as they are: divergence is a result) and the wall-clock adaptation seconds of each episode.
    """
    metric = np.empty((episodes, steps + 1))
    seconds = np.empty(episodes)
    for index in range(episodes):
        episode = suite.sample_episode(TEST_SPLIT, setting, seed, index).to(device)
        synchronize(device)
        start = time.perf_counter()
        values = []
        for predictor in learner.adapt(episode.support, steps):
            if len(values) > steps:
                raise ProtocolError(f"adapt() yielded more than steps + 1 = {steps + 1} predictors")
            with torch.no_grad():
                values.append(suite.metric(predictor(episode.query_x), episode.query_y).detach())
        if len(values) != steps + 1:
            raise ProtocolError(f"adapt() yielded {len(values)} predictors; the protocol needs steps + 1 = {steps + 1}")
        metric[index] = torch.stack(values).double().cpu().numpy()
        seconds[index] = time.perf_counter() - start
        on_episode()
    return metric, seconds
