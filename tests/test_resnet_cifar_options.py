"""CIFAR ResNets: invalid options, the registered names, and every supported unit / shortcut
combination running forward and backward."""

from __future__ import annotations

import pytest
import torch

from convnets.models import build_model, get_entry, list_models
from convnets.models.resnet_cifar import cifar_resnet
from tests.test_resnet_cifar import UNITS, n_params


def test_config_downsample_says_c_when_every_shortcut_is_a_projection():
    assert cifar_resnet(depth=8).config["downsample"] == "A"
    assert cifar_resnet(depth=8, shortcut="conv1x1").config["downsample"] == "C"
    assert cifar_resnet(depth=11, bottleneck=True, shortcut="conv1x1").config["downsample"] == "C"
    assert cifar_resnet(depth=11, bottleneck=True).config["downsample"] == "B"


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "options, needle",
    [
        ({"depth": 21}, "depth=21 is not 6n+2"),
        ({"depth": 2}, "depth=2"),
        ({"depth": 21, "bottleneck": True}, "depth=21 is not 9n+2"),
        ({"depth": 20.0}, "depth=20.0"),
        ({"unit": "preact"}, "'preact'"),
        ({"shortcut": "gated"}, "'gated'"),
        ({"downsample": "C"}, "'C'"),
        ({"plain": True, "unit": "full_preact"}, "full_preact"),
        ({"plain": True, "shortcut": "dropout"}, "dropout"),
        ({"plain": True, "downsample": "B"}, "downsample='B'"),
        ({"unit": "full_preact", "shortcut": "exclusive_gating"}, "not supported"),
        ({"shortcut": "conv1x1", "downsample": "A"}, "downsample='A'"),
        ({"shortcut": "dropout", "shortcut_dropout": 1.5}, "1.5"),
    ],
)
def test_invalid_options(options, needle):
    with pytest.raises(ValueError) as err:
        cifar_resnet(**options)
    assert needle in str(err.value)


def test_registered_names_fix_depth():
    assert get_entry("resnet110").fixed == {"depth": 110}
    assert get_entry("plain56").fixed == {"depth": 56, "plain": True}
    assert get_entry("resnet164").fixed == {"depth": 164, "bottleneck": True}
    assert "heavy" in get_entry("resnet1202").tags and "heavy" in get_entry("resnet1001").tags
    assert n_params(build_model("cifar_resnet")) == 269_722  # depth 20 by default
    with pytest.raises(ValueError, match="fixes depth"):
        build_model("resnet20", depth=32)


CIFAR_NAMES = list_models("cifar-resnet")


def _forward_backward(name: str, size: int = 32) -> None:
    model = build_model(name).train()
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_forward_backward_generic():
    assert get_entry("cifar_resnet").input_size == (3, 32, 32)
    _forward_backward("cifar_resnet")


@pytest.mark.slow
@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_forward_backward_every_name(name):
    _forward_backward(name)


SUPPORTED = [(u, "identity") for u in UNITS] + [
    ("original", s)
    for s in ("constant_scaling", "exclusive_gating", "shortcut_only_gating", "conv1x1", "dropout")
]


@pytest.mark.parametrize("unit, shortcut", SUPPORTED)
@pytest.mark.parametrize("bottleneck", [False, True])
def test_supported_combinations_train(unit, shortcut, bottleneck):
    model = cifar_resnet(
        depth=11 if bottleneck else 8, bottleneck=bottleneck, unit=unit, shortcut=shortcut
    ).train()
    out = model(torch.randn(2, 3, 16, 16))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_orderings_differ_with_two_units_per_stage():
    """With one unit per stage (depth 11) the IM special cases make (a)=(d) and (b)=(e)
    algebraically; from two units per stage on, all five orderings compute different functions.
    The smoke profile relies on this (it uses depth 20)."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    outs = {}
    for unit in ("original", "bn_after_add", "relu_before_add", "relu_only_preact", "full_preact"):
        torch.manual_seed(0)
        m = build_model("cifar_resnet", depth=20, bottleneck=True, unit=unit).eval()
        with torch.no_grad():
            # non-trivial BN statistics so every BN matters
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.uniform_(-0.5, 0.5)
                    mod.running_var.uniform_(0.5, 2.0)
            outs[unit] = m(x)
    units = list(outs)
    for i, a in enumerate(units):
        for b in units[i + 1:]:
            assert not torch.allclose(outs[a], outs[b]), (a, b)
