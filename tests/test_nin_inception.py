"""NiN (CIFAR and d2l), the MNIST Inception net and the MNIST ResNet of seed 004."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from convnets.models import build_model, get_entry
from convnets.models.common import ClassicDropout
from convnets.models.inception import mnist_inception
from convnets.models.mnist_resnet import MnistResidualBlock, mnist_resnet
from convnets.models.nin import D2L_NIN_CHANNELS, d2l_nin, nin


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def stage_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    out = {}
    with torch.no_grad():
        for name, child in model.named_children():
            x = child(x)
            out[name] = tuple(x.shape[1:])
    return out


# ---------------------------------------------------------------------------- NiN (CIFAR)


def test_nin_gap_shapes_and_params():
    model = build_model("nin").eval()
    assert get_entry("nin").input_size == (3, 32, 32) and get_entry("nin").family == "nin"
    shapes = stage_shapes(model, torch.randn(2, 3, 32, 32))
    # ceil-mode 3x3/2 pooling as cuda-convnet: 32 -> 16 -> 8; global average over 8x8
    assert shapes == {
        "mlpconv1": (96, 16, 16),
        "mlpconv2": (192, 8, 8),
        "mlpconv3": (10, 8, 8),
        "head": (10,),
    }
    assert n_params(model) == 966_986
    assert n_params(nin(num_classes=100)) == 966_986 + 90 * 193


def test_nin_fc_head_shapes_and_params():
    model = nin(head="fc", fc_dropout=0.5).eval()
    shapes = stage_shapes(model, torch.randn(2, 3, 32, 32))
    assert shapes["mlpconv3"] == (192, 8, 8) and shapes["head"] == (10,)
    fc = model.head.fc
    assert (fc.in_features, fc.out_features) == (192 * 8 * 8, 10)
    assert [type(m) for m in model.head] == [nn.Flatten, ClassicDropout, nn.Linear]  # author's
    # GAP model minus cccp6 (192->10) plus cccp6 (192->192) and Linear(12288, 10)
    assert n_params(model) == 966_986 - (192 * 10 + 10) + (192 * 192 + 192) + (12288 * 10 + 10)
    assert n_params(model) == 1_125_002
    assert not any(isinstance(m, nn.Dropout) for m in nin(head="fc").head)


def test_nin_relu_after_every_conv_and_dropout_placement():
    model = nin()
    leaves = [m for m in model.modules() if not list(m.children())]
    convs = [i for i, m in enumerate(leaves) if isinstance(m, nn.Conv2d)]
    assert len(convs) == 9
    assert all(isinstance(leaves[i + 1], nn.ReLU) for i in convs)  # cccp6 included (the def)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.5, 0.5]  # after mlpconv1 and mlpconv2, not mlpconv3
    assert not any(isinstance(m, nn.Dropout) for m in nin(dropout=0.0).modules())
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert all(p.ceil_mode and p.kernel_size == 3 and p.stride == 2 for p in pools)
    with torch.no_grad():
        assert (model.eval()(torch.randn(2, 3, 32, 32)) >= 0).all()  # rectified class maps


def test_nin_gaussian_init():
    torch.manual_seed(0)
    model = nin()
    w = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Conv2d)])
    assert abs(w.std().item() - 0.05) < 2e-3
    assert all(torch.all(m.bias == 0) for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(
    "options, value",
    [
        (dict(head="avg"), "'avg'"),
        (dict(init="uniform"), "'uniform'"),
        (dict(dropout=1.0), "1.0"),
        (dict(head="gap", fc_dropout=0.5), "0.5"),
    ],
)
def test_nin_invalid_options(options, value):
    with pytest.raises(ValueError, match=re.escape(value)):
        nin(**options)


# ---------------------------------------------------------------------------- NiN d2l (seed 003)


def test_seed003_channel_pairs_corrected():
    for garbled, (cin, cout) in D2L_NIN_CHANNELS.items():
        assert f"{cin}{cout}" == garbled  # the seed ran each pair together
    model = build_model("d2l_nin")
    pairs = [
        (m.in_channels, m.out_channels)
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
    ]
    assert pairs == list(D2L_NIN_CHANNELS.values())
    assert "heavy" in get_entry("d2l_nin").tags


def test_seed003_d2l_nin_output_shape():
    model = d2l_nin().eval()
    shapes = stage_shapes(model, torch.randn(1, 1, 224, 224))
    assert shapes["block1"] == (96, 54, 54)
    assert shapes["pool1"] == (96, 26, 26)
    assert shapes["pool2"] == (256, 12, 12)
    assert shapes["pool3"] == (384, 5, 5)
    assert shapes["block4"] == (10, 5, 5)
    assert shapes["head"] == (10,)
    assert d2l_nin(num_classes=7).block4.cccp2.out_channels == 7
    with pytest.raises(ValueError, match="'normal'"):
        d2l_nin(init="normal")


# ---------------------------------------------------------------------------- seed 004


def test_mnist_inception_shapes():
    model = build_model("mnist_inception").eval()
    assert get_entry("mnist_inception").family == "googlenet"
    shapes = stage_shapes(model, torch.randn(2, 1, 28, 28))
    assert shapes == {
        "stem": (10, 12, 12),
        "inception1": (88, 12, 12),
        "down2": (20, 4, 4),
        "inception2": (88, 4, 4),
        "head": (10,),
    }
    assert model.head.fc.in_features == 1408
    assert n_params(model) == 97_298


def test_seed004_inception_shared_1x1_reproduces_seed():
    seed_like = mnist_inception(shared_1x1=True)
    assert n_params(seed_like) == 97_298 - 2 * (16 * 10 + 16) - 2 * (16 * 20 + 16)
    assert not hasattr(seed_like.inception1, "branch5x5_1")
    with torch.no_grad():
        assert seed_like(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    fixed = mnist_inception()  # independent reductions, as in GoogLeNet
    blk = fixed.inception1
    assert len({id(blk.branch1x1), id(blk.branch5x5_1), id(blk.branch3x3_1)}) == 3


@pytest.mark.parametrize("unit", ["original", "preact"])
def test_seed004_resnet_one_bn_per_conv(unit):
    model = mnist_resnet(unit=unit)
    for block in (model.block1, model.block2):
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        bns = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(bns) == len(convs) == 2
        assert bns[0] is not bns[1]


@pytest.mark.parametrize("unit", ["original", "preact"])
def test_seed004_resnet_conv2_receives_gradients(unit):
    torch.manual_seed(0)
    model = build_model("mnist_resnet", unit=unit)
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    out.square().sum().backward()
    for block in (model.block1, model.block2):
        for p in (*block.conv2.parameters(), *block.bn1.parameters(), *block.bn2.parameters()):
            assert p.grad is not None and p.grad.abs().sum() > 0


def test_mnist_resnet_structure_and_invalid_unit():
    model = mnist_resnet()
    assert [n for n, _ in model.named_children()] == ["stem", "block1", "down2", "block2", "head"]
    assert model.head.fc.in_features == 512
    assert n_params(model) == 41_706
    assert isinstance(model.block1, MnistResidualBlock)
    with pytest.raises(ValueError, match="'v3'"):
        mnist_resnet(unit="v3")


# --- seed 004's block: the five Identity Mappings orderings and the seed's bugs ---------------


def _block_formula(blk, x, unit, bugs):
    """The orderings written out by hand from IM Fig. 4, with the seed's defects if ``bugs``."""
    bn1 = blk.bn1
    bn2 = blk.bn1 if bugs else blk.bn2
    c1, c2 = blk.conv1, (blk.conv1 if bugs and "preact" not in unit else blk.conv2)
    r = torch.relu
    if unit == "original":
        return r(x + bn2(c2(r(bn1(c1(x))))))
    if unit == "bn_after_add":
        return r(bn2(x + c2(r(bn1(c1(x))))))
    if unit == "relu_before_add":
        return x + r(bn2(c2(r(bn1(c1(x))))))
    if unit == "relu_only_preact":
        return x + bn2(c2(r(bn1(c1(r(x))))))
    return x + c2(r(bn2(c1(r(bn1(x))))))


@pytest.mark.parametrize("bugs", [False, True])
@pytest.mark.parametrize(
    "unit", ["original", "bn_after_add", "relu_before_add", "relu_only_preact", "full_preact"]
)
def test_mnist_block_orderings_match_their_formula(unit, bugs):
    torch.manual_seed(0)
    blk = MnistResidualBlock(8, unit=unit, seed_bugs=bugs).eval()
    for m in blk.modules():  # non-trivial BN statistics so that every BN matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert torch.equal(blk(x), _block_formula(blk, x, unit, bugs))


def test_mnist_orderings_all_differ_and_preact_alias():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    outs = {}
    for unit in ("original", "bn_after_add", "relu_before_add", "relu_only_preact",
                 "full_preact"):
        torch.manual_seed(1)
        outs[unit] = mnist_resnet(unit=unit)(x)
    vals = list(outs.values())
    assert all(not torch.allclose(a, b) for i, a in enumerate(vals) for b in vals[i + 1:])
    torch.manual_seed(1)
    assert torch.equal(mnist_resnet(unit="preact")(x), outs["full_preact"])


def test_seed_bugs_reproduce_the_printed_block():
    # the seed: one BN shared by both convs, conv1 applied twice, conv2 never used
    model = mnist_resnet(seed_bugs=True)
    assert n_params(model) == 41_706 - 2 * 16 - 2 * 32  # one BN (weight+bias) fewer per block
    out = model(torch.randn(4, 1, 28, 28))
    out.square().sum().backward()
    for block in (model.block1, model.block2):
        assert not hasattr(block, "bn2")
        assert all(p.grad is None for p in block.conv2.parameters())
        assert block.conv1.weight.grad.abs().sum() > 0
    pre = mnist_resnet(unit="full_preact", seed_bugs=True)
    pre(torch.randn(4, 1, 28, 28)).square().sum().backward()
    assert pre.block1.conv2.weight.grad.abs().sum() > 0  # the printed v2 block uses conv2
