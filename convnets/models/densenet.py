"""DenseNet (Huang, Liu, van der Maaten, Weinberger, CVPR 2017) and the d2l DenseNet.

Every "conv" of the paper is the pre-activation composite BN-ReLU-Conv (Sec. 3, "Composite
function"). A dense layer receives the channel concatenation of the block input and of every
earlier layer's output and adds ``k`` (the growth rate) new channels.

* ImageNet models (Table 1): DenseNet-BC, 7x7/2 stem with 2k channels + BN-ReLU + 3x3/2 max pool,
  four dense blocks, transitions BN-ReLU-1x1 conv-2x2 avg pool, final BN-ReLU, global average
  pooling, fully connected layer. ``densenet161`` (k=48, stem 96) is the model of the official
  README and torchvision, not of the CVPR Table 1.
* CIFAR models (Sec. 3 "Implementation Details", Table 2): 3x3 stem with 16 (basic) or 2k (BC)
  channels, three equal dense blocks on 32/16/8 maps, the same transitions, BN-ReLU-GAP-FC.
* ``d2l_densenet``: the Fashion-MNIST network of Dive into Deep Learning (seed 002).

Convolutions have no bias (each is followed, directly or in the next layer, by BN), except in the
d2l network, which keeps PyTorch's default biased convolutions as the book does.

Seed 000 (a blog DenseNet-121) prints a 508x7x7 feature map because of two bugs: its ``pool1`` is
applied to the input image, so the stem output is discarded and the first block sees the raw
3-channel image, and its ``i != len(block_config)`` test is always true, so a transition (halving
channels and resolution) follows the last block as well. Its dense layers also live in a plain
Python list, so their parameters are not registered. Here densenet121 ends in 1024x7x7.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from convnets.models.common import check_choice, he_init, xavier_init
from convnets.models.densenet_weights import load_torchvision_state_dict, torchvision_key
from convnets.models.registry import register_model

__all__ = ["DenseBlock", "DenseLayer", "DenseNet", "Transition", "d2l_densenet", "densenet_cifar",
           "densenet_imagenet", "load_torchvision_state_dict", "torchvision_key"]

_CITATION = "Huang et al. 2017, Densely Connected Convolutional Networks (CVPR)"


def _check_rates(dropout: float, compression: float) -> float:
    """Validate dropout in [0, 1) and compression theta in (0, 1]; return the dropout rate."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} must lie in [0, 1)")
    if not 0.0 < compression <= 1.0:
        raise ValueError(f"compression={compression!r} must lie in (0, 1]")
    return float(dropout)


class DenseLayer(nn.Module):
    """One dense layer: ``[BN-ReLU-1x1 conv(4k)] - BN-ReLU-3x3 conv(k)``.

    With ``bottleneck`` (the "B" of DenseNet-BC, Sec. 3 "Bottleneck layers") the 1x1 conv to
    ``bn_size * k`` channels comes first; without it the layer is a single BN-ReLU-3x3 conv.
    ``dropout > 0`` adds a dropout layer after each convolution (Sec. 4.2).

    ``memory_efficient`` recomputes the first unit (concatenation, BN, ReLU, first conv and its
    dropout) during the backward pass instead of storing its output (``torch.utils.checkpoint``,
    non-reentrant). The recomputation normalises with the same batch statistics but leaves the BN
    running statistics alone, so outputs, gradients and buffers equal those of the plain path.
    """

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        *,
        bottleneck: bool,
        bn_size: int = 4,
        dropout: float = 0.0,
        memory_efficient: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.memory_efficient = memory_efficient
        self.bottleneck = bottleneck
        mid = bn_size * growth_rate if bottleneck else growth_rate
        k1 = 1 if bottleneck else 3
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, mid, k1, padding=k1 // 2, bias=bias)
        self.drop1 = nn.Dropout(dropout) if dropout > 0 else None
        if bottleneck:
            self.norm2 = nn.BatchNorm2d(mid)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(mid, growth_rate, 3, padding=1, bias=bias)
            self.drop2 = nn.Dropout(dropout) if dropout > 0 else None

    def _first_unit(self, x: Tensor, update_stats: bool) -> Tensor:
        if update_stats:
            x = self.norm1(x)
        else:  # recomputation: same batch statistics; the update goes to throwaway copies
            n = self.norm1
            mean, var = n.running_mean.clone(), n.running_var.clone()
            x = F.batch_norm(x, mean, var, n.weight, n.bias, True, n.momentum or 0.0, n.eps)
        x = self.conv1(self.relu1(x))
        return self.drop1(x) if self.drop1 is not None else x

    def _checkpointed(self, features: Sequence[Tensor]) -> Tensor:
        calls = [0]
        recompute_plain = not (self.training and self.norm1.track_running_stats)

        def unit(*feats: Tensor) -> Tensor:
            calls[0] += 1
            return self._first_unit(torch.cat(feats, 1), calls[0] == 1 or recompute_plain)

        return cp.checkpoint(unit, *features, use_reentrant=False)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if isinstance(features, Tensor):
            features = [features]
        if self.memory_efficient and any(f.requires_grad for f in features):
            out = self._checkpointed(features)
        else:
            out = self._first_unit(torch.cat(list(features), 1), True)
        if not self.bottleneck:
            return out
        out = self.conv2(self.relu2(self.norm2(out)))
        return self.drop2(out) if self.drop2 is not None else out


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; the output concatenates the input and every layer's output."""

    def __init__(
        self, num_layers: int, in_channels: int, growth_rate: int, **layer_options
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(in_channels + i * growth_rate, growth_rate, **layer_options)
            self.add_module(f"layer{i + 1}", layer)
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.children():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv (to ``out_channels``) [- dropout] - 2x2 average pool, stride 2."""

    def __init__(
        self, in_channels: int, out_channels: int, *, dropout: float = 0.0, bias: bool = False
    ) -> None:
        layers: list[tuple[str, nn.Module]] = [
            ("norm", nn.BatchNorm2d(in_channels)),
            ("relu", nn.ReLU(inplace=True)),
            ("conv", nn.Conv2d(in_channels, out_channels, 1, bias=bias)),
        ]
        if dropout > 0:
            layers.append(("drop", nn.Dropout(dropout)))
        layers.append(("pool", nn.AvgPool2d(2, stride=2)))
        super().__init__(OrderedDict(layers))


def _stem(kind: str, in_channels: int, channels: int, bias: bool) -> nn.Sequential:
    """``"imagenet"``: 7x7/2 conv, BN, ReLU, 3x3/2 max pool; ``"cifar"``: one 3x3 conv."""
    if kind != "imagenet":
        return nn.Sequential(OrderedDict(conv=nn.Conv2d(in_channels, channels, 3, 1, 1, bias=bias)))
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, channels, 7, 2, 3, bias=bias), norm=nn.BatchNorm2d(channels),
        relu=nn.ReLU(inplace=True), pool=nn.MaxPool2d(3, stride=2, padding=1),
    ))


class DenseNet(nn.Module):
    """Stem, dense blocks with transitions between them, BN-ReLU-GAP-FC head.

    Top-level children, in forward order: ``stem``, ``block1``, ``trans1``, ..., ``blockN``,
    ``head``.

    Args:
        block_config: dense layers per block.
        growth_rate: k, channels each dense layer adds.
        stem: ``"imagenet"`` (7x7/2 conv, BN, ReLU, 3x3/2 max pool) or ``"cifar"`` (one 3x3 conv).
        stem_channels: output channels of the stem conv.
        bottleneck: use the 1x1 bottleneck of ``bn_size * k`` channels.
        compression: theta; a transition outputs ``floor(theta * c)`` channels.
        dropout: dropout after every convolution except the stem conv.
        memory_efficient: checkpoint the first unit of each dense layer.
        conv_bias: biased convolutions (d2l only).
    """

    def __init__(
        self,
        *,
        block_config: Sequence[int],
        growth_rate: int,
        num_classes: int,
        stem: str,
        stem_channels: int,
        in_channels: int = 3,
        bottleneck: bool = True,
        bn_size: int = 4,
        compression: float = 0.5,
        dropout: float = 0.0,
        memory_efficient: bool = False,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.stem = _stem(stem, in_channels, stem_channels, conv_bias)
        channels = stem_channels
        layer_options = dict(bottleneck=bottleneck, bn_size=bn_size, dropout=dropout,
                             memory_efficient=memory_efficient, bias=conv_bias)
        for i, n in enumerate(block_config, start=1):
            block = DenseBlock(n, channels, growth_rate, **layer_options)
            self.add_module(f"block{i}", block)
            channels = block.out_channels
            if i < len(block_config):
                out = int(math.floor(compression * channels))
                trans = Transition(channels, out, dropout=dropout, bias=conv_bias)
                self.add_module(f"trans{i}", trans)
                channels = out
        self.num_features = channels
        self.head = nn.Sequential(OrderedDict(
            norm=nn.BatchNorm2d(channels), relu=nn.ReLU(inplace=True),
            pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1), fc=nn.Linear(channels, num_classes),
        ))

    def features(self, x: Tensor) -> Tensor:
        """The feature map entering the head (after the last dense block)."""
        for name, module in self.named_children():
            if name != "head":
                x = module(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        for module in self.children():
            x = module(x)
        return x


def _he_densenet(stem: str, block_config: tuple[int, ...], growth_rate: int, num_classes: int,
                 stem_channels: int, bottleneck: bool, compression: float, dropout: float,
                 memory_efficient: bool) -> DenseNet:
    """A paper DenseNet (biasless convs), He-initialised (``common.he_init``)."""
    model = DenseNet(block_config=block_config, growth_rate=growth_rate, num_classes=num_classes,
                     stem=stem, stem_channels=stem_channels, bottleneck=bottleneck,
                     compression=compression, dropout=dropout, memory_efficient=memory_efficient)
    return he_init(model)


# --------------------------------------------------------------------------------------------
# ImageNet (Table 1)


def densenet_imagenet(
    *,
    num_classes: int = 1000,
    block_config: tuple[int, ...] = (6, 12, 24, 16),
    growth_rate: int = 32,
    stem_channels: int = 64,
    compression: float = 0.5,
    dropout: float = 0.0,
    memory_efficient: bool = False,
) -> DenseNet:
    """ImageNet DenseNet-BC.

    Args:
        num_classes: outputs of the final fully connected layer (1000 for ImageNet).
        block_config: dense layers per block, Table 1 (121: 6-12-24-16, 169: 6-12-32-32,
            201: 6-12-48-32, 264: 6-12-64-48; 161: 6-12-36-24 from the official README).
        growth_rate: k (32 in Table 1; 48 for DenseNet-161).
        stem_channels: channels of the 7x7/2 stem conv, 2k (Sec. 3 "Implementation Details").
        compression: theta of the transitions, 0.5 for DenseNet-BC (Sec. 3 "Compression").
        dropout: dropout rate after every conv but the first (Sec. 4.2; 0 on ImageNet).
        memory_efficient: recompute concat-BN-ReLU-1x1 conv in the backward pass (the
            memory-efficient implementation of the official README, "optMemory"); numerically
            identical to the plain path.
    """
    dropout = _check_rates(dropout, compression)
    if not block_config or any(int(n) < 1 for n in block_config):
        raise ValueError(f"block_config={block_config!r} needs at least one block, each >= 1 layer")
    blocks = tuple(int(n) for n in block_config)
    return _he_densenet("imagenet", blocks, growth_rate, num_classes, stem_channels, True,
                        compression, dropout, memory_efficient)


_IMAGENET = {
    "densenet121": dict(block_config=(6, 12, 24, 16)),
    "densenet169": dict(block_config=(6, 12, 32, 32)),
    "densenet201": dict(block_config=(6, 12, 48, 32)),
    "densenet264": dict(block_config=(6, 12, 64, 48)),
    "densenet161": dict(block_config=(6, 12, 36, 24), growth_rate=48, stem_channels=96),
}

for _name, _fixed in _IMAGENET.items():
    _tv = _name != "densenet264"
    register_model(
        _name,
        densenet_imagenet,
        family="imagenet-densenet",
        input_size=(3, 224, 224),
        citation=(
            f"{_CITATION}, Table 1"
            if _name != "densenet161"
            else f"{_CITATION}; k=48 model of the official README (not in Table 1)"
        ),
        description=(
            f"DenseNet-BC, blocks {'-'.join(map(str, _fixed['block_config']))}, "
            f"k={_fixed.get('growth_rate', 32)}"
            + ("; torchvision-compatible weights" if _tv else "")
        ),
        default_classes=1000,
        tags={"heavy"} if _name != "densenet121" else set(),
        **_fixed,
    )


# --------------------------------------------------------------------------------------------
# CIFAR / SVHN (Table 2)


def densenet_cifar(
    *,
    num_classes: int = 10,
    depth: int = 40,
    growth_rate: int = 12,
    bottleneck: bool = False,
    compression: float = 1.0,
    stem_channels: int | None = None,
    dropout: float = 0.0,
    memory_efficient: bool = False,
) -> DenseNet:
    """CIFAR DenseNet with three equal dense blocks on 32x32, 16x16 and 8x8 maps.

    Args:
        num_classes: 10 for CIFAR-10 / SVHN, 100 for CIFAR-100.
        depth: L, counting the stem conv, every conv of the dense layers, the two transition
            convs and the classifier. L = 3n + 4 (n layers per block) for the basic DenseNet and
            L = 6n + 4 (n bottleneck layers) with ``bottleneck`` (Sec. 3 "Implementation
            Details").
        growth_rate: k (12, 24 or 40 in Table 2).
        bottleneck: BN-ReLU-1x1 conv (4k)-BN-ReLU-3x3 conv layers (DenseNet-B, Sec. 3).
        compression: theta; transitions output floor(theta * c) channels (0.5 in DenseNet-C).
        stem_channels: channels of the first 3x3 conv; ``None`` follows the paper: 16 for the
            basic DenseNet, 2k with the bottleneck (the official Lua code uses 2k for both).
        dropout: 0.2 after every conv but the first for the runs without augmentation
            (Sec. 4.2); 0 with augmentation.
        memory_efficient: recompute concat-BN-ReLU-(first) conv in the backward pass.
    """
    dropout = _check_rates(dropout, compression)
    per = 6 if bottleneck else 3
    if depth < per + 4 or (depth - 4) % per:
        kind = "DenseNet-B(C)" if bottleneck else "basic DenseNet"
        examples = "100, 190 or 250" if bottleneck else "40 or 100"
        raise ValueError(
            f"depth={depth!r} is invalid for a {kind}: depth must be {per}n + 4 with n >= 1 "
            f"(n = (depth - 4) / {per} layers per block), e.g. {examples}"
        )
    if growth_rate < 1:
        raise ValueError(f"growth_rate={growth_rate!r} must be >= 1")
    n = (depth - 4) // per
    if stem_channels is None:
        stem_channels = 2 * growth_rate if bottleneck else 16
    return _he_densenet("cifar", (n, n, n), growth_rate, num_classes, stem_channels, bottleneck,
                        compression, dropout, memory_efficient)


_CIFAR = {
    "densenet40_k12": (dict(depth=40, growth_rate=12), False, "1.0M"),
    "densenet100_k12": (dict(depth=100, growth_rate=12), False, "7.0M"),
    "densenet100_k24": (dict(depth=100, growth_rate=24), True, "27.2M"),
    "densenet_bc100_k12": (dict(depth=100, growth_rate=12), False, "0.8M"),
    "densenet_bc250_k24": (dict(depth=250, growth_rate=24), True, "15.3M"),
    "densenet_bc190_k40": (dict(depth=190, growth_rate=40), True, "25.6M"),
}

for _name, (_fixed, _heavy, _params) in _CIFAR.items():
    _bc = "_bc" in _name
    register_model(
        _name,
        densenet_cifar,
        family="cifar-densenet",
        input_size=(3, 32, 32),
        citation=f"{_CITATION}, Sec. 3 and Table 2",
        description=(
            f"{'DenseNet-BC' if _bc else 'DenseNet'} (L={_fixed['depth']}, "
            f"k={_fixed['growth_rate']}), {_params} params in Table 2"
        ),
        tags={"heavy"} if _heavy else set(),
        bottleneck=_bc,
        compression=0.5 if _bc else 1.0,
        **_fixed,
    )

register_model(
    "densenet_cifar",
    densenet_cifar,
    family="cifar-densenet",
    input_size=(3, 32, 32),
    citation=f"{_CITATION}, Sec. 3",
    description="generic CIFAR DenseNet (depth, growth_rate, bottleneck, compression options)",
)


# --------------------------------------------------------------------------------------------
# d2l (seed 002)


def d2l_densenet(*, num_classes: int = 10, in_channels: int = 1, init: str = "xavier") -> DenseNet:
    """The DenseNet of Dive into Deep Learning (seed 002), for 96x96 Fashion-MNIST.

    7x7/2 conv (64, biased) + BN + ReLU + 3x3/2 max pool; four dense blocks of four
    BN-ReLU-3x3 conv layers (growth 32, no bottleneck); between blocks a transition
    BN-ReLU-1x1 conv to half the channels + 2x2/2 average pool; BN-ReLU-GAP-FC.
    Channels: 64 -> 192 -> 96 -> 224 -> 112 -> 240 -> 120 -> 248.

    Args:
        num_classes: outputs (10 for Fashion-MNIST).
        in_channels: input channels (1, grey-scale).
        init: ``"xavier"``: ``xavier_uniform_`` on the weights of every Conv2d and Linear and
            PyTorch's default biases, as ``d2l.train_ch6`` does in the classic book (v0.17);
            ``"he"``: the repository's He-normal initialisation (``common.he_init``).
    """
    check_choice("init", init, ("xavier", "he"))
    model = DenseNet(
        block_config=(4, 4, 4, 4),
        growth_rate=32,
        num_classes=num_classes,
        stem="imagenet",
        stem_channels=64,
        in_channels=in_channels,
        bottleneck=False,
        compression=0.5,
        conv_bias=True,
    )
    return he_init(model) if init == "he" else xavier_init(model)


register_model(
    "d2l_densenet",
    d2l_densenet,
    family="d2l",
    input_size=(1, 96, 96),
    citation="Dive into Deep Learning (classic v0.17), Sec. 7.7 DenseNet (seed 002)",
    description="64-stem, k=32, 4-4-4-4 basic blocks, halving transitions; Fashion-MNIST at 96",
)
