"""K seeds batched into one network train what K separate ``fit`` runs train."""

from __future__ import annotations

import math

import pytest
import torch

import convnets.epochs as E
import convnets.multiseed as M
import convnets.train as T
from convnets.augment import to_float
from convnets.results import DivergedError

BASE = {
    "data": {"name": "synthetic", "options": {"n_train": 256, "n_test": 64, "image_size": 8}},
    "schedule": {"unit": "epochs", "length": 2},
    "batch_size": 16,  # 16 iterations per epoch: 32 in all
    "runtime": {"precision": "fp32"},
}
MODELS = {
    "resnet option A": {"name": "cifar_resnet", "options": {"depth": 8, "downsample": "A"}},
    "full pre-activation": {"name": "cifar_resnet", "options": {"depth": 8,
                                                                "unit": "full_preact"}},
    "DenseNet-BC": {"name": "densenet_cifar", "options": {"depth": 10, "growth_rate": 4,
                                                          "bottleneck": True,
                                                          "compression": 0.5}},
}
SEEDS = [0, 1, 2]


@pytest.fixture
def float64(monkeypatch):
    """Everything in float64: the batched and single kernels then agree bit for bit.

    In float32 the batched (grouped) convolution sums in a different order than K single
    convolutions; those last-bit differences grow over SGD steps on these tiny nets (about 1e-3
    in the loss after 24 steps), so float32 cannot tell a semantic slip from rounding. In
    float64 the same per-seed semantics leave no difference at all.
    """
    def to_double(*args, **kwargs):
        return to_float(*args, **kwargs).double()

    for module in (T, E, M):  # the step, the evaluation, the batched step
        monkeypatch.setattr(module, "to_float", to_double)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


#: make test checks option A (the paper's CIFAR ResNets); the other two unit kinds under `slow`
@pytest.mark.parametrize("model", [m if m == "resnet option A" else
                                   pytest.param(m, marks=pytest.mark.slow) for m in MODELS])
def test_batched_seeds_equal_single_runs_in_float64(float64, model):
    cfg = dict(BASE, model=MODELS[model])
    singles = [T.fit(dict(cfg, seed=s), progress=False) for s in SEEDS]
    batched = M.fit_seeds(cfg, SEEDS)
    for one, many in zip(singles, batched, strict=True):
        for a, b in zip(one.history, many.history, strict=True):
            assert abs(a["train_loss"] - b["train_loss"]) <= 1e-12
            assert a["train_error"] == b["train_error"]
        assert (one.predictions == many.predictions).all()
        assert one.final["final_test_error"] == many.final["final_test_error"]
    # the seeds really differ (own init and data order), so equality is not trivial
    assert len({r.history[-1]["train_loss"] for r in singles}) == 3


def test_batched_seeds_track_single_runs_in_float32():
    """First-epoch (16-step) mean loss within 1e-5 (measured: about 1e-6)."""
    cfg = dict(BASE, model=MODELS["resnet option A"],
               schedule={"unit": "epochs", "length": 1})
    singles = [T.fit(dict(cfg, seed=s), progress=False) for s in SEEDS]
    batched = M.fit_seeds(cfg, SEEDS)
    for one, many in zip(singles, batched, strict=True):
        assert many.history[0]["train_loss"] == pytest.approx(one.history[0]["train_loss"],
                                                               abs=1e-5)


def test_resume_is_bitwise_and_checkpoints_are_per_seed(tmp_path):
    cfg = dict(BASE, model=MODELS["resnet option A"])
    paths = [tmp_path / f"seed{s}.pt" for s in SEEDS]
    whole = M.fit_seeds(cfg, SEEDS)

    def stop(metrics):
        if metrics["epoch"] == 1 and metrics["seed_index"] == len(SEEDS) - 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        M.fit_seeds(cfg, SEEDS, checkpoints=paths, on_epoch_end=stop)
    for p in paths:  # fit's own format: a seed can resume alone
        state = torch.load(p, map_location="cpu", weights_only=False)
        assert state["epoch"] == 1 and "momentum_buffer" in state["optimizer"]["state"][0]
    resumed = M.fit_seeds(cfg, SEEDS, checkpoints=paths)
    for a, b in zip(whole, resumed, strict=True):
        assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
        assert (a.predictions == b.predictions).all()


def test_one_seed_resumes_alone_from_a_batched_checkpoint(tmp_path):
    cfg = dict(BASE, model=MODELS["resnet option A"])
    paths = [tmp_path / f"seed{s}.pt" for s in SEEDS]

    def stop(metrics):
        if metrics["seed_index"] == len(SEEDS) - 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        M.fit_seeds(cfg, SEEDS, checkpoints=paths, on_epoch_end=stop)
    alone = T.fit(dict(cfg, seed=1), checkpoint=paths[1], progress=False)
    assert len(alone.history) == 2 and math.isfinite(alone.history[-1]["train_loss"])


def test_a_diverging_seed_leaves_the_others(monkeypatch):
    cfg = dict(BASE, model=MODELS["resnet option A"], schedule={"unit": "epochs", "length": 1})
    real = M.SeedStack.step

    def step(self, xb, yb, lr):  # seed index 1 "diverges"; the others step as usual
        loss, wrong = real(self, xb, yb, lr)
        return loss * torch.tensor([1.0, math.nan, 1.0]), wrong

    reference = M.fit_seeds(cfg, SEEDS)
    monkeypatch.setattr(M.SeedStack, "step", step)
    out = M.fit_seeds(cfg, SEEDS)
    assert isinstance(out[1], DivergedError)
    for k in (0, 2):
        assert out[k].history[0]["train_loss"] == reference[k].history[0]["train_loss"]
        assert (out[k].predictions == reference[k].predictions).all()


#: every parameter-group key of fit's optimizer (convnets.optim.param_groups) at once, with a
#: schedule drop between the epochs so that fixed_lr groups and scheduled ones part
GROUPS = {"optim": {"lr_mult": [["head.fc", 0.5]], "bias_lr_mult": 2.0, "bias_decay": False,
                    "bias_lr_schedule": False},
          "schedule": {"unit": "epochs", "length": 2, "drops": [0.5]}}


@pytest.mark.slow  # batched parameter groups (per-group lr and decay); make test has option A
def test_parameter_groups_train_as_in_fit_in_float64(float64):
    """The batched SGD is fit's own (``make_optimizer`` over the stacked tensors), so recipes
    with parameter groups train as K single runs do, bit for bit in float64."""
    cfg = dict(BASE, model=MODELS["resnet option A"], **GROUPS)
    singles = [T.fit(dict(cfg, seed=s), progress=False) for s in SEEDS[:2]]
    batched = M.fit_seeds(cfg, SEEDS[:2])
    for one, many in zip(singles, batched, strict=True):
        assert [h["train_loss"] for h in one.history] == [h["train_loss"] for h in many.history]
        assert (one.predictions == many.predictions).all()
    plain = M.fit_seeds(dict(BASE, model=MODELS["resnet option A"], schedule=GROUPS["schedule"]),
                        SEEDS[:2])
    assert plain[0].history[-1]["train_loss"] != batched[0].history[-1]["train_loss"]


def test_a_batched_checkpoint_holds_the_single_runs_optimizer_groups(tmp_path):
    cfg = dict(BASE, model=MODELS["resnet option A"], **GROUPS)
    paths = [tmp_path / f"seed{s}.pt" for s in SEEDS[:2]]

    def stop(metrics):
        if metrics["seed_index"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        M.fit_seeds(cfg, SEEDS[:2], checkpoints=paths, on_epoch_end=stop)
    single = tmp_path / "single.pt"

    def stop_single(metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        T.fit(dict(cfg, seed=1), checkpoint=single, progress=False, on_epoch_end=stop_single)
    batched, alone = (torch.load(p, weights_only=False)["optimizer"] for p in (paths[1], single))
    assert len(batched["param_groups"]) == 4  # (mult, decay, fixed): weights, fc, 1-D, fc bias
    assert batched["param_groups"] == alone["param_groups"]
    assert batched["state"].keys() == alone["state"].keys()
    for i, s in alone["state"].items():
        assert batched["state"][i]["momentum_buffer"].shape == s["momentum_buffer"].shape


@pytest.mark.parametrize(("key", "value"), [
    ("schedule", {"warmup_until_error": 80.0, "warmup_iterations": 8}),
    ("bn_group", 8)])
def test_what_one_batched_step_cannot_train_is_refused(key, value):
    cfg = dict(BASE, model=MODELS["resnet option A"], **{key: value})
    name = "schedule.warmup_until_error" if key == "schedule" else key
    assert name in M.unsupported(cfg)
    with pytest.raises(ValueError, match=name):
        M.fit_seeds(cfg, [0, 1])
    assert M.unsupported(dict(BASE, model=MODELS["resnet option A"])) is None


def test_dropout_is_refused():
    cfg = dict(BASE, model={"name": "densenet_cifar", "options": {
        "depth": 10, "growth_rate": 4, "bottleneck": True, "dropout": 0.2}})
    with pytest.raises(RuntimeError, match="randomness"):
        M.fit_seeds(cfg, [0, 1])


@pytest.mark.slow  # the progress line's format; the batched numbers are checked in make test
def test_batched_progress_prints_each_epoch_with_the_seeds_mean(capsys):
    import re

    out = M.fit_seeds(dict(BASE, model=MODELS["resnet option A"]), [0, 1], progress=True)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("epoch")]
    assert [int(re.search(r"it +(\d+)/32", x)[1]) for x in lines] == [16, 32]
    mean = sum(r.history[-1]["train_loss"] for r in out) / 2
    assert float(re.search(r"loss (\S+)", lines[-1])[1]) == pytest.approx(mean, abs=5e-5)
