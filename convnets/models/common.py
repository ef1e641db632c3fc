"""Pieces shared by the model families."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class Stages(nn.Sequential):
    """A network whose top-level children are its stages, applied in order.

    ``python -m convnets info`` tabulates exactly these children, so every family builds its
    model from named stages (stem, stage1, ..., head) and keeps the flatten inside the head.
    """

    def __init__(self, **stages: nn.Module) -> None:
        super().__init__(OrderedDict(stages))


def conv_pool_relu(cin: int, cout: int, relu_first: bool = False) -> nn.Sequential:
    """Seed 004's MNIST downsampling step: 5x5 conv (no padding), 2x2 max pool and ReLU (the
    ReLU before the pool with ``relu_first``)."""
    layers = [("conv", nn.Conv2d(cin, cout, 5)), ("pool", nn.MaxPool2d(2))]
    layers.insert(1 if relu_first else 2, ("relu", nn.ReLU(inplace=True)))
    return nn.Sequential(OrderedDict(layers))


def flatten_fc(features: int, num_classes: int) -> nn.Sequential:
    """A head of flatten and one linear layer from ``features`` inputs."""
    return nn.Sequential(OrderedDict(flatten=nn.Flatten(1), fc=nn.Linear(features, num_classes)))


def on_meta(model: nn.Module) -> bool:
    """Whether ``model`` was built on the meta device (shapes only: the spec checks and the MAC
    counts build there). Initialising it would set no value, and on meta every init call
    still runs PyTorch's Python reference code: skipping it builds a ResNet-110 there about ten
    times faster."""
    return any(p.is_meta for p in model.parameters())


def xavier_init(model: nn.Module) -> nn.Module:
    """``xavier_uniform_`` on the weights of every Conv2d and Linear, biases left at PyTorch's
    default, as ``d2l.train_ch6`` does (Dive into Deep Learning, classic v0.17)."""
    if on_meta(model):
        return model
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
    return model


def he_init(model: nn.Module) -> nn.Module:
    """He (MSRA) normal init for convolutions; BN gamma=1, beta=0; Linear bias 0.

    He et al. 2015 (Deep Residual Learning, Sec. 3.4) and Identity Mappings (appendix) use the
    initialisation of "Delving Deep into Rectifiers" (He et al. 2015, Eq. 10): zero-mean
    Gaussian with std sqrt(2 / n). We take n = k*k*out_channels (``mode="fan_out"``), the
    convention of fb.resnet.torch (the Torch code behind Identity Mappings' release) and of
    torchvision; DenseNet's Lua code does the same. Conv biases, where a layer has one, start at
    zero; builders that need a special bias (the gates of Identity Mappings Fig. 2) set it
    after calling this.
    """
    if on_meta(model):
        return model
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


def check_choice(option: str, value: str, choices: tuple[str, ...] | list[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError naming both."""
    if value not in choices:
        raise ValueError(f"{option}={value!r} is not one of: {', '.join(map(repr, choices))}")
    return value


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are over fixed groups of ``group`` images.

    He et al. 2015 (Sec. 3.4, 4.2) and Identity Mappings (appendix) trained batches of 128 on
    2 GPUs without synchronised BN, so each BN layer normalised two groups of 64 separately.
    The batch is split into consecutive groups of ``group`` (the last may be smaller) and each
    is normalised with its own mean and biased variance. Running statistics: only the first
    group updates them, as the first GPU's replica does (its buffers are the ones kept:
    PyTorch DataParallel and Torch's DataParallelTable keep device 0's module, Caffe's
    multi-GPU solver broadcasts the root solver's blobs). A batch of at most ``group``
    images, and evaluation, are plain BatchNorm2d. Parameters, buffers and state-dict keys
    are those of BatchNorm2d.
    """

    group: int | None = None

    def forward(self, x):  # noqa: D102
        g = self.group
        if not self.training or g is None or x.shape[0] <= g:
            return super().forward(x)
        chunks = x.split(g)
        out = [super().forward(chunks[0])]  # updates the running statistics
        for c in chunks[1:]:
            out.append(F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps))
        return torch.cat(out)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group={self.group}"


def use_ghost_batchnorm(model: nn.Module, group: int | None) -> nn.Module:
    """Make every BatchNorm2d of ``model`` a :class:`GhostBatchNorm2d` over ``group`` images
    (in place: the class changes, parameters and buffers stay). ``None`` leaves it as it is."""
    if group is None:
        return model
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.__class__ = GhostBatchNorm2d
            m.group = int(group)
    return model


class ClassicDropout(nn.Dropout):
    """Dropout as cuda-convnet does it (not inverted): training multiplies by a 0/1 mask that
    keeps each unit with probability ``1 - p``; evaluation multiplies by ``1 - p``.

    ``mavenlin/cuda-convnet`` (NiN's code, ``PluginsSrc/include/extralayers.cuh``,
    ``DropoutNeuron``): PASS_TRAIN zeroes the units whose uniform draw is below p, PASS_TEST
    scales by 1 - p. PyTorch's ``nn.Dropout`` instead scales by 1 / (1 - p) in training; with a
    fixed initialisation (NiN's N(0, 0.05^2)) the two train differently. No parameters; a
    subclass of ``nn.Dropout`` (same ``p``), so code that looks for dropout layers finds it.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x * (1.0 - self.p)
        if self.p == 0.0:
            return x
        return x * torch.empty_like(x).bernoulli_(1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, classic (not inverted)"


DROPOUT_MODES = ("classic", "inverted")


def make_dropout(p: float, mode: str) -> nn.Module:
    """``classic`` (:class:`ClassicDropout`, cuda-convnet) or ``inverted`` (``nn.Dropout``)."""
    check_choice("dropout_mode", mode, DROPOUT_MODES)
    return ClassicDropout(p) if mode == "classic" else nn.Dropout(p)
