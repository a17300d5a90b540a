"""Few-shot sinusoid regression, exactly as in the MAML paper (Finn et al. 2017, section 5.1)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

from bench.api import Episode, Setting, TaskKind, TaskSuite, episode_rngs
from bench.errors import DataError

if TYPE_CHECKING:
    import torch
    from torch import nn


class Sinusoid(TaskSuite):
    """Sine regression: amplitude U[0.1, 5], phase U[0, pi], x U[-5, 5]; K-shot, MLP 1-40-40-1, MSE.

    The MLP is initialised as in MAML's reference code (``mlp(init="maml")``: weights truncated normal, std 0.01,
    biases zero), for every learner: one backbone, initialisation included, per suite.

    Meta-train and meta-val tasks carry K query points (MAML's main.py: ``DataGenerator(update_batch_size*2)``);
    test tasks carry ``TEST_QUERY`` points for a low-variance score. Split streams use disjoint seeds.
    """

    name = "sinusoid"
    kind = TaskKind.REGRESSION
    metric_name = "MSE"
    lower_is_better = True
    SHOTS: ClassVar[tuple[int, ...]] = (5, 10, 20)
    TEST_QUERY: ClassVar[int] = 100
    AMPLITUDE = (0.1, 5.0)
    PHASE = (0.0, math.pi)
    INPUT = (-5.0, 5.0)

    def settings(self) -> list[Setting]:
        return [Setting(name=f"K={shots}", shots=shots, query=self.TEST_QUERY, train_query=shots)
                for shots in self.SHOTS]

    def sample_episode(self, split: str, setting: Setting, seed: int, index: int) -> Episode:
        return Episode(*(field[0] for field in self.sample_batch(split, setting, seed, range(index, index + 1))))

    def sample_batch(self, split: str, setting: Setting, seed: int, indices: range) -> Episode:
        """Each episode drawn from its own seeded generator (``episode_rngs``), then one float32 conversion for the
        batch."""
        import numpy as np
        import torch

        query = setting.query_for(split)
        x = np.empty((len(indices), setting.shots + query, 1))
        amplitude, phase = np.empty((len(indices), 1, 1)), np.empty((len(indices), 1, 1))
        for row, rng in enumerate(episode_rngs(self.name, split, setting.name, seed, indices)):
            amplitude[row], phase[row] = rng.uniform(*self.AMPLITUDE), rng.uniform(*self.PHASE)
            x[row] = rng.uniform(*self.INPUT, size=(setting.shots + query, 1))
        x, y = (torch.from_numpy(values.astype(np.float32)) for values in (x, amplitude * np.sin(x - phase)))
        no_classes = torch.zeros(len(indices), 0, dtype=torch.long)
        shots = setting.shots
        return Episode(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], no_classes)

    def backbone(self, setting: Setting) -> "nn.Module":
        from bench.nn.backbones import mlp

        return mlp([1, 40, 40, 1], init="maml")

    def loss(self, prediction: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        return (prediction - target).pow(2).mean()

    metric = loss


class SinusoidShift(Sinusoid):
    """Sine tasks outside every sinusoid training range: amplitude U[5, 10], phase U[pi, 2 pi], x U[-10, 10]; test-only.

    How a model meta-trained on ``sinusoid`` (amplitude up to 5, phase U[0, pi], x U[-5, 5]) extrapolates:
    ``bench run --suites sinusoid --test-suites sinusoid-shift``. Test split only; the settings, query count and MLP
    of ``sinusoid``."""

    name = "sinusoid-shift"
    test_only = True
    in_all = False
    AMPLITUDE = (5.0, 10.0)
    PHASE = (math.pi, 2 * math.pi)
    INPUT = (-10.0, 10.0)

    def sample_batch(self, split: str, setting: Setting, seed: int, indices: range) -> Episode:
        if split != "test":
            raise DataError(f"suite '{self.name}' is test-only: it has no '{split}' split (use it with --test-suites)")
        return super().sample_batch(split, setting, seed, indices)
