"""Standard backbones of the field, as plain ``nn.Sequential`` stacks (easy to split and to call functionally)."""
from __future__ import annotations

import torch
from torch import nn


MAML_MLP_STD = 0.01
"""cbfinn/maml maml.py ``construct_fc_weights``: every weight ``tf.truncated_normal(stddev=0.01)``, every bias zero."""


def mlp(sizes: list[int], init: str = "torch") -> nn.Sequential:
    """Fully connected ReLU network, e.g. ``mlp([1, 40, 40, 1], init="maml")`` for sinusoid regression (MAML).

    ``init``: ``"torch"``, PyTorch's default ``nn.Linear`` initialisation; ``"maml"``, MAML's reference code's:
    weights from a normal of std 0.01 truncated at two standard deviations (as ``tf.truncated_normal``), biases zero.
    """
    if init not in ("torch", "maml"):
        raise ValueError(f"init must be 'torch' or 'maml', got {init!r}")
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        if index:
            layers.append(nn.ReLU())
        linear = nn.Linear(fan_in, fan_out)
        if init == "maml":
            nn.init.trunc_normal_(linear.weight, std=MAML_MLP_STD, a=-2 * MAML_MLP_STD, b=2 * MAML_MLP_STD)
            nn.init.zeros_(linear.bias)
        layers.append(linear)
    return nn.Sequential(*layers)


class EpisodeBatchNorm(nn.Module):
    """Batch norm that always normalises with the statistics of the batch it is given.

    This is how the MAML papers use batch norm (transductive: no running statistics, the same in
    meta-training and at test time). Written with plain tensor ops: ``torch.func`` transforms of
    ``F.batch_norm`` in training mode gave wrong second-order meta-gradients under ``vmap`` in torch
    2.14 (see tests/plugins/test_gradients.py for the check against an unbatched reference).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0, *range(2, x.dim())]
        centered = x - x.mean(dim=dims, keepdim=True)
        var = (centered * centered).mean(dim=dims, keepdim=True)  # biased; 2-3x faster than Tensor.var on a CPU
        shape = [1, -1, *[1] * (x.dim() - 2)]
        return centered * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)


def conv4(in_channels: int, filters: int, ways: int, image_size: int) -> nn.Sequential:
    """The 4-block conv net of MAML / ProtoNets: (3x3 conv, batch norm, ReLU, 2x2 max-pool) x 4, then a linear head.

    Modules per block: conv, norm, relu, pool (indices 4b..4b+3); then flatten and the head.
    """
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for _ in range(4):
        layers += [nn.Conv2d(channels, filters, 3, padding=1), EpisodeBatchNorm(filters), nn.ReLU(), nn.MaxPool2d(2)]
        channels, size = filters, size // 2
    layers += [nn.Flatten(), nn.Linear(filters * size * size, ways)]
    return nn.Sequential(*layers)
