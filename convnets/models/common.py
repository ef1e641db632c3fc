"""Pieces shared by the model families."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


class Stages(nn.Sequential):
    """A network whose top-level children are its stages, applied in order.

    ``python -m convnets info`` tabulates exactly these children, so every family builds its
    model from named stages (stem, stage1, ..., head) and keeps the flatten inside the head.
    """

    def __init__(self, **stages: nn.Module) -> None:
        super().__init__(OrderedDict(stages))


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
