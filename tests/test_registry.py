"""Every registered model builds, runs forward and backward, and the registry rejects typos."""

from __future__ import annotations

import pytest
import torch

from convnets import complexity
from convnets.complexity import layer_macs, registered_complexity, stage_table
from convnets.models import build_model, get_entry, list_models

#: the deepest nets (1,202 and 1,001 layers): a forward pass and a FLOP count take 10-30 s each
#: on 2 cores; `pytest -m slow` checks them, `make test` the other architectures of their family
DEEPEST = ("resnet1202", "resnet1001")


def _models():
    return [pytest.param(n, marks=pytest.mark.slow) if n in DEEPEST else n for n in list_models()]


def _input(name):
    entry = get_entry(name)
    c, h, w = entry.input_size
    if "heavy" in entry.tags and h >= 224:  # the architecture is size-agnostic (global pooling):
        # 64 px leave a 2x2 map before the pooling (a twelfth of the 224 px work); d2l's NiN
        # (an 11x11 stride-4 stem and three stride-2 pools) needs 96 px or more
        h = w = 112 if name == "d2l_nin" else 64
    return torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", _models())
def test_forward_backward_every_registered_model(name):
    torch.manual_seed(0)
    classes = 7  # not the default, so a hard-coded class count would show
    model = build_model(name, num_classes=classes)
    out = model(_input(name))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_registry_has_the_papers_models():
    names = set(list_models())
    assert {f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202, 164, 1001)} <= names
    assert {f"plain{d}" for d in (20, 32, 44, 56, 110)} <= names
    assert {f"resnet{d}" for d in (18, 34, 50, 101, 152)} <= names
    assert {f"densenet{d}" for d in (121, 169, 201, 264, 161)} <= names
    assert {"densenet40_k12", "densenet100_k12", "densenet100_k24", "densenet_bc100_k12",
            "densenet_bc250_k24", "densenet_bc190_k40", "d2l_densenet"} <= names
    assert {"nin", "d2l_nin", "mnist_inception", "mnist_resnet"} <= names


def test_unknown_model_and_option_are_named():
    with pytest.raises(KeyError, match="resnet11.*Did you mean"):
        build_model("resnet11")
    with pytest.raises(ValueError, match="no option 'unti'.*did you mean 'unit'"):
        build_model("resnet20", unti="full_preact")
    with pytest.raises(ValueError, match="fixes depth=20"):
        build_model("resnet20", depth=56)


def test_complexity_counts_macs_like_the_paper():
    c = complexity(build_model("resnet56"), (3, 32, 32))
    assert c["params"] == 853_018
    assert abs(c["macs"] / 1e6 - 125.49) < 0.01


def test_registered_complexity_counts_on_meta_what_a_cpu_pass_counts():
    """The listings' counts (meta device, layer hooks) equal the flop counter's on a real
    model, and the paper's ResNet-56 numbers (He et al. 2015, Table 6: 0.85M parameters)."""
    c = registered_complexity("cifar_resnet", {"depth": 56}, (3, 32, 32))
    cpu = complexity(build_model("cifar_resnet", depth=56), (3, 32, 32))
    # by hand: the stem (32x32, 3->16), 9 blocks of two 3x3 convolutions per stage (the
    # first of stages 2 and 3 halves the map and doubles the width, option A shortcuts have
    # no weights) and the 64->10 classifier
    stem = 32 * 32 * 16 * 3 * 9
    stage1 = 18 * 32 * 32 * 16 * 16 * 9
    stage23 = 2 * (16 * 16 * 32 * 16 * 9 + 17 * 16 * 16 * 32 * 32 * 9)
    assert (c["params"], c["macs"]) == (cpu["params"], cpu["macs"])
    assert c["macs"] == stem + stage1 + stage23 + 64 * 10 == 125_485_696
    assert c["params"] == 853_018
    assert c["layers"] == 55 + 55 + 1  # 55 convolutions, 55 batch norms, 1 linear


@pytest.mark.parametrize("name", _models())
def test_layer_macs_equal_the_flop_counter_for_every_registered_model(name):
    """The counts read off Conv2d and Linear layers equal PyTorch's flop counter (2 FLOPs per
    multiply-add), in total and stage by stage; a model whose forward has other multiply-adds
    (a functional matmul, a transposed convolution) would fail here."""
    from torch.utils.flop_counter import FlopCounterMode

    entry = get_entry(name)
    with torch.device("meta"):
        model = build_model(name, num_classes=entry.default_classes)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, *entry.input_size, device="meta"))
    counts, root = counter.get_flop_counts(), type(model).__name__
    rows = stage_table(model, entry.input_size)
    assert [r.macs for r in rows if r.name != "(other)"] == [
        sum(counts.get(f"{root}.{n}", {}).values()) // 2 for n, _ in model.named_children()]
    total = sum(counts["Global"].values()) // 2
    assert layer_macs(model, entry.input_size) == sum(r.macs for r in rows) == total > 0


def test_info_cli_prints_the_stage_table(capsys):
    from convnets.__main__ import main

    assert main(["info", "resnet110", "--unit", "full_preact"]) == 0
    out = capsys.readouterr().out
    assert "unit='full_preact'" in out
    for stage in ("stem", "stage1", "stage2", "stage3", "head"):
        assert stage in out
    assert "64x8x8" in out and "1,727,962" in out and "252.89" in out
    assert main(["info", "resnet110", "--unit", "fullpreact"]) == 2
    assert "not one of" in capsys.readouterr().err
