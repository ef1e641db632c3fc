"""Network In Network (Lin, Chen, Yan, ICLR 2014) and the d2l NiN of seed 003.

``nin`` follows the author's own CIFAR-10 definition (``mavenlin/cuda-convnet``,
``NIN/cifar-10_def``): three mlpconv layers, each a spatial convolution followed by two
"cccp" layers (1x1 convolutions), every one with a ReLU:

=========  =================================================  ===========  ============
stage      layers                                              then         output (32)
=========  =================================================  ===========  ============
mlpconv1   conv 5x5 192 pad 2, cccp 160, cccp 96               maxpool 3/2  96 x 16 x 16
                                                               dropout 0.5
mlpconv2   conv 5x5 192 pad 2, cccp 192, cccp 192              maxpool 3/2  192 x 8 x 8
                                                               dropout 0.5
mlpconv3   conv 3x3 192 pad 1, cccp 192, cccp num_classes      (ReLU)       C x 8 x 8
head       global average pool 8x8 -> C                                     C
=========  =================================================  ===========  ============

Choices, and why:

* **ReLU after the last cccp too.** ``cifar-10_def`` gives ``cccp6`` (the 10-channel layer)
  ``neuron=relu`` like every other layer, so the class maps are rectified before the global
  average. We keep it (the logits are therefore non-negative).
* **Ceil-mode max pooling.** cuda-convnet sizes a pooling layer as
  ``ceil((size - sizeX) / stride) + 1``, with the last window clipped at the border; PyTorch's
  ``MaxPool2d(3, 2, ceil_mode=True)`` computes the same thing. 32 -> 16 -> 8, so the final map is
  8x8, the ``poolg`` size of the definition (``sizeX=8``) and the ``partialSum`` values 32/16/8
  of the conv layers. Floor mode would give 32 -> 15 -> 7.
* **Biases** on every conv (cuda-convnet conv and cccp layers have them).
* **Initialisation** ``"gaussian"``: N(0, 0.05^2) weights (``initW=0.05``), zero biases.
* **Dropout is not inverted** (``dropout_mode="classic"``): cuda-convnet's dropout neuron
  multiplies by a 0/1 mask in training and by 1 - p at test time (see
  ``common.ClassicDropout``); ``dropout_mode="inverted"`` gives PyTorch's ``nn.Dropout``.

``head="fc"`` is the fully connected counterpart of Sec. 4.6: global average pooling is replaced
by a fully connected layer and "the other parts of the model remain the same". The third
mlpconv keeps 192 channels (its last cccp is 192 -> 192 + ReLU, like cccp5, since the class
scores now come from the FC layer), then ``Flatten`` (192 * 8 * 8 = 12288) -> [Dropout] ->
``Linear(12288, num_classes)``. One linear layer is the smallest change that turns the feature
maps into class scores: it takes exactly the place of the parameter-free global average and
adds no hidden layer or non-linearity that the GAP model does not have, so the comparison
isolates pooling vs. a learned dense map. ``fc_dropout`` gives the "+ dropout" row.

``d2l_nin`` is seed 003's 224x224 NiN (the same as d2l's) with its garbled channel pairs read
correctly; see :func:`d2l_nin`.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from convnets.models.common import (
    DROPOUT_MODES,
    Stages,
    check_choice,
    he_init,
    make_dropout,
    xavier_init,
)
from convnets.models.registry import register_model

__all__ = ["D2L_NIN_CHANNELS", "NiN", "d2l_nin", "mlpconv", "nin"]

_CITATION = "Lin, Chen, Yan 2014, Network In Network (ICLR)"


def _check_rate(name: str, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} must lie in [0, 1)")
    return float(value)


def mlpconv(
    in_channels: int,
    channels: tuple[int, int, int],
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
) -> list[tuple[str, nn.Module]]:
    """kxk conv-ReLU, 1x1 conv-ReLU, 1x1 conv-ReLU (one mlpconv layer, Sec. 3.2)."""
    c1, c2, c3 = channels
    return [
        ("conv", nn.Conv2d(in_channels, c1, kernel_size, stride=stride, padding=padding)),
        ("relu", nn.ReLU(inplace=True)),
        ("cccp1", nn.Conv2d(c1, c2, 1)),
        ("relu1", nn.ReLU(inplace=True)),
        ("cccp2", nn.Conv2d(c2, c3, 1)),
        ("relu2", nn.ReLU(inplace=True)),
    ]


class NiN(Stages):
    """Named stages applied in order; the flatten is inside ``head``."""


def _init(model: nn.Module, init: str) -> nn.Module:
    if init == "he":
        return he_init(model)
    if init == "xavier":  # as d2l does (weights only)
        return xavier_init(model)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.05)
            nn.init.zeros_(m.bias)
    return model


def nin(
    *,
    num_classes: int = 10,
    head: str = "gap",
    dropout: float = 0.5,
    fc_dropout: float = 0.0,
    init: str = "gaussian",
    width: float = 1.0,
    input_size: int = 32,
    dropout_mode: str = "classic",
) -> NiN:
    """NiN for 32x32 CIFAR images (author's ``cifar-10_def``).

    Args:
        num_classes: 10 (CIFAR-10, SVHN) or 100 (CIFAR-100).
        head: ``"gap"``: the last cccp has ``num_classes`` channels and global average pooling
            gives the scores (Sec. 3.2, the paper's model); ``"fc"``: the last cccp keeps 192
            channels and ``Linear(192*8*8, num_classes)`` replaces the global average pooling
            (the comparison of Sec. 4.6). The FC head needs 32x32 inputs.
        dropout: rate of the dropout layers after mlpconv1 and mlpconv2 (0.5; Sec. 4.1,
            "dropout is applied on the outputs of all but the last mlpconv layers").
        fc_dropout: dropout before the FC layer of ``head="fc"`` (Sec. 4.6 "fully connected +
            dropout"); must be 0 with ``head="gap"``.
        init: ``"gaussian"`` (N(0, 0.05^2), zero bias: ``initW=0.05`` of ``cifar-10_def``),
            ``"he"`` (``common.he_init``) or ``"xavier"`` (xavier-uniform weights).
        width: multiplier on every channel count but the class maps (1.0 is the paper's
            network; smaller values exist only for fast CPU smoke runs).
        input_size: image side the FC head is sized for (32 for CIFAR; the GAP head works
            at any size).
        dropout_mode: ``"classic"`` (cuda-convnet's: 0/1 mask in training, x(1 - p) at test;
            the author's code) or ``"inverted"`` (``nn.Dropout``: x/(1 - p) in training);
            applies to every dropout of the model, ``fc_dropout`` included.
    """
    check_choice("head", head, ("gap", "fc"))
    check_choice("init", init, ("gaussian", "he", "xavier"))
    check_choice("dropout_mode", dropout_mode, DROPOUT_MODES)
    dropout = _check_rate("dropout", dropout)
    fc_dropout = _check_rate("fc_dropout", fc_dropout)
    if head == "gap" and fc_dropout > 0:
        raise ValueError(f"fc_dropout={fc_dropout!r} needs head='fc' (the GAP head has no FC)")
    if not width > 0:
        raise ValueError(f"width={width!r} must be positive")

    def ch(n: int) -> int:
        return max(1, round(n * width))

    side = input_size
    for _ in range(2):  # two 3x3/2 max pools with ceil_mode, as cuda-convnet sizes them
        side = math.ceil((side - 3) / 2) + 1

    def pool_drop() -> list[tuple[str, nn.Module]]:
        out: list[tuple[str, nn.Module]] = [("pool", nn.MaxPool2d(3, 2, ceil_mode=True))]
        if dropout > 0:
            out.append(("drop", make_dropout(dropout, dropout_mode)))
        return out

    last = num_classes if head == "gap" else ch(192)
    stages: list[tuple[str, nn.Module]] = [
        (
            "mlpconv1",
            nn.Sequential(OrderedDict(mlpconv(3, (ch(192), ch(160), ch(96)), 5, padding=2) + pool_drop())),
        ),
        (
            "mlpconv2",
            nn.Sequential(OrderedDict(mlpconv(ch(96), (ch(192), ch(192), ch(192)), 5, padding=2) + pool_drop())),
        ),
        ("mlpconv3", nn.Sequential(OrderedDict(mlpconv(ch(192), (ch(192), ch(192), last), 3, padding=1)))),
    ]
    if head == "gap":
        head_layers: list[tuple[str, nn.Module]] = [
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten(1)),
        ]
    else:
        head_layers = [("flatten", nn.Flatten(1))]
        if fc_dropout > 0:
            head_layers.append(("drop", make_dropout(fc_dropout, dropout_mode)))
        head_layers.append(("fc", nn.Linear(last * side * side, num_classes)))
    stages.append(("head", nn.Sequential(OrderedDict(head_layers))))
    return _init(NiN(**OrderedDict(stages)), init)


register_model(
    "nin",
    nin,
    family="nin",
    input_size=(3, 32, 32),
    citation=f"{_CITATION}, Sec. 3-4; author's cuda-convnet NIN/cifar-10_def",
    description="3 mlpconv (192-160-96, 192-192-192, 192-192-C) + GAP; head='fc' for Sec. 4.6",
)


#: Seed 003 prints each (in, out) pair of ``nin_block`` without a separator; read correctly:
#: ``196`` -> (1, 96), ``96256`` -> (96, 256), ``256384`` -> (256, 384), ``38410`` -> (384, 10).
D2L_NIN_CHANNELS = {"196": (1, 96), "96256": (96, 256), "256384": (256, 384), "38410": (384, 10)}


def d2l_nin(*, num_classes: int = 10, in_channels: int = 1, init: str = "xavier") -> NiN:
    """The 224x224 NiN of Dive into Deep Learning, as transcribed (garbled) by seed 003.

    ``nin_block(in, out, k, stride, pad)`` = kxk conv-ReLU-1x1 conv-ReLU-1x1 conv-ReLU:
    block1 (1 -> 96, 11x11, stride 4, pad 0), maxpool 3/2, block2 (96 -> 256, 5x5, pad 2),
    maxpool 3/2, block3 (256 -> 384, 3x3, pad 1), maxpool 3/2, dropout 0.5,
    block4 (384 -> num_classes, 3x3, pad 1), global average pool, flatten.
    Maps for a 224 input: 54 -> 26 -> 26 -> 12 -> 12 -> 5 -> 5 -> 1.

    Seed 003's defects, corrected here: the channel pairs are run together
    (``nin_block(196, ...)``, ``96256``, ``256384``, ``38410``; see ``D2L_NIN_CHANNELS``), which
    as written passes a single number for two parameters (a ``TypeError``); the class count is
    hard-wired to 10 (here ``num_classes``); its layer-printing loop has ``try`` without a colon.

    Args:
        num_classes: channels of the last block = outputs (10 for Fashion-MNIST).
        in_channels: input channels (1, grey-scale).
        init: ``"xavier"``: xavier-uniform weights of every Conv2d/Linear, default biases, as
            ``d2l.train_ch6`` (classic book v0.17); ``"he"``: ``common.he_init``.
    """
    check_choice("init", init, ("xavier", "he"))

    def block(cin: int, cout: int, k: int, stride: int, pad: int) -> nn.Sequential:
        return nn.Sequential(
            OrderedDict(mlpconv(cin, (cout, cout, cout), k, stride=stride, padding=pad))
        )

    model = NiN(
        block1=block(in_channels, 96, 11, 4, 0),
        pool1=nn.MaxPool2d(3, stride=2),
        block2=block(96, 256, 5, 1, 2),
        pool2=nn.MaxPool2d(3, stride=2),
        block3=block(256, 384, 3, 1, 1),
        pool3=nn.MaxPool2d(3, stride=2),
        drop=nn.Dropout(0.5),
        block4=block(384, num_classes, 3, 1, 1),
        head=nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1))),
    )
    return _init(model, init)


register_model(
    "d2l_nin",
    d2l_nin,
    family="nin",
    input_size=(1, 224, 224),
    citation="Dive into Deep Learning (classic v0.17), Sec. 7.3 NiN (seed 003, channels corrected)",
    description="4 NiN blocks (96, 256, 384, C) + GAP for 224x224 Fashion-MNIST",
    tags={"heavy"},
)
