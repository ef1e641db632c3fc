"""The fast path trains the same thing as the plain path; bench and --parallel run on CPU."""

from __future__ import annotations

import mlflow
import pytest

from convnets import bench
from convnets.names import tracking_uri
from convnets.train import fit
from tests.test_experiments import _runs, _write

CFG = {
    "model": {"name": "cifar_resnet", "options": {"depth": 8}},
    "data": {"name": "synthetic", "options": {"n_train": 256, "n_test": 128, "image_size": 16}},
    "schedule": {"unit": "epochs", "length": 2},
    "batch_size": 32,
    "seed": 5,
}
#: 4 steps an epoch: float64 on 2 shared cores stays quick
SMALL = dict(CFG, data={"name": "synthetic",
                        "options": {"n_train": 128, "n_test": 64, "image_size": 16}})
PLAIN = {"precision": "fp32", "channels_last": False, "fused_sgd": False, "compile": False}


@pytest.fixture
def float64_training(monkeypatch):
    """Train in float64: the fast path (channels_last, fused SGD) changes only the order of
    floating-point operations, so in float64 its roundoff (2**-53 relative, about 1e-16) stays
    below 1e-12 even after the ~1e4-fold amplification a short training run gives it (measured
    in float32: a 6e-8 roundoff grows to a 1.3e-4 loss gap in 16 steps, for the plain path alone
    across thread counts). The logged losses are float32, so the histories must agree to the
    float32 resolution of a sum of 4 batch losses: a few ulps, rel 1e-6. A fast path that
    trained something else (another batch order, lr, weight decay) differs by far more."""
    import convnets.epochs as E
    import convnets.train as T

    build, to_float = T.build_model, T.to_float
    monkeypatch.setattr(T, "build_model", lambda *a, **k: build(*a, **k).double())
    for module in (T, E):  # the step and the evaluation
        monkeypatch.setattr(module, "to_float", lambda *a, **k: to_float(*a, **k).double())


# float64 channels_last convolutions are slow with several threads (no oneDNN kernel): the
# 2-thread case (same histories, checked on this 2-core CPU) is in the slow selection
@pytest.mark.parametrize("threads", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_fast_path_trains_the_same_as_the_plain_path(float64_training, threads):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        plain = fit(dict(SMALL, runtime=PLAIN), progress=False)
        quick = fit(dict(SMALL, runtime=dict(PLAIN, channels_last=True, fused_sgd=True)),
                    progress=False)
    finally:
        torch.set_num_threads(before)
    assert len(plain.history) == len(quick.history) == 2
    for a, b in zip(plain.history, quick.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
    assert (plain.predictions == quick.predictions).all()


@pytest.mark.bf16_cpu
def test_bf16_reaches_about_the_same_loss_as_fp32():
    plain = fit(dict(CFG, runtime=PLAIN), progress=False)
    # bf16 is emulated (slow, still bf16) on a CPU without native bf16: the numbers are the point
    quick = fit(dict(CFG, runtime=dict(PLAIN, precision="bf16", allow_slow_bf16=True)),
                progress=False)
    # bf16 keeps 8 significant bits (2**-9 relative rounding of every activation): a few
    # percent on the loss after 16 steps, never the 10-30% a wrong recipe gives
    for a, b in zip(plain.history, quick.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)


@pytest.mark.slow
def test_compiled_step_reaches_the_same_loss():
    plain = fit(dict(CFG, runtime=PLAIN), progress=False)
    comp = fit(dict(CFG, runtime=dict(PLAIN, compile=True)), progress=False)
    assert comp.history[-1]["train_loss"] == pytest.approx(plain.history[-1]["train_loss"],
                                                           rel=1e-3)


def test_bench_runs_tiny_on_cpu(capsys, tmp_path):
    out = tmp_path / "bench.md"
    assert bench.main(["--device", "cpu", "--size", "tiny", "--no-kruns", "--out",
                       str(out)]) == 0
    text = out.read_text()
    assert "Tiny run" in text and "not a speed figure" in text
    assert "baseline: DataLoader + eager fp32" in text
    assert "| trainer: fp32 " in text and "| trainer: bf16 " in text
    assert "torch: " in text and "commit: " in text and "cpu: " in text
    assert "measured bf16 matmul peak" in text and "measured fp32 matmul peak" in text


@pytest.mark.slow  # > 9 s; `pytest -m slow` runs it
def test_parallel_runs_finish_every_job_once(mlflow_store, tmp_path):
    from experiments.__main__ import main

    mlflow.set_tracking_uri(tracking_uri())
    spec = _write(tmp_path, "par")
    assert main(["run", spec, "--profile", "smoke", "--variant", "base", "--variant", "wide",
                 "--parallel", "2"]) == 0
    runs = _runs("par")
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    assert sorted(zip(runs["tags.variant"], runs["tags.seed"], strict=True)) == [
        ("base", "0"), ("base", "1"), ("wide", "0"), ("wide", "1")]
