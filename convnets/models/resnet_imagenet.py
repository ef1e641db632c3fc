"""ImageNet ResNets of He et al. 2015 (Deep Residual Learning, Sec. 3.3-3.4, Table 1).

Layout (``python -m convnets info`` prints one row per top-level child):

* ``stem``: 7x7 conv, 64, stride 2 - BN - ReLU - 3x3 max pool, stride 2 (Table 1, conv1 and
  the first line of conv2_x);
* ``stage1`` ... ``stage4``: Table 1's conv2_x ... conv5_x, 64/128/256/512 filters (x4 at the
  output of bottleneck units), the first unit of stages 2-4 downsampling by 2;
* ``head``: global average pool, flatten, 1000-way fully connected layer.

Shortcuts are identities, and projections (1x1 conv + BN, Sec. 3.3 option B) where
dimensions change, i.e. in the first unit of every stage whose input width or resolution
differs from its output. Layer names inside a unit (``conv1``/``bn1``/... and ``shortcut``)
mirror torchvision's so that :func:`load_torchvision_state_dict` only renames prefixes.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from convnets.models.common import Stages, check_choice, he_init
from convnets.models.registry import register_model

#: units per stage and unit type for each depth (He et al. 2015, Table 1)
CONFIGS: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
STRIDE_IN = ("1x1", "3x3")


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity, or a 1x1 conv-BN projection (option B) where the dimensions change."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                     bn=nn.BatchNorm2d(cout)))


class BasicUnit(nn.Module):
    """Two 3x3 convs (He et al. 2015 Fig. 5 left): conv-BN-ReLU-conv-BN, add, ReLU."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, stride_in: str = "1x1") -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class BottleneckUnit(nn.Module):
    """1x1 (width) - 3x3 (width) - 1x1 (4 x width), each followed by BN, ReLU between them;
    add, ReLU (He et al. 2015 Fig. 5 right). ``stride_in`` says which conv carries the
    stride of a downsampling unit (see :func:`imagenet_resnet`)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, stride_in: str = "1x1") -> None:
        super().__init__()
        cout = width * self.expansion
        s1, s3 = (stride, 1) if stride_in == "1x1" else (1, stride)
        self.conv1 = nn.Conv2d(cin, width, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=s3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ImageNetResNet(Stages):
    """stem -> stage1 -> stage2 -> stage3 -> stage4 -> head, applied in order."""

    def __init__(self, stem: nn.Module, stages: list[nn.Sequential], head: nn.Module) -> None:
        stage1, stage2, stage3, stage4 = stages
        super().__init__(stem=stem, stage1=stage1, stage2=stage2, stage3=stage3,
                         stage4=stage4, head=head)


def imagenet_resnet(
    *,
    depth: int = 50,
    num_classes: int = 1000,
    stride_in: str = "1x1",
    in_channels: int = 3,
) -> ImageNetResNet:
    """ImageNet ResNet-18/34/50/101/152 of He et al. 2015 (Sec. 3.3-3.4, Table 1).

    Args:
        depth: 18 or 34 (basic two-3x3 units) or 50, 101, 152 (bottleneck units), with the
            units per stage of He et al. 2015 Table 1.
        num_classes: outputs of the final fully connected layer (1000 for ImageNet).
        stride_in: where a downsampling bottleneck unit puts its stride 2. ``"1x1"`` (ResNet
            "V1"): on the first 1x1 conv, as He et al. 2015 Sec. 3.4 ("conv3_1, conv4_1 and
            conv5_1 with a stride of 2") and the Caffe release it describes; the 1x1 then
            reads only one input position in four. ``"3x3"`` ("V1.5", torchvision and
            later reference implementations): on the 3x3 conv, so the 1x1 sees every
            position and the 3x3 does the subsampling; slightly more MACs (4.09G vs 3.86G for
            ResNet-50 at 224x224) and more accurate. Parameters are identical, so torchvision
            weights load into either, but only ``"3x3"`` reproduces torchvision's outputs.
            Projection shortcuts stride their 1x1 conv either way. Basic units (18/34) have
            their stride on the first 3x3 regardless.
        in_channels: input image channels.

    Returns:
        The network, He-initialised (He et al. 2015 Sec. 3.4).
    """
    if isinstance(depth, bool) or depth not in CONFIGS:
        raise ValueError(
            f"depth={depth!r} is not one of: {', '.join(map(str, CONFIGS))} (He et al. 2015 Table 1)"
        )
    check_choice("stride_in", stride_in, STRIDE_IN)
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes={num_classes} and in_channels={in_channels} must be >= 1")
    counts, bottleneck = CONFIGS[depth]
    block = BottleneckUnit if bottleneck else BasicUnit

    stem = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
            bn=nn.BatchNorm2d(64),
            relu=nn.ReLU(inplace=True),
            pool=nn.MaxPool2d(3, stride=2, padding=1),
        )
    )
    stages = []
    cin = 64
    for s, (count, width) in enumerate(zip(counts, (64, 128, 256, 512), strict=True)):
        units = []
        for u in range(count):
            stride = 2 if (s > 0 and u == 0) else 1
            units.append(block(cin, width, stride, stride_in))
            cin = width * block.expansion
        stages.append(nn.Sequential(*units))
    head = nn.Sequential(
        OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            fc=nn.Linear(cin, num_classes),
        )
    )
    model = ImageNetResNet(stem, stages, head)
    he_init(model)
    return model


_TV_RENAMES = (
    (re.compile(r"^conv1\."), "stem.conv."),
    (re.compile(r"^bn1\."), "stem.bn."),
    (re.compile(r"^layer(\d)\."), r"stage\1."),
    (re.compile(r"\.downsample\.0\."), ".shortcut.conv."),
    (re.compile(r"\.downsample\.1\."), ".shortcut.bn."),
    (re.compile(r"^fc\."), "head.fc."),
)


def torchvision_key(key: str) -> str:
    """Our name for the torchvision ResNet state-dict key ``key``."""
    for pattern, repl in _TV_RENAMES:
        key = pattern.sub(repl, key)
    return key


def load_torchvision_state_dict(
    model: ImageNetResNet, state_dict: Mapping[str, torch.Tensor], strict: bool = True
):
    """Load a ``torchvision.models.resnet*`` state dict into ``model`` (keys renamed).

    Outputs match torchvision's only for ``stride_in="3x3"`` (torchvision is ResNet V1.5).
    Returns what ``nn.Module.load_state_dict`` returns.
    """
    renamed = OrderedDict((torchvision_key(k), v) for k, v in state_dict.items())
    return model.load_state_dict(renamed, strict=strict)


_CITATION = "He et al. 2015, Sec. 3.3-3.4 and Table 1"
for _depth in CONFIGS:
    register_model(
        f"resnet{_depth}",
        imagenet_resnet,
        family="imagenet-resnet",
        input_size=(3, 224, 224),
        citation=_CITATION,
        description=(
            f"ImageNet ResNet-{_depth} ({'bottleneck' if CONFIGS[_depth][1] else 'basic'} "
            "units, projection shortcuts where dimensions change)"
        ),
        default_classes=1000,
        tags={"heavy"} if _depth in (101, 152) else set(),
        depth=_depth,
    )
