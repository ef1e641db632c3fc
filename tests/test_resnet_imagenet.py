"""ImageNet ResNets (He et al. 2015 Table 1) against torchvision and the paper's counts."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convnets.models import build_model, get_entry, list_models
from convnets.models.resnet_imagenet import (
    imagenet_resnet,
    load_torchvision_state_dict,
    torchvision_key,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
    return model


def test_resnet50_param_count():
    assert n_params(build_model("resnet50", num_classes=1000)) == 25_557_032


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_param_counts_equal_torchvision(depth):
    ours = n_params(build_model(f"resnet{depth}", num_classes=1000))
    assert ours == n_params(getattr(torchvision.models, f"resnet{depth}")(weights=None))


@pytest.mark.slow
@pytest.mark.parametrize("depth", [101, 152])
def test_param_counts_equal_torchvision_deep(depth):
    test_param_counts_equal_torchvision(depth)


@pytest.mark.parametrize("depth", [18, 50])
def test_matches_torchvision_outputs(depth):
    torch.manual_seed(0)
    tv = randomize_bn(getattr(torchvision.models, f"resnet{depth}")(weights=None)).eval()
    ours = imagenet_resnet(depth=depth, num_classes=1000, stride_in="3x3").eval()
    result = load_torchvision_state_dict(ours, tv.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = tv(x), ours(x)
    assert expected.abs().max() > 1e-3  # a non-trivial output
    assert (got - expected).abs().max().item() < 1e-5
    if depth == 50:  # the same weights in V1 (stride on the 1x1) give a different function
        v1 = imagenet_resnet(depth=50, num_classes=1000, stride_in="1x1").eval()
        load_torchvision_state_dict(v1, tv.state_dict())
        with torch.no_grad():
            assert (v1(x) - expected).abs().max().item() > 1e-3


def test_stride_placement():
    v1, v15 = imagenet_resnet(depth=50, stride_in="1x1"), imagenet_resnet(depth=50, stride_in="3x3")
    for stage in (v1.stage2, v1.stage3, v1.stage4):
        assert stage[0].conv1.stride == (2, 2) and stage[0].conv2.stride == (1, 1)
        assert stage[0].shortcut.conv.stride == (2, 2)
    for stage in (v15.stage2, v15.stage3, v15.stage4):
        assert stage[0].conv1.stride == (1, 1) and stage[0].conv2.stride == (2, 2)
    # stage1 of a bottleneck net: a stride-1 projection 64 -> 256
    assert v1.stage1[0].shortcut.conv.stride == (1, 1)
    assert (v1.stage1[0].shortcut.conv.in_channels, v1.stage1[0].shortcut.conv.out_channels) == (
        64,
        256,
    )
    # basic nets: identity in stage1, projections where dimensions change
    r18 = imagenet_resnet(depth=18)
    assert isinstance(r18.stage1[0].shortcut, nn.Identity)
    assert isinstance(r18.stage2[1].shortcut, nn.Identity)
    assert [type(m).__name__ for m in r18.stage2[0].shortcut] == ["Conv2d", "BatchNorm2d"]


@pytest.mark.parametrize("depth, gmacs", [(18, 1.8), (34, 3.6), (50, 3.8), (101, 7.6), (152, 11.3)])
def test_macs_match_paper_table1(depth, gmacs):
    # He et al. 2015 Table 1 (FLOPs = multiply-adds), V1 stride placement, 224x224
    model = imagenet_resnet(depth=depth).to("meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, 3, 224, 224, device="meta"))
    assert counter.get_total_flops() / 2 / 1e9 == pytest.approx(gmacs, abs=0.1)


def test_stages_and_head():
    model = build_model("resnet18", num_classes=1000)
    names = [n for n, _ in model.named_children()]
    assert names == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert [type(m).__name__ for m in model.stem] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1000)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_registry_entries():
    assert list_models("imagenet-resnet") == [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
    ]
    for name in list_models("imagenet-resnet"):
        entry = get_entry(name)
        assert entry.default_classes == 1000 and entry.input_size == (3, 224, 224)
        assert ("heavy" in entry.tags) == (name in ("resnet101", "resnet152"))


def test_torchvision_key_mapping():
    assert torchvision_key("conv1.weight") == "stem.conv.weight"
    assert torchvision_key("bn1.running_var") == "stem.bn.running_var"
    assert torchvision_key("layer3.0.downsample.1.weight") == "stage3.0.shortcut.bn.weight"
    assert torchvision_key("layer3.0.downsample.0.weight") == "stage3.0.shortcut.conv.weight"
    assert torchvision_key("layer1.2.conv3.weight") == "stage1.2.conv3.weight"
    assert torchvision_key("fc.bias") == "head.fc.bias"


@pytest.mark.parametrize(
    "options, needle",
    [({"depth": 20}, "depth=20"), ({"depth": 50, "stride_in": "7x7"}, "'7x7'")],
)
def test_invalid_options(options, needle):
    with pytest.raises(ValueError) as err:
        imagenet_resnet(**options)
    assert needle in str(err.value)
