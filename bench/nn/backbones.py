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


DROP_RATE = 0.1
"""ResNet-12's drop rate in training, of dropout and of DropBlock alike: kjunelee/MetaOptNet train.py builds
``resnet12(avg_pool=False, drop_rate=0.1, dropblock_size=5)`` (``dropblock_size=2`` for CIFAR-FS and FC100)."""
DROPBLOCK_RAMP_FORWARDS = 40_000
"""MetaOptNet's DropBlock rate grows linearly from 0 to ``DROP_RATE`` over a block's first 20 x 2000 forward passes
(ResNet12_embedding.py BasicBlock: ``keep_rate = max(1 - drop_rate / (20*2000) * num_batches_tracked, 1 - drop_rate)``;
its training embeds support and query in two passes an episode batch, 1,000 batches an epoch: 20 epochs)."""


def _random_mask(shape: tuple[int, ...], probability: float, like: torch.Tensor) -> torch.Tensor:
    """Ones drawn with ``probability``, zeros elsewhere; under ``torch.func.vmap`` (which refuses random operations) a
    ``RuntimeError`` that says which backbone draws them."""
    try:
        return torch.bernoulli(torch.full(shape, probability, device=like.device, dtype=like.dtype))
    except RuntimeError as error:  # vmap's randomness="error"
        raise RuntimeError("resnet12-dropblock draws random masks in training, which this learner's vectorised "
                           f"(torch.func.vmap) loop refuses ({error}); use --backbone resnet12") from error


class Switched(nn.Module):
    """A training-time regulariser that is off until a learner switches it on (``regularise``): a learner that does not
    know it trains and tests the network as if it were absent, never with random masks at test time."""

    def __init__(self) -> None:
        super().__init__()
        self.on = False
        self.register_buffer("passes", torch.zeros((), dtype=torch.long))
        """Forward passes while on (a checkpoint keeps them; ``DropBlock``'s rate ramps over them)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.on:
            return x
        self.passes += 1
        return self.drop(x)

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def regularise(model: nn.Module, on: bool) -> int:
    """Switch every ``Switched`` regulariser of ``model`` on or off; how many there are."""
    switched = [module for module in model.modules() if isinstance(module, Switched)]
    for module in switched:
        module.on = on
    return len(switched)


def regularised_passes(model: nn.Module) -> int:
    """Forward passes ``model``'s regularisers made while on (0: none was ever switched on)."""
    return sum(int(module.passes) for module in model.modules() if isinstance(module, Switched))


class Dropout(Switched):
    """Dropout (``F.dropout``'s: zero with probability ``rate``, the rest scaled by 1 / (1 - rate)), whose refusal
    under ``vmap`` names the backbone (``_random_mask``)."""

    def __init__(self, rate: float = DROP_RATE) -> None:
        super().__init__()
        self.rate = rate

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 - _random_mask(tuple(x.shape), self.rate, x)) / (1 - self.rate)


class DropBlock(Switched):
    """DropBlock (Ghiasi et al. 2018) as MetaOptNet's ResNet-12 applies it after a block: seeds drawn with probability
    gamma where a whole ``block_size`` square fits, each dropping the square that starts at it, the rest scaled by
    (elements / elements kept). gamma turns the drop rate into seeds as MetaOptNet's does, ``(1 - keep) / block_size^2
    * size^2 / (size - block_size + 1)^2``, the rate ramped over the block's passes while on
    (``DROPBLOCK_RAMP_FORWARDS``). Random masks: under ``torch.func.vmap`` without ``randomness="different"`` it
    refuses, naming itself."""

    def __init__(self, block_size: int, drop_rate: float = DROP_RATE) -> None:
        super().__init__()
        self.block_size, self.drop_rate = block_size, drop_rate

    def rate(self) -> float:
        """The drop rate of this pass (``passes`` counts it)."""
        return min(self.drop_rate, self.drop_rate * int(self.passes) / DROPBLOCK_RAMP_FORWARDS)

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        size, block = x.shape[-1], min(self.block_size, x.shape[-1])
        gamma = self.rate() / block**2 * size**2 / (size - block + 1) ** 2
        seeds = _random_mask((*x.shape[:-2], x.shape[-2] - block + 1, size - block + 1), gamma, x)
        dropped = F.max_pool2d(F.pad(seeds, (block - 1,) * 4), block, stride=1)
        kept = 1 - dropped
        return x * kept * (kept.numel() / kept.sum().clamp(min=1))


class ResidualBlock(nn.Module):
    """One ResNet-12 block (MetaOptNet's BasicBlock): three 3x3 convolutions without bias, each followed by batch
    norm, a leaky ReLU after the first two; a shortcut, a 1x1 convolution without bias and batch norm, added before the
    third leaky ReLU; then a 2x2 max-pool and ``drop`` (MetaOptNet: dropout or DropBlock in training; none by default).
    A plain module of out-of-place tensor ops, so that ``torch.func.functional_call`` and ``vmap`` over tasks apply to
    it as to any layer (without random ``drop``)."""

    def __init__(self, in_channels: int, out_channels: int, drop: nn.Module | None = None) -> None:
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
        self.drop = drop or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.pool(self.activation(self.body(x) + self.shortcut(x))))


def resnet12(in_channels: int, ways: int, image_size: int,
             channels: tuple[int, int, int, int] = RESNET12_CHANNELS, dropblock: bool = False) -> nn.Sequential:
    """ResNet-12 (MetaOptNet models/ResNet12_embedding.py, FEAT model/networks/res12.py): four ``ResidualBlock``s of
    ``channels`` (each halving the image: 84 -> 42 -> 21 -> 10 -> 5, 28 -> 14 -> 7 -> 3 -> 1), then the mean over the
    remaining pixels (FEAT's ``avg_pool=True``, an ``AvgPool2d(5)`` on 5x5: a 640-wide embedding whatever the image
    size; MetaOptNet flattens, 16,000 wide on mini-ImageNet) and a linear head (PyTorch's initialisation; neither
    reference has one: they classify embeddings with a metric or an SVM). Convolutions initialised as both references:
    Kaiming-normal, ``mode="fan_out"``, ``nonlinearity="leaky_relu"`` (gain sqrt(2)); batch norm scale one, shift zero.
    No dropout or DropBlock unless ``dropblock``: then MetaOptNet's training-time regularisation, dropout at
    ``DROP_RATE`` after blocks 1-2 and ``DropBlock`` after blocks 3-4, of block size 5 on images of 64 pixels or more
    (its mini-ImageNet and tieredImageNet runs) and 2 below (its CIFAR-FS and FC100 runs, 32x32); off until a learner
    switches it on for its meta-training updates (``regularise``).

    Modules: the four blocks (0-3), the pooling (4), the head (5).
    """
    if len(channels) != 4:
        raise ValueError(f"resnet12 has four blocks: channels must give four widths, got {tuple(channels)}")
    if image_size < 16:
        raise ValueError(f"resnet12 halves the image four times: it needs at least 16x16 pixels, got {image_size}")
    block_size = 5 if image_size >= 64 else 2
    drops: list[nn.Module | None] = ([Dropout(), Dropout(), DropBlock(block_size), DropBlock(block_size)]
                                     if dropblock else [None] * 4)
    blocks = [ResidualBlock(fan_in, fan_out, drop)
              for fan_in, fan_out, drop in zip((in_channels, *channels), channels, drops)]
    model = nn.Sequential(*blocks, GlobalAvgPool(), nn.Linear(channels[-1], ways))
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
    return model
