"""The small MNIST networks of seed 004 (course notes on GoogLeNet and ResNet).

``mnist_inception``: a GoogLeNet-style network (Szegedy et al. 2015, Fig. 2b "Inception module
with dimension reductions", scaled down) for 28x28 MNIST digits:

========== ============================================== ===============
stage      layers                                         output
========== ============================================== ===============
stem       conv 5x5 1->10, maxpool 2, ReLU                10 x 12 x 12
inception1 Inception(10)                                  88 x 12 x 12
down2      conv 5x5 88->20, maxpool 2, ReLU               20 x 4 x 4
inception2 Inception(20)                                  88 x 4 x 4
head       flatten (88 * 4 * 4 = 1408), Linear(1408, 10)  10
========== ============================================== ===============

The Inception module concatenates, in this order: 3x3/1 average pool -> 1x1 conv (24);
1x1 conv (16); 1x1 conv (16) -> 5x5 conv (24); 1x1 conv (16) -> 3x3 conv (24) -> 3x3 conv (24);
16 + 3 * 24 = 88 channels. As in the seed there is no ReLU inside the module (GoogLeNet has one
after every conv); we keep the seed's layers.

Seed defect: the seed's module owns a single ``conv1x1`` and calls it for the 1x1 branch *and*
for the reductions of the 5x5 and 3x3 branches, although its comment speaks of "three identical
1x1 convolutions". Sharing one layer makes the 1x1 branch a copy of what the other two branches
reduce from and drops two of GoogLeNet's independent reductions. By default each branch has its
own 1x1 conv; ``shared_1x1=True`` reproduces the seed exactly (1,024 fewer parameters).

``mnist_resnet``: the seed's small ResNet, with its residual block fixed. Seed defects:

1. one ``BatchNorm2d`` (``self.bn``) normalises the output of both convolutions, so the two
   convolutions share one set of BN scale/shift and running statistics; here each conv has its
   own BN (``bn1``, ``bn2``);
2. ``forward`` applies ``conv1`` twice and never calls ``conv2``, whose parameters are created
   but get no gradient; here ``conv2`` is the second convolution;
3. the seed's ResNet v2 (full pre-activation) block repeats defect 1 (``self.bn`` before both
   convs); ``unit="preact"`` gives that block with two BNs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convnets.models.common import check_choice
from convnets.models.registry import register_model

__all__ = ["MNIST_UNITS", "Inception", "MnistResidualBlock", "mnist_inception", "mnist_resnet"]


class Inception(nn.Module):
    """Seed 004's Inception module: 4 branches, 24 + 16 + 24 + 24 = 88 output channels.

    Args:
        in_channels: input channels.
        shared_1x1: reuse one 1x1 conv for the 1x1 branch and both reductions (the seed's code).
    """

    out_channels = 88

    def __init__(self, in_channels: int, *, shared_1x1: bool = False) -> None:
        super().__init__()
        self.shared_1x1 = shared_1x1
        self.branch_pool = nn.Conv2d(in_channels, 24, 1)
        self.branch1x1 = nn.Conv2d(in_channels, 16, 1)
        if not shared_1x1:
            self.branch5x5_1 = nn.Conv2d(in_channels, 16, 1)
            self.branch3x3_1 = nn.Conv2d(in_channels, 16, 1)
        self.branch5x5_2 = nn.Conv2d(16, 24, 5, padding=2)
        self.branch3x3_2 = nn.Conv2d(16, 24, 3, padding=1)
        self.branch3x3_3 = nn.Conv2d(24, 24, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        b1 = self.branch1x1(x)
        r5 = b1 if self.shared_1x1 else self.branch5x5_1(x)
        r3 = b1 if self.shared_1x1 else self.branch3x3_1(x)
        b5 = self.branch5x5_2(r5)
        b3 = self.branch3x3_3(self.branch3x3_2(r3))
        return torch.cat((pool, b1, b5, b3), dim=1)


def _conv_pool_relu(cin: int, cout: int, relu_first: bool = False) -> nn.Sequential:
    layers = [("conv", nn.Conv2d(cin, cout, 5)), ("pool", nn.MaxPool2d(2))]
    relu = ("relu", nn.ReLU(inplace=True))
    layers.insert(1 if relu_first else 2, relu)
    return nn.Sequential(OrderedDict(layers))


def mnist_inception(*, num_classes: int = 10, shared_1x1: bool = False) -> nn.Sequential:
    """Seed 004's small GoogLeNet for MNIST (two Inception modules, 1408 -> classes FC).

    Args:
        num_classes: outputs of the final FC layer (10 digits).
        shared_1x1: ``True`` reproduces the seed's module, where one 1x1 conv serves the 1x1
            branch and the 5x5 and 3x3 reductions; ``False`` (default) gives each branch its own
            1x1 conv, as in GoogLeNet's Inception module (Szegedy et al. 2015, Fig. 2b).
    """
    return nn.Sequential(
        OrderedDict(
            stem=_conv_pool_relu(1, 10),
            inception1=Inception(10, shared_1x1=shared_1x1),
            down2=_conv_pool_relu(Inception.out_channels, 20),
            inception2=Inception(20, shared_1x1=shared_1x1),
            head=nn.Sequential(
                OrderedDict(flatten=nn.Flatten(1), fc=nn.Linear(88 * 4 * 4, num_classes))
            ),
        )
    )


register_model(
    "mnist_inception",
    mnist_inception,
    family="googlenet",
    input_size=(1, 28, 28),
    citation="Seed 004 (course notes after Szegedy et al. 2015, GoogLeNet, Sec. 4 / Fig. 2b)",
    description="2 Inception modules (88 channels) + Linear(1408, 10) for MNIST",
)


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
            stem=_conv_pool_relu(1, 16, relu_first=True),
            block1=MnistResidualBlock(16, unit=unit, seed_bugs=seed_bugs),
            down2=_conv_pool_relu(16, 32, relu_first=True),
            block2=MnistResidualBlock(32, unit=unit, seed_bugs=seed_bugs),
            head=nn.Sequential(
                OrderedDict(flatten=nn.Flatten(1), fc=nn.Linear(32 * 4 * 4, num_classes))
            ),
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
