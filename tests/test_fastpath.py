"""The fast path trains the same thing as the plain path; bench and --parallel run on CPU."""

from __future__ import annotations

import mlflow
import pytest

from convnets import bench, tracking
from convnets.train import fit
from tests.test_experiments import _runs, _write

CFG = {
    "model": {"name": "cifar_resnet", "options": {"depth": 8}},
    "data": {"name": "synthetic", "options": {"n_train": 256, "n_test": 128, "image_size": 16}},
    "schedule": {"unit": "epochs", "length": 2},
    "batch_size": 32,
    "seed": 5,
}
PLAIN = {"precision": "fp32", "channels_last": False, "fused_sgd": False, "compile": False}


@pytest.mark.parametrize("fast", [
    {"channels_last": True, "fused_sgd": True},
    {"precision": "bf16"},
])
def test_fast_path_reaches_the_same_loss_as_the_plain_path(fast):
    plain = fit(dict(CFG, runtime=PLAIN), progress=False)
    quick = fit(dict(CFG, runtime=dict(PLAIN, **fast)), progress=False)
    tol = 1e-4 if "precision" not in fast else 0.05  # bf16 rounds activations
    for a, b in zip(plain.history, quick.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=tol)


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


def test_parallel_runs_finish_every_job_once(mlflow_store, tmp_path):
    from experiments.__main__ import main

    mlflow.set_tracking_uri(tracking.tracking_uri())
    spec = _write(tmp_path, "par")
    assert main(["run", spec, "--profile", "smoke", "--variant", "base", "--variant", "wide",
                 "--parallel", "2"]) == 0
    runs = _runs("par")
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    assert sorted(zip(runs["tags.variant"], runs["tags.seed"], strict=True)) == [
        ("base", "0"), ("base", "1"), ("wide", "0"), ("wide", "1")]
