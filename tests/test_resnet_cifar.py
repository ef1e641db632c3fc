"""CIFAR ResNets (He et al. 2015 Sec. 4.2) and the Identity Mappings ablations.

Wiring tests record the tensors around one residual unit with forward hooks and check the
unit's defining equation, so they fail if a BN, ReLU, scale or gate sits in the wrong place.
BN layers get random running statistics and affine parameters first: with fresh ones an
eval-mode BN is (almost) the identity and would hide misplaced layers.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convnets.models import build_model
from convnets.models.resnet_cifar import Gate, ResidualUnit, ZeroPadShortcut, cifar_resnet

UNITS = ("original", "bn_after_add", "relu_before_add", "relu_only_preact", "full_preact")
TOL = dict(atol=1e-5, rtol=1e-5)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_bn(model: nn.Module, skip_gates: bool = False, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    gate_bns = {id(m.bn) for m in model.modules() if isinstance(m, Gate)} if skip_gates else set()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and id(m) not in gate_bns:
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.5)
    return model


def small(**options) -> nn.Module:
    """Two units per stage (depth 14 basic / 20 bottleneck), eval mode, random BN."""
    options.setdefault("depth", 20 if options.get("bottleneck") else 14)
    torch.manual_seed(0)
    return randomize_bn(cifar_resnet(**options)).eval()


def record(model: nn.Module, unit: ResidualUnit, x: torch.Tensor | None = None) -> dict:
    """Run ``model`` and return the tensors entering and leaving the parts of ``unit``."""
    rec: dict[str, torch.Tensor] = {}
    handles = []

    def grab_in(name):
        return lambda _m, args: rec.__setitem__(name, args[0].detach().clone())

    def grab_out(name):
        return lambda _m, _a, out: rec.__setitem__(name, out.detach().clone())

    parts = {"unit": unit, "pre": unit.pre, "branch": unit.branch, "post": unit.post}
    if unit.shortcut is not None:
        parts["shortcut"] = unit.shortcut
    if unit.gate is not None:
        parts["gate"] = unit.gate
    for name, mod in parts.items():
        handles.append(mod.register_forward_pre_hook(grab_in(name + "_in")))
        handles.append(mod.register_forward_hook(grab_out(name)))
    if x is None:
        # 16x16 keeps it fast; the nets are fully convolutional up to the global pool
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            rec["logits"] = model(x)
    finally:
        for h in handles:
            h.remove()
    return rec


def types(seq: nn.Module) -> list[str]:
    return [type(m).__name__ for m in seq.children()]


def all_units(model: nn.Module) -> list[ResidualUnit]:
    return [m for m in model.modules() if isinstance(m, ResidualUnit)]


# ------------------------------------------------------------------ counts (He et al. Table 6)
@pytest.mark.parametrize(
    "name, params",
    [
        ("resnet20", 269_722),
        ("resnet32", 464_154),
        ("resnet44", 658_586),
        ("resnet56", 853_018),
        ("resnet110", 1_727_962),
        ("resnet1202", 19_421_274),
    ],
)
def test_param_counts_option_a(name, params):
    assert n_params(build_model(name)) == params
    if name != "resnet1202":  # plain nets have exactly the same layers (He et al. Sec. 4.2)
        assert n_params(build_model(name.replace("resnet", "plain"))) == params


@pytest.mark.parametrize(
    "name, mmacs", [("resnet20", 40.55), ("resnet56", 125.49), ("resnet110", 252.89)]
)
def test_macs(name, mmacs):
    model = build_model(name).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, 32, 32))
    assert counter.get_total_flops() / 2 / 1e6 == pytest.approx(mmacs, abs=0.01)


def test_bottleneck_param_counts():
    # IM Table 4 quotes 1.7M and 10.2M. With projections ("B") on the three dimension-changing
    # units and pre-activation (bare-conv projections):
    r164 = n_params(build_model("resnet164", unit="full_preact"))
    r1001 = n_params(build_model("resnet1001", unit="full_preact"))
    assert r164 == 1_703_258
    assert r1001 == 10_327_706
    assert round(r164 / 1e6, 1) == 1.7
    # original units: the projections carry a BN (conv-BN, like the branch's end)
    assert n_params(build_model("resnet164")) == r164 + 2 * (64 + 128 + 256)


def test_option_b_adds_exactly_the_projections():
    a, b = build_model("resnet20"), build_model("resnet20", downsample="B")
    # two projections: 16->32 and 32->64, 1x1 conv + BN each
    assert n_params(b) - n_params(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert isinstance(a.stage2[0].shortcut, ZeroPadShortcut)
    assert types(b.stage2[0].shortcut) == ["Conv2d", "BatchNorm2d"]
    assert b.stage2[0].shortcut.conv.stride == (2, 2)
    assert all(
        isinstance(u.shortcut, nn.Identity)
        for u in all_units(b)
        if u is not b.stage2[0] and u is not b.stage3[0]
    )


def test_option_a_subsamples_and_zero_pads():
    model = small()
    rec = record(model, model.stage2[0])
    x, s = rec["shortcut_in"], rec["shortcut"]
    assert s.shape == (2, 32, 8, 8)
    torch.testing.assert_close(s[:, :16], x[:, :, ::2, ::2], atol=0, rtol=0)
    assert (s[:, 16:] == 0).all()


def test_downsample_defaults_and_bottleneck_first_stage():
    assert isinstance(cifar_resnet(depth=8).stage2[0].shortcut, ZeroPadShortcut)
    net = cifar_resnet(depth=11, bottleneck=True)
    first = net.stage1[0]
    # 16 -> 64 at 32x32: a stride-1 projection
    assert first.shortcut.conv.in_channels == 16 and first.shortcut.conv.out_channels == 64
    assert first.shortcut.conv.stride == (1, 1)
    assert net.stage2[0].shortcut.conv.stride == (2, 2)
    # stride on the first 1x1 of the bottleneck (IM authors' release)
    assert net.stage2[0].branch.conv1.stride == (2, 2)
    assert net.stage2[0].branch.conv2.stride == (1, 1)
    # widths: stem 16, bottleneck out/4, stage outputs 64/128/256
    assert net.stem.conv.out_channels == 16
    assert [s[0].branch.conv1.out_channels for s in (net.stage1, net.stage2, net.stage3)] == [
        16,
        32,
        64,
    ]
    assert net.head.fc.in_features == 256
    net_a = cifar_resnet(depth=11, bottleneck=True, downsample="A")
    assert isinstance(net_a.stage1[0].shortcut, ZeroPadShortcut)
    # downsample stays fixed when the unit / shortcut variant changes
    for opts in (
        {"unit": "full_preact"},
        {"shortcut": "exclusive_gating"},
        {"shortcut": "dropout"},
    ):
        assert isinstance(
            cifar_resnet(depth=8, **opts).stage3[0].shortcut, (ZeroPadShortcut, nn.Sequential)
        )
        assert n_params(cifar_resnet(depth=8, downsample="A", **opts)) == n_params(
            cifar_resnet(depth=8, **opts)
        )


def test_top_level_children_are_stages():
    model = build_model("resnet20").eval()
    assert [n for n, _ in model.named_children()] == ["stem", "stage1", "stage2", "stage3", "head"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(y, torch.nn.Sequential(*model.children())(x))
        assert y.shape == (2, 10)
        assert build_model("cifar_resnet", num_classes=100).eval()(x).shape == (2, 100)


def test_he_init_then_gate_bias():
    model = cifar_resnet(depth=8, shortcut="exclusive_gating", gate_bias=-6)
    gates = [m for m in model.modules() if isinstance(m, Gate)]
    assert len(gates) == 3
    gate_bns = {id(g.bn) for g in gates}
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all()
            expected = -6.0 if id(m) in gate_bns else 0.0
            assert (m.bias == expected).all()
    assert all(g.conv.bias is None for g in gates)
    conv = model.stage2[0].branch.conv2  # He normal, fan_out = 9 * 32
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 32)), rel=0.1)
    model3 = cifar_resnet(depth=8, shortcut="shortcut_only_gating", gate_bias=-3)
    assert all((g.bn.bias == -3).all() for g in model3.modules() if isinstance(g, Gate))


# ------------------------------------------------------------------ unit orderings (IM Fig. 4)
C, B, R = "Conv2d", "BatchNorm2d", "ReLU"
EXPECTED_LAYERS = {
    # unit: (pre, basic branch, bottleneck branch, post of a middle unit)
    "original": ([], [C, B, R, C, B], [C, B, R, C, B, R, C, B], [R]),
    "bn_after_add": ([], [C, B, R, C], [C, B, R, C, B, R, C], [B, R]),
    "relu_before_add": ([], [C, B, R, C, B, R], [C, B, R, C, B, R, C, B, R], []),
    "relu_only_preact": ([R], [C, B, R, C, B], [C, B, R, C, B, R, C, B], []),
    "full_preact": ([B, R], [C, B, R, C], [C, B, R, C, B, R, C], []),
}


@pytest.mark.parametrize("unit", UNITS)
def test_unit_layer_order(unit):
    pre, basic, bottle, post = EXPECTED_LAYERS[unit]
    mid = cifar_resnet(depth=14, unit=unit).stage2[1]
    assert (types(mid.pre), types(mid.branch), types(mid.post)) == (pre, basic, post)
    mid = cifar_resnet(depth=20, bottleneck=True, unit=unit).stage2[1]
    assert (types(mid.pre), types(mid.branch), types(mid.post)) == (pre, bottle, post)
    convs = [m for m in mid.branch if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1)]
    assert [c.out_channels for c in convs] == [32, 32, 128]


@pytest.mark.parametrize("bottleneck", [False, True])
@pytest.mark.parametrize("unit", UNITS)
def test_middle_unit_equation(unit, bottleneck):
    """A unit that is neither first nor last nor dimension-changing: out = post(x + F(pre(x)))."""
    model = small(unit=unit, bottleneck=bottleneck)
    u = model.stage2[1]
    r = record(model, u)
    x, a, f, s, out = r["unit_in"], r["branch_in"], r["branch"], r["shortcut"], r["unit"]
    torch.testing.assert_close(s, x, atol=0, rtol=0)  # identity shortcut on the raw input
    if unit == "original":
        torch.testing.assert_close(a, x, atol=0, rtol=0)
        torch.testing.assert_close(out, torch.relu(x + f), **TOL)
    elif unit == "bn_after_add":
        torch.testing.assert_close(a, x, atol=0, rtol=0)
        torch.testing.assert_close(r["post_in"], x + f, **TOL)  # the BN input is branch + shortcut
        torch.testing.assert_close(out, torch.relu(u.post.bn(x + f)), **TOL)
        assert (f < 0).any()  # the branch itself ends without ReLU
    elif unit == "relu_before_add":
        torch.testing.assert_close(a, x, atol=0, rtol=0)
        assert (f >= 0).all() and (f > 0).any()
        torch.testing.assert_close(out, x + f, **TOL)  # nothing after the addition
    elif unit == "relu_only_preact":
        torch.testing.assert_close(a, torch.relu(x), atol=0, rtol=0)
        torch.testing.assert_close(out, x + f, **TOL)
        assert (out < 0).any()
    else:  # full_preact
        torch.testing.assert_close(a, torch.relu(u.pre.bn(x)), **TOL)
        torch.testing.assert_close(out, x + f, **TOL)
        assert (out < 0).any()  # no ReLU after the addition


@pytest.mark.parametrize("unit", UNITS)
def test_stems(unit):
    stem = cifar_resnet(depth=8, unit=unit).stem
    expected = {
        "full_preact": ["Conv2d"],
        "relu_only_preact": ["Conv2d", "BatchNorm2d"],
    }.get(unit, ["Conv2d", "BatchNorm2d", "ReLU"])
    assert types(stem) == expected
    head = cifar_resnet(depth=8, unit=unit).head
    assert types(head) == ["AdaptiveAvgPool2d", "Flatten", "Linear"]


@pytest.mark.parametrize("bottleneck", [False, True])
@pytest.mark.parametrize("unit", ["relu_only_preact", "full_preact"])
def test_preact_first_unit_activates_before_split(unit, bottleneck):
    # IM appendix: the first unit's activation follows conv1 and feeds branch AND shortcut
    model = small(unit=unit, bottleneck=bottleneck)
    first = model.stage1[0]
    assert first.shortcut_takes_preact
    r = record(model, first)
    x, a = r["unit_in"], r["branch_in"]
    assert (x < 0).any()  # the stem's output is not activated
    torch.testing.assert_close(r["shortcut_in"], a, atol=0, rtol=0)
    torch.testing.assert_close(r["pre"], a, atol=0, rtol=0)
    if unit == "full_preact":
        torch.testing.assert_close(a, torch.relu(first.pre.bn(x)), **TOL)
    else:
        torch.testing.assert_close(a, torch.relu(x), **TOL)
    torch.testing.assert_close(r["unit"], r["shortcut"] + r["branch"], **TOL)
    if not bottleneck:
        torch.testing.assert_close(r["unit"], a + r["branch"], **TOL)


@pytest.mark.parametrize("unit", ["relu_only_preact", "full_preact"])
def test_preact_last_unit_extra_activation(unit):
    model = small(unit=unit)
    last = model.stage3[-1]
    assert types(last.post) == (["BatchNorm2d", "ReLU"] if unit == "full_preact" else ["ReLU"])
    # only the last unit has it
    assert all(len(u.post) == 0 for u in all_units(model) if u is not last)
    r = record(model, last)
    added = r["shortcut"] + r["branch"]
    torch.testing.assert_close(r["post_in"], added, **TOL)
    expected = torch.relu(last.post.bn(added)) if unit == "full_preact" else torch.relu(added)
    torch.testing.assert_close(r["unit"], expected, **TOL)
    assert (r["unit"] >= 0).all()
    pooled = r["unit"].mean(dim=(2, 3))
    torch.testing.assert_close(r["logits"], model.head.fc(pooled), **TOL)


@pytest.mark.parametrize("unit", ["relu_only_preact", "full_preact"])
def test_preact_dimension_increasing_units(unit):
    # projection ("B"): reads the pre-activated input; option A: the raw input
    model_b = small(unit=unit, downsample="B")
    r = record(model_b, model_b.stage2[0])
    torch.testing.assert_close(r["shortcut_in"], r["branch_in"], atol=0, rtol=0)
    assert not torch.equal(r["shortcut_in"], r["unit_in"])
    proj = model_b.stage2[0].shortcut
    assert types(proj) == (["Conv2d"] if unit == "full_preact" else ["Conv2d", "BatchNorm2d"])
    model_a = small(unit=unit, downsample="A")
    r = record(model_a, model_a.stage2[0])
    torch.testing.assert_close(r["shortcut_in"], r["unit_in"], atol=0, rtol=0)
    torch.testing.assert_close(r["shortcut"][:, :16], r["unit_in"][:, :, ::2, ::2], atol=0, rtol=0)
    torch.testing.assert_close(r["unit"], r["shortcut"] + r["branch"], **TOL)


def test_post_activation_units_never_preactivate_shortcut():
    for unit in ("original", "bn_after_add", "relu_before_add"):
        model = cifar_resnet(depth=11, bottleneck=True, unit=unit)
        assert not any(u.shortcut_takes_preact for u in all_units(model))
        assert types(model.stage1[0].pre) == []


# ------------------------------------------------------------------ shortcuts (IM Fig. 2)
@pytest.mark.parametrize("bottleneck", [False, True])
def test_constant_scaling(bottleneck):
    model = small(shortcut="constant_scaling", bottleneck=bottleneck)
    for u in (model.stage1[0], model.stage2[0]):
        r = record(model, u)
        torch.testing.assert_close(
            r["unit"], torch.relu(0.5 * r["shortcut"] + 0.5 * r["branch"]), **TOL
        )
    model = small(shortcut="constant_scaling", scale_shortcut=0.0, scale_branch=1.0)
    r = record(model, model.stage1[1])
    torch.testing.assert_close(r["unit"], torch.relu(r["branch"]), **TOL)
    # identity nets do not scale
    model = small()
    r = record(model, model.stage1[1])
    torch.testing.assert_close(r["unit"], torch.relu(r["shortcut"] + r["branch"]), **TOL)


@pytest.mark.parametrize("kind", ["exclusive_gating", "shortcut_only_gating"])
def test_gating_equation(kind):
    model = small(shortcut=kind)
    for u in (model.stage1[1], model.stage3[0]):
        r = record(model, u)
        g, s, f = r["gate"], r["shortcut"], r["branch"]
        torch.testing.assert_close(r["gate_in"], r["unit_in"], atol=0, rtol=0)
        assert g.shape == f.shape and ((g > 0) & (g < 1)).all()
        mixed = (1 - g) * s + (g * f if kind == "exclusive_gating" else f)
        torch.testing.assert_close(r["unit"], torch.relu(mixed), **TOL)
        torch.testing.assert_close(g, torch.sigmoid(u.gate.bn(u.gate.conv(r["unit_in"]))), **TOL)


@pytest.mark.parametrize("kind", ["exclusive_gating", "shortcut_only_gating"])
def test_gate_bias_minus_six(kind):
    torch.manual_seed(0)
    model = randomize_bn(cifar_resnet(depth=14, shortcut=kind), skip_gates=True).eval()
    for gate in (m for m in model.modules() if isinstance(m, Gate)):
        nn.init.zeros_(gate.conv.weight)  # g(x) = sigmoid(b_g) exactly
    g0 = torch.sigmoid(torch.tensor(-6.0))
    r = record(model, model.stage2[1])
    torch.testing.assert_close(r["gate"], torch.full_like(r["gate"], g0.item()), **TOL)
    s, f = r["shortcut"], r["branch"]
    branch_factor = g0 if kind == "exclusive_gating" else 1.0
    torch.testing.assert_close(r["unit"], torch.relu(s * (1 - g0) + f * branch_factor), **TOL)


def test_conv1x1_shortcut_everywhere():
    model = small(shortcut="conv1x1")
    units = all_units(model)
    assert len(units) == 6
    extra = 0
    for u in units:
        assert types(u.shortcut) == ["Conv2d", "BatchNorm2d"]
        conv = u.shortcut.conv
        assert conv.kernel_size == (1, 1)
        extra += conv.in_channels * conv.out_channels + 2 * conv.out_channels
    assert n_params(model) == n_params(cifar_resnet(depth=14)) + extra
    r = record(model, model.stage1[1])
    sc = model.stage1[1].shortcut
    torch.testing.assert_close(r["shortcut"], sc.bn(sc.conv(r["unit_in"])), **TOL)
    torch.testing.assert_close(r["unit"], torch.relu(r["shortcut"] + r["branch"]), **TOL)


@pytest.mark.parametrize("mode", ["classic", "inverted"])
def test_dropout_shortcut(mode):
    # classic (default): IM Sec. 3.1's reading, "a scale with an expectation of 0.5" (here
    # 1 - p = 0.7): a 0/1 mask in training, x 0.7 at test. inverted: nn.Dropout.
    opts = {} if mode == "classic" else {"shortcut_dropout_mode": "inverted"}
    model = small(shortcut="dropout", shortcut_dropout=0.3, **opts)
    u = model.stage1[1]
    assert u.shortcut.dropout.p == 0.3
    test_scale, train_scale = (0.7, 1.0) if mode == "classic" else (1.0, 1 / 0.7)
    r = record(model, u)  # eval
    torch.testing.assert_close(r["shortcut"], r["unit_in"] * test_scale, atol=0, rtol=0)
    torch.testing.assert_close(r["unit"], torch.relu(r["shortcut"] + r["branch"]), **TOL)
    model.train()
    torch.manual_seed(3)
    r = record(model, u)
    x, s = r["shortcut_in"], r["shortcut"]
    nonzero = x != 0
    dropped = (s == 0) & nonzero
    assert dropped.any() and (~dropped & nonzero).any()
    torch.testing.assert_close(s[~dropped], x[~dropped] * train_scale, **TOL)
    assert 0.2 < dropped.sum().item() / nonzero.sum().item() < 0.4
    # on a dimension-increasing unit: dropout after the option-A shortcut
    assert isinstance(model.stage2[0].shortcut.path, ZeroPadShortcut)


# ------------------------------------------------------------------ plain nets
def test_plain_net_has_no_shortcuts():
    plain = small(plain=True)
    assert all(u.shortcut is None for u in all_units(plain))
    for u in (plain.stage1[0], plain.stage2[0]):
        r = record(plain, u)
        torch.testing.assert_close(r["unit"], torch.relu(r["branch"]), **TOL)
    # same parameters as the residual net; loading them gives different outputs
    res = small()
    res.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(res(x), plain(x))
    assert list(build_model("plain20").state_dict()) == list(build_model("resnet20").state_dict())
