"""Issue 16 (fidelity): padding colour, per-pixel mean, ghost BN, the 2015 warm-up rule,
NiN's cuda-convnet optimiser, non-inverted dropout."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convnets.augment import crop_flip, crop_flip_reference, draw_crop_flip, to_float
from convnets.config import ConfigError, resolve_config
from convnets.data import pixel_mean
from convnets.device_data import epoch_data, prepare_data
from convnets.models import build_model
from convnets.models.common import ClassicDropout, GhostBatchNorm2d, use_ghost_batchnorm
from convnets.models.nin import nin
from convnets.optim import StepSchedule, make_optimizer
from convnets.runtime import resolve_runtime
from convnets.train import fit, make_step
from tests.test_train import interrupt_after_epoch_1_and_resume

SYNTH = {"name": "synthetic", "options": {"n_train": 256, "n_test": 128, "image_size": 16}}
CPU = {"device": "cpu", "precision": "fp32"}


def _data(**data):
    cfg = resolve_config({"model": {"name": "resnet20"}, "data": {**SYNTH, **data}})
    return prepare_data(cfg, torch.device("cpu"))


# ------------------------------------------------------------------ 1, 2: padding, pixel mean
@pytest.mark.parametrize("mode", ["channel", "pixel"])
def test_padded_border_is_exactly_zero_after_to_float(mode):
    d = _data(normalize=mode)
    x = d.train_x[:8]
    n = x.shape[0]
    zeros = torch.zeros(n, dtype=torch.long)
    out = crop_flip(x, zeros, zeros, torch.zeros(n, dtype=torch.bool), 4, d.pad_fill)
    f = to_float(out, d.mean, d.std)
    assert (f[:, :, :4, :] == 0).all() and (f[:, :, :, :4] == 0).all()
    # and the border of a whole augmented epoch, wherever the crops fell
    gen = torch.Generator().manual_seed(0)
    xs, _ = epoch_data(d.train_x, d.train_y, 64, 4, True, gen, d.pad_fill)
    gen = torch.Generator().manual_seed(0)
    torch.randperm(d.train_x.shape[0], generator=gen)
    dy, dx, flip = draw_crop_flip(64, 4, gen)
    f = to_float(xs, d.mean, d.std)
    for i in range(64):  # rows above the image: 4 - dy of them; below: dy - 4
        top, bottom = max(0, 4 - int(dy[i])), max(0, int(dy[i]) - 4)
        assert (f[i, :, :top, :] == 0).all() and (f[i, :, 16 - bottom :, :] == 0).all()
        assert not (f[i, :, top : 16 - bottom, :] == 0).all(0).all(1).any()  # image rows


def test_channel_mode_pads_with_rounded_mean_and_zero_mode_keeps_old_behaviour():
    d = _data()
    assert d.info["normalize"] == "channel" and d.info["pad_fill"] == "mean"
    expect = [round(v) for v in d.info["train_mean"]]
    assert d.pad_fill.tolist() == expect and d.mean.tolist() == [float(v) for v in expect]
    old = _data(pad_fill="zero")
    assert old.pad_fill is None
    assert old.mean.tolist() == pytest.approx(d.info["train_mean"], abs=1e-4)
    assert torch.equal(old.train_x, d.train_x) and old.train_x.dtype == torch.uint8
    legacy = _data(normalize=True)  # the old boolean still means per-channel
    assert torch.equal(legacy.mean, d.mean)


def test_pixel_mean_is_subtracted_at_each_pixels_own_position_before_the_crop():
    d = _data(normalize="pixel")
    raw = _data(normalize=False)
    m_img = pixel_mean(raw.train_x).round().to(torch.int16)
    assert d.train_x.dtype == torch.int16
    assert torch.equal(d.train_x, raw.train_x.to(torch.int16) - m_img)
    assert torch.equal(d.eval_x, raw.eval_x.to(torch.int16) - m_img)
    # a crop shifted by (dy, dx) = (1, 3) shows x - M at the source pixel, not at the target
    x = d.train_x[:2]
    dy, dx = torch.tensor([1, 1]), torch.tensor([3, 3])
    out = crop_flip(x, dy, dx, torch.zeros(2, dtype=torch.bool), 4, d.pad_fill)
    f = to_float(out, d.mean, d.std)
    src = (raw.train_x[:2].double() - m_img.double())  # rows r-3, cols c-1 of the source
    assert torch.equal(f[:, :, 3:, 1:].double(), src[:, :, :13, :15])
    assert (f[:, :, :3, :] == 0).all() and (f[:, :, :, :1] == 0).all()


def test_pixel_mean_exact():
    x = torch.tensor([[[[0, 255]]], [[[1, 0]]], [[[2, 0]]]], dtype=torch.uint8)  # (3, 1, 1, 2)
    assert pixel_mean(x).tolist() == [[[1.0, 85.0]]]
    assert pixel_mean(x.float()).tolist() == [[[1.0, 85.0]]]
    with pytest.raises(ValueError, match="N, C, H, W"):
        pixel_mean(x[0])


def test_fill_crop_equals_reference():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (6, 3, 8, 8), generator=gen, dtype=torch.uint8)
    dy, dx, flip = draw_crop_flip(6, 4, gen)
    fill = torch.tensor([125, 123, 114], dtype=torch.uint8)
    assert torch.equal(crop_flip(x, dy, dx, flip, 4, fill),
                       crop_flip_reference(x, dy, dx, flip, 4, fill))


# ------------------------------------------------------------------ 3: ghost batch norm
def _bn_pair(group):
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(5)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-1, 1)
    ghost = copy.deepcopy(plain)
    use_ghost_batchnorm(ghost, group)
    return plain, ghost


def test_ghost_bn_with_group_equal_to_batch_is_plain_bn_bitwise():
    plain, ghost = _bn_pair(128)
    assert type(ghost) is GhostBatchNorm2d
    x = torch.randn(128, 5, 4, 4, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    a, b = plain(x), ghost(x2)
    assert torch.equal(a, b)
    a.square().sum().backward()
    b.square().sum().backward()
    assert torch.equal(x.grad, x2.grad) and torch.equal(plain.weight.grad, ghost.weight.grad)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(plain.state_dict()[key], ghost.state_dict()[key])


def test_ghost_bn_64_of_128_is_bn_on_each_half_and_keeps_the_first_halfs_statistics():
    plain, ghost = _bn_pair(64)
    other = copy.deepcopy(plain)  # the second GPU's replica: its statistics are dropped
    x = torch.randn(128, 5, 4, 4) * 3 + 1
    x[64:] += 2.0  # make the halves differ
    out = ghost(x)
    assert torch.equal(out[:64], plain(x[:64]))
    assert torch.equal(out[64:], other(x[64:]))
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(ghost.state_dict()[key], plain.state_dict()[key])
    assert not torch.equal(ghost.running_mean, other.running_mean)
    ghost.eval(), plain.eval()
    assert torch.equal(ghost(x), plain(x))  # evaluation: running statistics, no groups


def test_ghost_bn_keeps_state_dict_keys_and_counts():
    a, b = build_model("resnet20"), build_model("resnet20")
    use_ghost_batchnorm(b, 64)
    assert list(a.state_dict()) == list(b.state_dict())
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    assert all(type(m) is GhostBatchNorm2d for m in b.modules() if isinstance(m, nn.BatchNorm2d))


# ------------------------------------------------------------------ 4: warm-up rule
def test_warmup_until_error_rule_ends_on_the_running_error_and_respects_the_cap():
    s = StepSchedule(base_lr=0.1, total=100, milestones=(50,), warmup_iterations=10,
                     warmup_lr=0.01, warmup_until_error=80.0, warmup_window=3)
    wrong = [9, 9, 9, 8, 8, 7, 7]  # of 10 per batch; window-3 error 90, 86.7, 83.3, 76.7
    for it, w in enumerate(wrong):
        assert s.lr(it) == 0.01 and s.warmup_end is None
        s.observe(it, torch.tensor(w), 10)
        if s.warmup_end is not None:
            break
    assert s.warmup_end == 6 and it == 5  # batches 3, 4, 5: (8 + 8 + 7) / 30 = 76.7% < 80%
    assert s.lr(5) == 0.01 and s.lr(6) == 0.1 and s.lr(50) == pytest.approx(0.01)
    capped = StepSchedule(base_lr=0.1, total=100, milestones=(), warmup_iterations=4,
                          warmup_until_error=80.0, warmup_window=2)
    for it in range(4):
        capped.observe(it, 10, 10)
    assert capped.warmup_end == 4 and capped.lr(3) == 0.01 and capped.lr(4) == 0.1
    fixed = StepSchedule(base_lr=0.1, total=100, milestones=(), warmup_iterations=400)
    assert fixed.warmup_end == 400  # IM: a fixed count, known up front


RUN = {
    "model": {"name": "cifar_resnet", "options": {"depth": 8}},
    "data": {**SYNTH, "normalize": "pixel"},
    "schedule": {"unit": "epochs", "length": 3, "warmup_iterations": 20,
                 "warmup_until_error": 35.0, "warmup_window": 4},
    "optim": {"lr_mult": [["head.fc", 0.5]], "bias_lr_mult": 2.0, "bias_decay": False},
    "bn_group": 16,
    "batch_size": 32,
    "seed": 3,
}


def _strip(history):
    return [{k: v for k, v in h.items() if k not in ("images_per_sec", "epoch_time_s")}
            for h in history]


def test_rule_run_logs_warmup_end_and_resumes_bitwise(tmp_path):
    full = fit(RUN, progress=False)
    ends = {h["warmup_end_iteration"] for h in full.history if "warmup_end_iteration" in h}
    assert len(ends) == 1
    end = ends.pop()
    assert 4 <= end <= 20
    assert "warmup_end_iteration" in full.history[-1]

    resumed = interrupt_after_epoch_1_and_resume(RUN, tmp_path / "run.pt")
    assert _strip(resumed.history) == _strip(full.history)
    assert (resumed.predictions == full.predictions).all()


# ------------------------------------------------------------------ 5: NiN's optimiser
def test_optimizer_groups_follow_cuda_convnet_update_rule():
    """cuda-convnet (Weights::update, layer.cu bpropWeights/bpropBiases): per step
    inc = mom * inc + (eps / N) * sum of coeff * (-dloss) - wc * eps * w (biases: wc = 0);
    w += inc. With NiN's cifar-10_params (coeff 0.1, epsW 1 / epsB 2, cccp6 epsW 0.1 /
    epsB 0.2, wc 1e-5) that is SGD at lr 0.1, weight decay 1e-4 on weights only,
    multipliers 2 on biases and 0.1 on the class layer."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(3, 4, 3, padding=1))
    model.add_module("relu", nn.ReLU())
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten(1))
    model.add_module("cccp6", nn.Linear(4, 5))
    ref = copy.deepcopy(model).double()
    cfg = resolve_config({"model": {"name": "nin"}, "optim": {
        "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "lr_mult": [["cccp6", 0.1]],
        "bias_lr_mult": 2.0, "bias_decay": False}, "runtime": CPU})
    rt = resolve_runtime(cfg["runtime"])
    opt = make_optimizer(model, cfg, rt)
    step = make_step(model, opt, rt, None, None, None)
    eps = {"conv1.weight": 1.0, "conv1.bias": 2.0, "cccp6.weight": 0.1, "cccp6.bias": 0.2}
    wc = {"conv1.weight": 1e-5, "cccp6.weight": 1e-5}
    inc = {k: torch.zeros_like(p) for k, p in ref.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randint(0, 256, (8, 3, 6, 6), generator=gen, dtype=torch.uint8)
        y = torch.randint(0, 5, (8,), generator=gen)
        step(x, y, 0.1)
        ref.zero_grad()
        (0.1 * F.cross_entropy(ref(x.double() / 255), y, reduction="sum")).backward()
        with torch.no_grad():
            for k, p in ref.named_parameters():
                inc[k] = 0.9 * inc[k] - eps[k] / 8 * p.grad - wc.get(k, 0.0) * eps[k] * p
                p += inc[k]
    for (k, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p.double(), q, rtol=1e-5, atol=1e-6, msg=k)
    lrs = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    got = [v for k, p in model.named_parameters() for v in lrs[id(p)]]
    # conv1.weight, conv1.bias, cccp6.weight, cccp6.bias: (lr, weight decay)
    assert got == pytest.approx([0.1, 1e-4, 0.2, 0.0, 0.01, 1e-4, 0.02, 0.0])


def test_bias_lr_can_stay_off_the_schedule():
    """NiN README: after 200 epochs "changing all the epsW to one tenth"; epsB stays."""
    model = nn.Linear(3, 2)
    cfg = resolve_config({"model": {"name": "nin"}, "runtime": CPU, "optim": {
        "lr": 0.1, "bias_lr_mult": 2.0, "bias_lr_schedule": False}})
    rt = resolve_runtime(cfg["runtime"])
    opt = make_optimizer(model, cfg, rt)
    step = make_step(model, opt, rt, None, None, None)
    step(torch.zeros(2, 3, dtype=torch.uint8), torch.tensor([0, 1]), 0.001)
    lr = {tuple(g["params"][0].shape): g["lr"] for g in opt.param_groups}
    assert lr == {(2, 3): 0.001, (2,): pytest.approx(0.2)}


def test_default_optimizer_is_one_plain_group():
    cfg = resolve_config({"model": {"name": "resnet20"}, "runtime": CPU})
    opt = make_optimizer(build_model("resnet20"), cfg, resolve_runtime(cfg["runtime"]))
    assert len(opt.param_groups) == 1 and "lr_mult" not in opt.param_groups[0]


# ------------------------------------------------------------------ 6: dropout semantics
def test_classic_dropout_masks_in_training_and_scales_at_test():
    d = ClassicDropout(0.5)
    x = torch.rand(20000) + 0.5
    torch.manual_seed(0)
    out = d(x)
    kept = out != 0
    assert torch.equal(out[kept], x[kept])  # a 0/1 mask, no 1/(1-p) rescaling
    assert 0.48 < kept.float().mean().item() < 0.52
    d.eval()
    assert torch.equal(d(x), x * 0.5)


def test_nin_defaults_to_classic_dropout_and_offers_inverted():
    assert [type(m) for m in nin().modules() if isinstance(m, nn.Dropout)] == [ClassicDropout] * 2
    inverted = [type(m) for m in nin(dropout_mode="inverted").modules()
                if isinstance(m, nn.Dropout)]
    assert inverted == [nn.Dropout] * 2
    with pytest.raises(ValueError, match="dropout_mode"):
        nin(dropout_mode="half")


# ------------------------------------------------------------------ config checks
@pytest.mark.parametrize("bad,key", [
    ({"data": {"normalize": "zca"}}, "data.normalize"),
    ({"data": {"pad_fill": "black"}}, "data.pad_fill"),
    ({"bn_group": 0}, "bn_group"),
    ({"optim": {"lr_mult": [["conv", -1]]}}, "optim.lr_mult"),
    ({"optim": {"lr_mult": {"conv": 1}}}, "optim.lr_mult"),
    ({"optim": {"bias_decay": "no"}}, "optim.bias_decay"),
    ({"schedule": {"warmup_until_error": 80}}, "warmup_iterations"),
    ({"schedule": {"warmup_until_error": 180, "warmup_iterations": 400}}, "warmup_until_error"),
])
def test_bad_recipe_key_is_named(bad, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_config({"model": {"name": "resnet20"}, **bad})


# ------------------------------------------------------------------ provenance
@pytest.mark.slow  # > 10 s; `pytest -m slow` runs it
def test_spec_differences_reach_run_tags_and_table_provenance():
    import pandas as pd

    from analysis.runs import normalise_runs
    from analysis.tables import provenance
    from experiments.spec import expand, load_spec

    spec = load_spec("nin-heads")
    assert len(spec["differences"]) >= 1
    jobs = expand(spec, "smoke")
    tag = jobs[0].tags["differences"]
    assert tag == " | ".join(spec["differences"])
    row = dict(jobs[0].tags, status="FINISHED", seed="0", git_commit="abc", git_dirty="false",
               dataset_label="synthetic", eval_split="test", device="cpu", config_hash="h")
    runs = normalise_runs(pd.DataFrame([row]))
    lines = provenance(runs, runs, "smoke", "2026-12-01")
    assert lines[-1] == "Known differences from the paper: " + tag
    # the pre-fidelity specs listed these as differences; they are now the recipe
    for name in ("degradation", "resnetv2-orderings", "resnetv2-shortcuts"):
        cfg = expand(load_spec(name), "paper")[0].config
        assert cfg["data"]["normalize"] == "pixel" and cfg["bn_group"] == 64
    nin_cfg = expand(spec, "paper")[0].config
    assert nin_cfg["optim"]["lr"] == 0.1 and nin_cfg["optim"]["weight_decay"] == 1e-4
    assert nin_cfg["schedule"]["length"] == 260
