"""What ``runtime: auto`` resolves to (the measured CPU winners), and the eager fallback of an
automatic compile."""

from __future__ import annotations

import pytest
import torch

from convnets import runtime as R
from convnets.config import resolve_config
from convnets.models import build_model
from convnets.optim import make_optimizer
from convnets.runtime import Runtime, resolve_runtime
from convnets.train import fit, make_step

AUTO = resolve_config({"model": {"name": "resnet20"}, "runtime": {"device": "cpu"}})["runtime"]


def test_cpu_defaults_are_the_bench_winners():
    paper = resolve_runtime(AUTO, model="resnet20", iterations=64000, family="cifar-resnet")
    assert paper.fused_sgd and not paper.channels_last
    assert paper.compile == "default" and paper.compile_auto
    assert paper.bf16 == R.cpu_has_bf16()
    # channels_last only for the models the bench measured faster in it
    assert resolve_runtime(AUTO, model="d2l_densenet", iterations=2340).channels_last
    assert resolve_runtime(AUTO, model="mnist_inception").channels_last
    assert not resolve_runtime(AUTO, model="resnet110").channels_last


@pytest.mark.parametrize("iterations, mode", [
    (None, None), (100, None), (R.AUTO_COMPILE_CPU_MIN_ITERATIONS - 1, None),
    (R.AUTO_COMPILE_CPU_MIN_ITERATIONS, "default"), (64000, "default")])
def test_cpu_auto_compile_only_for_long_runs(iterations, mode):
    rt = resolve_runtime(AUTO, model="resnet110", iterations=iterations, family="cifar-resnet")
    assert rt.compile == mode and rt.compile_auto == (mode is not None)


@pytest.mark.parametrize("model, family", [("mnist_inception", "googlenet"), ("d2l_densenet", "d2l"),
                                           ("densenet_bc100_k12", "cifar-densenet")])
def test_cpu_auto_compile_only_for_the_measured_winners(model, family):
    assert resolve_runtime(AUTO, model=model, iterations=10**6, family=family).compile is None


def test_explicit_switches_win_over_auto():
    rt = resolve_runtime(dict(AUTO, compile=False, fused_sgd=False, channels_last=True),
                         model="resnet20", iterations=64000, family="cifar-resnet")
    assert (rt.compile, rt.fused_sgd, rt.channels_last) == (None, False, True)
    forced = resolve_runtime(dict(AUTO, compile=True), model="resnet20", iterations=10)
    assert forced.compile == "default" and not forced.compile_auto


def test_short_runs_record_the_eager_defaults():
    cfg = {"model": {"name": "cifar_resnet", "options": {"depth": 8}},
           "data": {"name": "synthetic",
                    "options": {"n_train": 64, "n_test": 32, "image_size": 16}},
           "schedule": {"unit": "epochs", "length": 1}, "batch_size": 32,
           "runtime": {"device": "cpu", "precision": "fp32"}}
    info = fit(cfg, progress=False).info
    assert (info["compile"], info["fused_sgd"], info["channels_last"]) == (None, True, False)


def _step_losses(rt: Runtime, n: int = 3) -> list[float]:
    torch.manual_seed(0)
    model = build_model("cifar_resnet", depth=8, num_classes=4)
    cfg = resolve_config({"model": {"name": "cifar_resnet"},
                          "runtime": {"device": "cpu", "precision": "fp32"}})
    step = make_step(model, make_optimizer(model, cfg, rt), rt, None, None, None)
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x = torch.randint(0, 256, (8, 3, 16, 16), generator=gen, dtype=torch.uint8)
        y = torch.randint(0, 4, (8,), generator=gen)
        out.append(step(x, y, 0.1)[0].item())
    return out


def _failing_compile(monkeypatch):
    def compile_(fn, **kw):
        def broken(*a):
            raise RuntimeError("no C++ compiler found\nsecond line")
        return broken
    monkeypatch.setattr(torch, "compile", compile_)


def test_auto_compile_that_fails_trains_eagerly_and_says_so(monkeypatch):
    cpu = torch.device("cpu")
    eager = _step_losses(Runtime(cpu, False, False, None, False))
    _failing_compile(monkeypatch)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no C\\+\\+ compiler"):
        fallback = _step_losses(Runtime(cpu, False, False, "default", False, compile_auto=True))
    assert fallback == eager  # the failed call changed nothing: the same steps, bitwise


def test_requested_compile_that_fails_raises(monkeypatch):
    _failing_compile(monkeypatch)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        _step_losses(Runtime(torch.device("cpu"), False, False, "default", False))
