"""Standard backbones of the field, as plain ``nn.Sequential`` stacks (easy to split and to call functionally)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


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

    def __init__(self, channels: int, eps: float = 1e-5, scale: bool = True) -> None:
        """``scale=False``: a learned shift only, the scale fixed at one (TensorFlow's ``batch_norm`` default); kept as
        a buffer named ``weight``, so that the layer's width reads off it as off any norm's."""
        super().__init__()
        self.eps = eps
        if scale:
            self.weight = nn.Parameter(torch.ones(channels))
        else:
            self.register_buffer("weight", torch.ones(channels))
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


class GlobalAvgPool(nn.Module):
    """The mean over every pixel: (N, C, H, W) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


class SamePaddedConv2d(nn.Conv2d):
    """``nn.Conv2d`` (built with ``padding=0``) padded as TensorFlow's ``'SAME'``: ceil(size / stride) outputs, the
    padding split with its odd pixel after (bottom, right). With stride 2 on an even size this shifts the sampled
    grid by one pixel from PyTorch's symmetric ``padding=1``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, kernel, stride in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):  # width first
            total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return self._conv_forward(F.pad(x, pads), self.weight, self.bias)


MAML_BATCH_NORM_EPS = 1e-3
"""``tf.contrib.layers.batch_norm``'s default epsilon, which cbfinn/maml utils.normalize keeps."""


def conv4_strided(in_channels: int, filters: int, ways: int) -> nn.Sequential:
    """MAML's Omniglot network (cbfinn/maml with main.py's default ``--max_pool=False``), four blocks of: a 3x3
    convolution with stride 2 and TensorFlow's 'SAME' padding (utils.conv_block), batch norm with a learned shift and
    no scale, epsilon 1e-3, then ReLU (utils.normalize: ``tf.contrib.layers.batch_norm(activation_fn=relu)``, whose
    ``scale`` defaults to False); then the mean over the remaining pixels (maml.py forward_conv: ``tf.reduce_mean``
    over height and width for every data set but mini-ImageNet; 28x28 ends at 2x2) and a linear head. Initialised as
    maml.py construct_conv_weights: convolutions Xavier-uniform (``xavier_initializer_conv2d``), head weights N(0, 1)
    (``tf.random_normal``), every bias zero.

    Modules per block: conv, norm, relu, and an ``nn.Identity`` where ``conv4`` max-pools (indices 4b..4b+3), so that
    a module index means the same in both networks (adaptation-layer's image default, FiLM after the third block's
    norm, is module 9 in both); then the pooling over pixels (16) and the head (17).
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(4):
        conv = SamePaddedConv2d(channels, filters, 3, stride=2)
        nn.init.xavier_uniform_(conv.weight)
        nn.init.zeros_(conv.bias)
        layers += [conv, EpisodeBatchNorm(filters, eps=MAML_BATCH_NORM_EPS, scale=False), nn.ReLU(), nn.Identity()]
        channels = filters
    head = nn.Linear(filters, ways)
    nn.init.normal_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers, GlobalAvgPool(), head)


RESNET12_CHANNELS = (64, 160, 320, 640)
"""The widths of ResNet-12's four blocks: kjunelee/MetaOptNet models/ResNet12_embedding.py (Lee et al. 2019), the same
in Sha-Lab/FEAT model/networks/res12.py (Ye et al. 2020); both follow TADAM's ResNet-12."""
RESNET12_SLOPE = 0.1
"""The negative slope of ResNet-12's leaky ReLUs (MetaOptNet's ``nn.LeakyReLU(0.1)``)."""


class ResidualBlock(nn.Module):
    """One ResNet-12 block (MetaOptNet's BasicBlock without dropout): three 3x3 convolutions without bias, each
    followed by batch norm, a leaky ReLU after the first two; a shortcut, a 1x1 convolution without bias and batch
    norm, added before the third leaky ReLU; then a 2x2 max-pool. A plain module of out-of-place tensor ops, so that
    ``torch.func.functional_call`` and ``vmap`` over tasks apply to it as to any layer."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        """The width of the block's output (what an adaptation layer modulating it reads)."""
        layers: list[nn.Module] = []
        for index, channels in enumerate((in_channels, out_channels, out_channels)):
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1, bias=False), EpisodeBatchNorm(out_channels)]
            if index < 2:
                layers.append(nn.LeakyReLU(RESNET12_SLOPE))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      EpisodeBatchNorm(out_channels))
        self.activation = nn.LeakyReLU(RESNET12_SLOPE)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.activation(self.body(x) + self.shortcut(x)))


def resnet12(in_channels: int, ways: int, image_size: int,
             channels: tuple[int, int, int, int] = RESNET12_CHANNELS) -> nn.Sequential:
    """ResNet-12 (MetaOptNet models/ResNet12_embedding.py, FEAT model/networks/res12.py): four ``ResidualBlock``s of
    ``channels`` (each halving the image: 84 -> 42 -> 21 -> 10 -> 5, 28 -> 14 -> 7 -> 3 -> 1), then the mean over the
    remaining pixels (FEAT's ``avg_pool=True``, an ``AvgPool2d(5)`` on 5x5: a 640-wide embedding whatever the image
    size; MetaOptNet flattens, 16,000 wide on mini-ImageNet) and a linear head (PyTorch's initialisation; neither
    reference has one: they classify embeddings with a metric or an SVM). Convolutions initialised as both references:
    Kaiming-normal, ``mode="fan_out"``, ``nonlinearity="leaky_relu"`` (gain sqrt(2)); batch norm scale one, shift zero.
    No dropout or DropBlock (both references drop at rate 0.1 in training).

    Modules: the four blocks (0-3), the pooling (4), the head (5).
    """
    if len(channels) != 4:
        raise ValueError(f"resnet12 has four blocks: channels must give four widths, got {tuple(channels)}")
    if image_size < 16:
        raise ValueError(f"resnet12 halves the image four times: it needs at least 16x16 pixels, got {image_size}")
    blocks = [ResidualBlock(fan_in, fan_out) for fan_in, fan_out in zip((in_channels, *channels), channels)]
    model = nn.Sequential(*blocks, GlobalAvgPool(), nn.Linear(channels[-1], ways))
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
    return model
