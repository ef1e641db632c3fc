"""DenseNet: parameter counts, torchvision exactness, memory-efficient path, dropout, seed errata."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import convnets.models.densenet as dn
from convnets.models import build_model, get_entry
from convnets.models.densenet import (
    d2l_densenet,
    densenet_cifar,
    densenet_imagenet,
    load_torchvision_state_dict,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


PARAMS = {
    # [DN] Table 2 models with a CIFAR-10 head (paper_numbers.md 3b)
    "densenet40_k12": 1_019_722,
    "densenet100_k12": 6_979_642,
    "densenet100_k24": 27_249_082,
    "densenet_bc100_k12": 769_162,
    "densenet_bc250_k24": 15_324_406,
    "densenet_bc190_k40": 25_624_430,
    # ImageNet, 1000 classes (torchvision metadata; 264 computed, paper_numbers.md 3d)
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "densenet161": 28_681_000,
    "densenet264": 33_337_704,
}


@pytest.mark.parametrize("name", list(PARAMS))
def test_param_counts(name):
    entry = get_entry(name)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build_model(name, num_classes=entry.default_classes)
    assert n_params(model) == PARAMS[name]


def test_registry_metadata():
    assert get_entry("densenet121").default_classes == 1000
    assert get_entry("densenet121").input_size == (3, 224, 224)
    assert get_entry("densenet121").family == "imagenet-densenet"
    for name in ("densenet169", "densenet201", "densenet264", "densenet161"):
        assert "heavy" in get_entry(name).tags
    for name in ("densenet40_k12", "densenet_bc190_k40", "densenet_cifar"):
        assert get_entry(name).family == "cifar-densenet"
        assert get_entry(name).input_size == (3, 32, 32)
    assert get_entry("d2l_densenet").input_size == (1, 96, 96)
    assert get_entry("d2l_densenet").family == "d2l"


def test_torchvision_densenet121_exact():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tv = torchvision.models.densenet121(weights=None).eval()
    # torchvision's BN init (1, 0, mean 0, var 1) would hide a wrong BN mapping: randomise
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        tv.classifier.bias.uniform_(-1, 1)
    ours = build_model("densenet121", num_classes=1000)
    load_torchvision_state_dict(ours, tv.state_dict())
    ours.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        diff = (ours(x) - tv(x)).abs().max().item()
    assert diff < 1e-5


def test_top_level_children_are_stages_in_order():
    model = densenet_cifar(depth=16, growth_rate=4)
    names = [n for n, _ in model.named_children()]
    assert names == ["stem", "block1", "trans1", "block2", "trans2", "block3", "head"]
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        y = x
        for child in model.children():
            y = child(y)
        assert torch.equal(y, model(x))
        assert model.features(x).shape == (2, model.num_features, 8, 8)


# ---------------------------------------------------------------------------- seed 000


def seed000_feature_channels(block_config=(6, 12, 24, 16), in_channels=3, growth=32) -> int:
    """The channel arithmetic of seed 000's DenseNet, bugs included."""
    c = in_channels  # bug 1: `out = self.pool1(x)`, so block 1 sees the 3-channel image
    for n in block_config:
        c = (c + n * growth) // 2  # bug 2: `i != len(block_config)` is always true
    return c


def test_seed000_buggy_arithmetic_gives_508():
    assert seed000_feature_channels() == 508  # the blog's printed 508x7x7


def test_seed000_densenet121_features_are_1024x7x7():
    with torch.device("meta"):  # exact shape inference without the arithmetic
        model = build_model("densenet121", num_classes=1000).eval()
        feats = model.features(torch.empty(1, 3, 224, 224))
        shapes, y = [], torch.empty(1, 3, 224, 224)
        for name, child in list(model.named_children())[:-1]:
            y = child(y)
            shapes.append((name, tuple(y.shape[1:])))
    assert "trans4" not in dict(model.named_children())  # no transition after the last block
    # the seed prints 195x112x112, 97x56x56, 481x56x56, ..., 1016x14x14, 508x7x7
    assert shapes == [
        ("stem", (64, 56, 56)),
        ("block1", (256, 56, 56)),
        ("trans1", (128, 28, 28)),
        ("block2", (512, 28, 28)),
        ("trans2", (256, 14, 14)),
        ("block3", (1024, 14, 14)),
        ("trans3", (512, 7, 7)),
        ("block4", (1024, 7, 7)),
    ]
    assert feats.shape == (1, 1024, 7, 7)
    assert model.head.fc.in_features == 1024


def test_seed000_dense_layers_are_registered():
    # the seed keeps its dense layers in a Python list: no parameters, no state_dict entries
    block = dn.DenseBlock(6, 64, 32, bottleneck=True)
    assert len(list(block.children())) == 6
    assert "layer6.conv2.weight" in block.state_dict()
    assert n_params(block) > 0


# ---------------------------------------------------------------------------- options


def _pair(**options):
    torch.manual_seed(0)
    plain = densenet_cifar(**options)
    efficient = densenet_cifar(memory_efficient=True, **options)
    efficient.load_state_dict(plain.state_dict())
    return plain.train(), efficient.train()


def _run(model, x, seed):
    torch.manual_seed(seed)
    out = model(x)
    (out * torch.arange(1.0, out.shape[1] + 1)).sum().backward()
    return out


@pytest.mark.parametrize(
    "options",
    [
        dict(depth=16, growth_rate=6, bottleneck=True, compression=0.5),
        dict(depth=10, growth_rate=6),
        dict(depth=16, growth_rate=6, bottleneck=True, compression=0.5, dropout=0.2),
    ],
    ids=["bc", "basic", "bc-dropout"],
)
def test_memory_efficient_identical(options, monkeypatch):
    calls = []
    real = dn.cp.checkpoint
    monkeypatch.setattr(dn.cp, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain, efficient = _pair(**options)
    x = torch.randn(4, 3, 32, 32)
    out_p = _run(plain, x, seed=1)
    n_plain_calls = len(calls)
    out_e = _run(efficient, x, seed=1)
    n_layers = sum(isinstance(m, dn.DenseLayer) for m in efficient.modules())
    assert n_plain_calls == 0 and len(calls) == n_layers  # every dense layer was checkpointed
    assert torch.equal(out_p, out_e)
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters(), strict=True):
        assert q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6, msg=name)
    # the recomputation must not update the BN running statistics a second time
    for (name, a), b in zip(plain.named_buffers(), efficient.buffers(), strict=True):
        assert torch.equal(a, b), name


def _leaf_order(model):
    return [m for m in model.modules() if not list(m.children())]


@pytest.mark.parametrize("bottleneck", [False, True])
def test_dropout_after_every_conv_but_the_first(bottleneck):
    model = densenet_cifar(depth=16, growth_rate=4, bottleneck=bottleneck, dropout=0.2)
    leaves = _leaf_order(model)
    convs = [m for m in leaves if isinstance(m, nn.Conv2d)]
    drops = [m for m in leaves if isinstance(m, nn.Dropout)]
    assert len(drops) == len(convs) - 1
    assert all(d.p == 0.2 for d in drops)
    # each dropout directly follows a conv; the first conv (the stem) has none
    for i, m in enumerate(leaves):
        if isinstance(m, nn.Dropout):
            assert isinstance(leaves[i - 1], nn.Conv2d)
    assert not isinstance(leaves[1], nn.Dropout)
    assert not any(isinstance(m, nn.Dropout) for m in densenet_cifar(depth=16).modules())


def test_dropout_imagenet_count():
    with torch.device("meta"):
        model = densenet_imagenet(dropout=0.2)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == convs - 1 == 119


def test_cifar_shapes_and_layers_per_block():
    model = build_model("densenet_cifar").eval()  # depth 40, k 12: (40 - 4) / 3 = 12 layers
    assert len(list(model.block1.children())) == 12
    assert model.stem.conv.out_channels == 16
    bc = build_model("densenet_bc100_k12")  # (100 - 4) / 6 = 16 bottleneck layers, stem 2k
    assert len(list(bc.block3.children())) == 16 and bc.stem.conv.out_channels == 24
    assert bc.trans1.conv.out_channels == (24 + 16 * 12) // 2
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "options, rule",
    [
        (dict(depth=41), "3n + 4"),
        (dict(depth=43, bottleneck=True), "6n + 4"),
        (dict(depth=4), "3n + 4"),
    ],
)
def test_invalid_depth_names_rule(options, rule):
    with pytest.raises(ValueError, match=re.escape(rule)) as err:
        densenet_cifar(**options)
    assert f"depth={options['depth']}" in str(err.value)


@pytest.mark.parametrize(
    "builder, options, value",
    [
        (densenet_cifar, dict(dropout=1.5), "1.5"),
        (densenet_cifar, dict(compression=0.0), "0.0"),
        (densenet_imagenet, dict(dropout=-0.1), "-0.1"),
        (d2l_densenet, dict(init="glorot"), "'glorot'"),
    ],
)
def test_invalid_options_raise(builder, options, value):
    with pytest.raises(ValueError, match=re.escape(value)):
        builder(**options)


# ---------------------------------------------------------------------------- seed 002 (d2l)


def test_d2l_densenet_structure():
    model = build_model("d2l_densenet")
    assert [n for n, _ in model.named_children()] == [
        "stem",
        "block1",
        "trans1",
        "block2",
        "trans2",
        "block3",
        "trans3",
        "block4",
        "head",
    ]
    assert [model.get_submodule(f"trans{i}").conv.out_channels for i in (1, 2, 3)] == [96, 112, 120]
    assert model.head.fc.in_features == 248
    assert all(len(list(model.get_submodule(f"block{i}").children())) == 4 for i in range(1, 5))
    assert model.stem.conv.bias is not None  # d2l keeps biased convs
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 96, 96)).shape == (2, 10)


def test_d2l_densenet_init_option():
    torch.manual_seed(0)
    xavier = d2l_densenet()
    he = d2l_densenet(init="he")
    w_x, w_h = xavier.stem.conv.weight, he.stem.conv.weight
    bound = (6 / (w_x.shape[1] * 49 + w_x.shape[0] * 49)) ** 0.5
    assert w_x.abs().max() <= bound
    assert torch.all(he.stem.conv.bias == 0) and (w_h.abs() > bound).any()
    for m in xavier.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in, fan_out = m.weight[0].numel(), m.weight[:, 0].numel()
            assert m.weight.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5
