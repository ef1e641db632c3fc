"""torchvision DenseNet weights for :class:`convnets.models.densenet.DenseNet`: the key mapping
and a loader."""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

__all__ = ["load_torchvision_state_dict", "torchvision_key"]


_TV_RULES = [
    (r"^features\.conv0\.", "stem.conv."),
    (r"^features\.norm0\.", "stem.norm."),
    (r"^features\.denseblock(\d+)\.denselayer(\d+)\.", r"block\1.layer\2."),
    (r"^features\.transition(\d+)\.", r"trans\1."),
    (r"^features\.norm5\.", "head.norm."),
    (r"^classifier\.", "head.fc."),
]


def torchvision_key(key: str) -> str:
    """Our parameter name for a key of torchvision's ``DenseNet.state_dict()``."""
    for pattern, repl in _TV_RULES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise KeyError(f"no DenseNet mapping for torchvision key {key!r}")


def load_torchvision_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True
) -> nn.Module:
    """Load a torchvision DenseNet state dict (e.g. ``densenet121(weights=...)``) into ``model``.

    torchvision names the stages ``features.conv0/norm0/denseblockN.denselayerM/transitionN/
    norm5`` and ``classifier``; the modules inside a dense layer (``norm1, conv1, norm2, conv2``)
    and a transition (``norm, conv``) have the same names here. Its old checkpoints with keys such
    as ``norm.1`` are not handled; load them through torchvision first.
    """
    mapped = {torchvision_key(k): v for k, v in state_dict.items()}
    model.load_state_dict(mapped, strict=strict)
    return model
