"""Batch norm with running statistics, in place of the shared rule's per-batch statistics (``EpisodeBatchNorm``), for
a learner that follows a reference which normalises test features with running averages (Chen et al. 2019)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bench.nn.backbones import EpisodeBatchNorm

MOMENTUM = 0.1
"""``nn.BatchNorm2d``'s default (Chen et al.'s backbone.py uses it)."""


class RunningBatchNorm(nn.Module):
    """PyTorch's batch norm: in training mode the batch's statistics, folded into running averages (momentum
    ``MOMENTUM``); in eval mode those averages. Takes over the affine parameters of the norm it replaces."""

    def __init__(self, replaced: EpisodeBatchNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = replaced.weight, replaced.bias, replaced.eps
        channels = replaced.bias.shape[0]
        self.register_buffer("running_mean", torch.zeros(channels, device=replaced.bias.device))
        self.register_buffer("running_var", torch.ones(channels, device=replaced.bias.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, MOMENTUM,
                            self.eps)


def with_running_statistics(model: nn.Module) -> None:
    """Replace every ``EpisodeBatchNorm`` in ``model`` by a ``RunningBatchNorm`` holding its parameters."""
    found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, EpisodeBatchNorm)]
    for parent, name, child in found:
        setattr(parent, name, RunningBatchNorm(child))
