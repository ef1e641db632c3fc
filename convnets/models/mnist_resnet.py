"""Seed 004's small MNIST ResNet (course notes after He et al. 2015 and He et al. 2016),
with its residual block fixed. Seed defects:

1. one ``BatchNorm2d`` (``self.bn``) normalises the output of both convolutions, so the two
   convolutions share one set of BN scale/shift and running statistics; here each conv has its
   own BN (``bn1``, ``bn2``);
2. ``forward`` applies ``conv1`` twice and never calls ``conv2``, whose parameters are created
   but get no gradient; here ``conv2`` is the second convolution;
3. the seed's ResNet v2 (full pre-activation) block repeats defect 1 (``self.bn`` before both
   convs); ``unit="preact"`` gives that block with two BNs.

``seed_bugs=True`` reproduces the seed's block as printed.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from convnets.models.common import check_choice, conv_pool_relu, flatten_fc
from convnets.models.registry import register_model

__all__ = ["MNIST_UNITS", "MnistResidualBlock", "mnist_resnet"]


#: Identity Mappings Fig. 4 orderings of the MNIST block (``preact`` is the old name of (e)).
MNIST_UNITS = ("original", "bn_after_add", "relu_before_add", "relu_only_preact", "full_preact")
_UNIT_ALIASES = {"preact": "full_preact"}


class MnistResidualBlock(nn.Module):
    """Seed 004's residual block: two 3x3 convs (with bias, as in the seed) and two BNs.

    ``unit`` is one of the Identity Mappings Fig. 4 orderings (y = the block's input x):

    ==================== ===============================================================
    original (a)         relu(x + bn2(conv2(relu(bn1(conv1(x))))))   He et al. 2015 Fig. 2
    bn_after_add (b)     relu(bn2(x + conv2(relu(bn1(conv1(x))))))
    relu_before_add (c)  x + relu(bn2(conv2(relu(bn1(conv1(x))))))
    relu_only_preact (d) x + bn2(conv2(relu(bn1(conv1(relu(x))))))
    full_preact (e)      x + conv2(relu(bn2(conv1(relu(bn1(x))))))   the seed's "ResNet v2"
    ==================== ===============================================================

    ``seed_bugs=True`` reproduces the seed's code exactly: one BN (``bn1``) serves both
    normalisations, and in the original block ``conv1`` is applied twice (``conv2`` exists but
    gets no gradient). The seed prints only blocks (a) and (e); for the others ``seed_bugs``
    shares the BN the same way and, for post-activation (a, b, c), reuses ``conv1``.
    """

    def __init__(self, channels: int, *, unit: str = "original", seed_bugs: bool = False) -> None:
        super().__init__()
        unit = _UNIT_ALIASES.get(unit, unit)
        check_choice("unit", unit, MNIST_UNITS)
        self.unit = unit
        self.seed_bugs = seed_bugs
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        # BN of the conv it precedes (pre-activation) or follows (original)
        self.bn1 = nn.BatchNorm2d(channels)
        if not seed_bugs:
            self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        bn2 = self.bn1 if self.seed_bugs else self.bn2
        # the seed's post-activation block calls conv1 where conv2 belongs
        conv2 = self.conv1 if self.seed_bugs and "preact" not in self.unit else self.conv2
        u = self.unit
        if u == "full_preact":
            return x + self.conv2(F.relu(bn2(self.conv1(F.relu(self.bn1(x))))))
        if u == "relu_only_preact":
            return x + bn2(self.conv2(F.relu(self.bn1(self.conv1(F.relu(x))))))
        y = conv2(F.relu(self.bn1(self.conv1(x))))
        if u == "original":
            return F.relu(x + bn2(y))
        if u == "bn_after_add":
            return F.relu(bn2(x + y))
        return x + F.relu(bn2(y))  # relu_before_add


def mnist_resnet(*, num_classes: int = 10, unit: str = "original",
                 seed_bugs: bool = False) -> nn.Sequential:
    """Seed 004's small ResNet for MNIST, residual block fixed (one BN per conv, conv2 used).

    stem: conv 5x5 1->16, ReLU, maxpool 2 (16x12x12); block1: residual block (16);
    down2: conv 5x5 16->32, ReLU, maxpool 2 (32x4x4); block2: residual block (32);
    head: flatten (512), Linear(512, num_classes).

    Args:
        num_classes: outputs (10 digits).
        unit: an Identity Mappings Fig. 4 ordering (see :class:`MnistResidualBlock`):
            ``"original"`` (the seed's first block, He et al. 2015) ... ``"full_preact"`` (the
            seed's "ResNet v2" block; ``"preact"`` is accepted for it).
        seed_bugs: the seed's block as printed (one shared BN; ``conv1`` twice in (a)).
    """
    check_choice("unit", _UNIT_ALIASES.get(unit, unit), MNIST_UNITS)
    return nn.Sequential(
        OrderedDict(
            stem=conv_pool_relu(1, 16, relu_first=True),
            block1=MnistResidualBlock(16, unit=unit, seed_bugs=seed_bugs),
            down2=conv_pool_relu(16, 32, relu_first=True),
            block2=MnistResidualBlock(32, unit=unit, seed_bugs=seed_bugs),
            head=flatten_fc(32 * 4 * 4, num_classes),
        )
    )


register_model(
    "mnist_resnet",
    mnist_resnet,
    family="mnist-resnet",
    input_size=(1, 28, 28),
    citation="Seed 004 (course notes after He et al. 2015 Fig. 2 and He et al. 2016 Fig. 4e)",
    description="conv-residual-conv-residual MNIST net, Linear(512, 10); seed's BN bugs fixed",
)
