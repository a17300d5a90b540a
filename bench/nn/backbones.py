"""Standard backbones of the field, as plain ``nn.Sequential`` stacks (easy to split and to call functionally)."""
from __future__ import annotations

from torch import nn


def mlp(sizes: list[int]) -> nn.Sequential:
    """Fully connected ReLU network, e.g. ``mlp([1, 40, 40, 1])`` for sinusoid regression (MAML)."""
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        if index:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)
