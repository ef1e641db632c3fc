"""Trainer: learns, follows the paper's schedule, resumes bitwise, stops on divergence."""

from __future__ import annotations

import pytest
import torch

from convnets.augment import crop_flip, crop_flip_reference, draw_crop_flip
from convnets.config import ConfigError, config_hash, resolve_config
from convnets.optim import make_schedule
from convnets.results import DeadlineReached, DivergedError
from convnets.train import fit

SMALL = {
    "model": {"name": "cifar_resnet", "options": {"depth": 8}},
    "data": {"name": "synthetic", "options": {"n_train": 256, "n_test": 128, "image_size": 16}},
    "schedule": {"unit": "epochs", "length": 3},
    "batch_size": 32,
    "seed": 3,
}


def _strip_timing(history):
    return [{k: v for k, v in h.items() if k not in ("images_per_sec", "epoch_time_s")}
            for h in history]


def test_training_on_synthetic_data_learns():
    cfg = dict(SMALL, schedule={"unit": "epochs", "length": 6, "drops": [0.66]},
               data=dict(SMALL["data"], options={"n_train": 512, "n_test": 256,
                                                 "image_size": 16}))
    result = fit(cfg, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.6 * losses[0]
    # 10 classes: chance is 90% error
    assert result.final["final_test_error"] < 40.0
    assert result.predictions.shape == (256,)


def test_he_schedule_matches_the_paper():
    """He et al. 2015 / Identity Mappings: 0.01 for 400 it, 0.1, /10 at 32k and 48k, 64k in all."""
    cfg = resolve_config({"model": {"name": "resnet110"},
                          "schedule": {"warmup_iterations": 400, "warmup_lr": 0.01}})
    s = make_schedule(cfg, steps_per_epoch=390)
    assert s.total == 64000
    assert s.milestones == (32000, 48000)
    expected = {0: 0.01, 399: 0.01, 400: 0.1, 31999: 0.1, 32000: 0.01, 47999: 0.01,
                48000: 0.001, 63999: 0.001}
    for it, lr in expected.items():
        assert s.lr(it) == pytest.approx(lr, rel=1e-12), it


def test_densenet_epoch_schedule():
    """DenseNet: 300 epochs at batch 64, /10 at epochs 150 and 225 (50k // 64 = 781 steps)."""
    cfg = resolve_config({"model": {"name": "densenet40_k12"}, "batch_size": 64,
                          "schedule": {"unit": "epochs", "length": 300}})
    s = make_schedule(cfg, steps_per_epoch=50000 // 64)
    assert s.total == 300 * 781
    assert s.milestones == (150 * 781, 225 * 781)
    assert s.lr(150 * 781 - 1) == pytest.approx(0.1)
    assert s.lr(150 * 781) == pytest.approx(0.01)
    assert s.lr(225 * 781) == pytest.approx(0.001)


def interrupt_after_epoch_1_and_resume(cfg, ckpt, resume_cfg=None):
    """Train ``cfg``, stop it after its first epoch (checkpoint kept), then resume it (as
    ``resume_cfg`` when given: another device or runtime)."""

    class Stop(Exception):
        pass

    def interrupt(metrics):
        if metrics["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(cfg, checkpoint=ckpt, progress=False, on_epoch_end=interrupt)
    assert ckpt.exists()
    return fit(resume_cfg or cfg, checkpoint=ckpt, progress=False)


def test_resumed_run_equals_uninterrupted_bitwise(tmp_path):
    full = fit(SMALL, progress=False)
    resumed = interrupt_after_epoch_1_and_resume(SMALL, tmp_path / "run.pt")
    assert _strip_timing(resumed.history) == _strip_timing(full.history)
    assert resumed.final["final_test_error"] == full.final["final_test_error"]
    assert resumed.final["final_train_loss"] == full.final["final_train_loss"]
    assert (resumed.predictions == full.predictions).all()


@pytest.mark.parametrize("stop_at", [11, 16])  # inside epoch 2; at the epoch 2/3 boundary
def test_deadline_stop_resumes_to_the_uninterrupted_result_bitwise(tmp_path, stop_at):
    full = fit(SMALL, progress=False)
    calls = iter(range(10**6))  # the rule is asked once per iteration, before the step
    ckpt = tmp_path / "run.pt"
    with pytest.raises(DeadlineReached, match=f"iteration {stop_at} of 24"):
        fit(SMALL, checkpoint=ckpt, progress=False, deadline=lambda: next(calls) >= stop_at)
    state = torch.load(ckpt, weights_only=False)
    assert state["iteration"] == stop_at
    resumed = fit(SMALL, checkpoint=ckpt, progress=False, deadline=lambda: False)
    assert _strip_timing(resumed.history) == _strip_timing(full.history)
    assert resumed.final["final_train_loss"] == full.final["final_train_loss"]
    assert (resumed.predictions == full.predictions).all()


def test_same_seed_is_bitwise_deterministic_and_seeds_differ():
    a = fit(SMALL, progress=False)
    b = fit(SMALL, progress=False)
    c = fit(dict(SMALL, seed=4), progress=False)
    assert _strip_timing(a.history) == _strip_timing(b.history)
    assert _strip_timing(a.history) != _strip_timing(c.history)


def test_divergence_raises():
    cfg = dict(SMALL, optim={"lr": 1e30, "weight_decay": 0.0})
    with pytest.raises(DivergedError, match="non-finite"):
        fit(cfg, progress=False)


def test_validation_split_never_touches_test_set(monkeypatch):
    import convnets.data as data

    real = data.load_dataset

    class Guard:
        def __init__(self, ds):
            self._ds = ds

        def __getattr__(self, name):
            if name == "test":
                raise AssertionError("the test set was read during a validation run")
            return getattr(self._ds, name)

    monkeypatch.setattr("convnets.device_data.load_dataset", lambda *a, **k: Guard(real(*a, **k)))
    cfg = dict(SMALL, data=dict(SMALL["data"], val_size=64))
    result = fit(cfg, progress=False)
    assert result.eval_split == "val"
    assert "final_val_error" in result.final and "final_test_error" not in result.final
    assert result.predictions.shape == (64,)


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"optim": {"lr": -0.1}}, "optim.lr"),
        ({"optim": {"lrate": 0.1}}, "lrate"),
        ({"schedule": {"drops": [0.5, 1.5]}}, "schedule.drops"),
        ({"schedule": {"unit": "fortnights"}}, "schedule.unit"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_config_names_the_key(bad, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_config({"model": {"name": "resnet20"}, **bad})


def test_config_hash_ignores_seed_and_runtime_only():
    base = {"model": {"name": "resnet20"}}
    h = config_hash(base)
    assert h == config_hash({**base, "seed": 7, "runtime": {"device": "cpu", "compile": True}})
    assert h != config_hash({**base, "optim": {"lr": 0.05}})
    assert h != config_hash({"model": {"name": "resnet20", "options": {"unit": "full_preact"}}})


def test_bulk_augmentation_equals_reference_crop_flip():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (17, 3, 12, 10), dtype=torch.uint8, generator=g)
    dy, dx, flip = draw_crop_flip(17, 4, g)
    out = crop_flip(images, dy, dx, flip, pad=4)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, crop_flip_reference(images, dy, dx, flip, pad=4))
    # the centre crop without flip is the identity; a centre crop with flip mirrors
    centre = torch.full((17,), 4)
    assert torch.equal(crop_flip(images, centre, centre, torch.zeros(17, dtype=torch.bool)), images)
    assert torch.equal(crop_flip(images, centre, centre, torch.ones(17, dtype=torch.bool)),
                       images.flip(-1))
    # a shift by the full pad brings in zeros
    corner = torch.zeros(17, dtype=torch.long)
    shifted = crop_flip(images, corner, corner, torch.zeros(17, dtype=torch.bool))
    assert (shifted[:, :, :4, :] == 0).all() and (shifted[:, :, :, :4] == 0).all()


@pytest.mark.bf16_cpu
def test_bf16_training_on_cpu_tracks_fp32_well_inside_seed_noise():
    """bf16 autocast (the CPU default where the CPU has native bf16) changes rounding, not what
    is trained. Tolerance derived from the data, not tuned to a machine: the bf16-fp32 gap in
    the epoch losses must be under half the seed-to-seed gap of fp32 runs, the noise every
    table already treats as noise. bf16 must also really be on (losses not identical)."""

    def losses(seed, precision):
        # allowed where bf16 is emulated (a CPU without native bf16): the numbers are the point
        rt = {"precision": precision, "allow_slow_bf16": precision == "bf16"}
        r = fit(dict(SMALL, seed=seed, runtime=rt), progress=False)
        assert r.info["precision"] == precision
        return torch.tensor([h["train_loss"] for h in r.history])

    fp32, bf16 = losses(3, "fp32"), losses(3, "bf16")
    seed_gap = torch.stack([(fp32 - losses(s, "fp32")).abs() for s in (4, 5)]).mean()
    gap = (bf16 - fp32).abs().max()
    assert 0 < gap < 0.5 * seed_gap, (gap, seed_gap)
