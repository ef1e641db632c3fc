"""The small MNIST GoogLeNet of seed 004 (course notes on GoogLeNet).

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

``mnist_resnet`` (the same seed's small ResNet) lives in :mod:`convnets.models.mnist_resnet`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convnets.models.common import conv_pool_relu, flatten_fc
from convnets.models.registry import register_model

__all__ = ["Inception", "mnist_inception"]


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
            stem=conv_pool_relu(1, 10),
            inception1=Inception(10, shared_1x1=shared_1x1),
            down2=conv_pool_relu(Inception.out_channels, 20),
            inception2=Inception(20, shared_1x1=shared_1x1),
            head=flatten_fc(88 * 4 * 4, num_classes),
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
