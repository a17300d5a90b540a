"""Two tiny synthetic suites for the conformance kit: learnable in seconds on a CPU, by any sound learner.

Both have a structure shared across tasks that meta-training can find and an untrained network
cannot know, so "meta-trained beats untrained" is a fair, quick check of a learner.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from bench.api import SPLITS, Episode, Setting, TaskKind, TaskSuite, episode_rng

if TYPE_CHECKING:
    import torch
    from torch import nn


class TinyWaves(TaskSuite):
    """Regression: y = a sin(x) + b with a ~ U[0.5, 1.5], b ~ U[-0.5, 0.5], x ~ U[-3, 3]; MLP 1-32-32-1, MSE."""

    name = "tiny-waves"
    kind = TaskKind.REGRESSION
    metric_name = "MSE"
    lower_is_better = True

    def settings(self) -> list[Setting]:
        return [Setting(name="K=10", shots=10, query=20)]

    def sample_episode(self, split: str, setting: Setting, seed: int, index: int) -> Episode:
        import torch

        rng = episode_rng(self.name, split, setting.name, seed, index)
        amplitude, offset = rng.uniform(0.5, 1.5), rng.uniform(-0.5, 0.5)
        x = torch.from_numpy(rng.uniform(-3, 3, size=(setting.shots + setting.query, 1))).float()
        y = amplitude * torch.sin(x) + offset
        shots = setting.shots
        return Episode(x[:shots], y[:shots], x[shots:], y[shots:], torch.zeros(0, dtype=torch.long))

    def backbone(self, setting: Setting) -> "nn.Module":
        from bench.nn.backbones import mlp

        return mlp([1, 32, 32, 1])

    def loss(self, prediction: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        return (prediction - target).pow(2).mean()

    metric = loss


class TinyBlobs(TaskSuite):
    """Classification: 5-way 1/5-shot Gaussian blobs, 2 informative + 6 noise inputs; MLP 8-32-32-5, accuracy.

    Every class of a split has a fixed centre in the first two inputs (train: 40 classes, val and
    test: 20 each, all different); the other six inputs are per-example noise, larger than the
    distance between centres. A learner must learn to ignore the noise to classify well.
    """

    name = "tiny-blobs"
    kind = TaskKind.CLASSIFICATION
    metric_name = "accuracy"
    lower_is_better = False
    CLASSES: ClassVar[dict[str, int]] = {"train": 40, "val": 20, "test": 20}
    INFORMATIVE, NOISE = 2, 6
    SPREAD, NOISE_STD = 0.15, 1.5

    def settings(self) -> list[Setting]:
        return [Setting(name=f"5-way {shots}-shot", shots=shots, query=5, ways=5) for shots in (1, 5)]

    def num_classes(self, split: str) -> int:
        return self.CLASSES[split]

    def centres(self, split: str) -> "torch.Tensor":
        """Class centres of a split, on a circle of radius 2 (each split at its own angles)."""
        import math

        import torch

        count = self.CLASSES[split]
        angles = (torch.arange(count, dtype=torch.float64) + SPLITS.index(split) / len(SPLITS)) * (2 * math.pi / count)
        return (2 * torch.stack([angles.cos(), angles.sin()], dim=1)).float()

    def sample_episode(self, split: str, setting: Setting, seed: int, index: int) -> Episode:
        import torch

        rng = episode_rng(self.name, split, setting.name, seed, index)
        classes = torch.from_numpy(rng.choice(self.CLASSES[split], size=setting.ways, replace=False))
        per_class = setting.shots + setting.query
        labels = torch.arange(setting.ways).repeat_interleave(per_class)
        informative = self.centres(split)[classes[labels]] + self.SPREAD * torch.from_numpy(
            rng.standard_normal((len(labels), self.INFORMATIVE))).float()
        noise = self.NOISE_STD * torch.from_numpy(rng.standard_normal((len(labels), self.NOISE))).float()
        x = torch.cat([informative, noise], dim=1).view(setting.ways, per_class, -1)
        y = labels.view(setting.ways, per_class)
        shots = setting.shots
        return Episode(x[:, :shots].flatten(0, 1), y[:, :shots].flatten(), x[:, shots:].flatten(0, 1),
                       y[:, shots:].flatten(), classes)

    def backbone(self, setting: Setting) -> "nn.Module":
        from bench.nn.backbones import mlp

        return mlp([self.INFORMATIVE + self.NOISE, 32, 32, setting.ways])

    def loss(self, prediction: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        from torch.nn import functional as F

        return F.cross_entropy(prediction, target)

    def metric(self, prediction: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        return (prediction.argmax(dim=-1) == target).float().mean()
