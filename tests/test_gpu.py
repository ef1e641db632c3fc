"""The first minute of a GPU lease: every CUDA branch of the trainer, run once (marked `gpu`;
skipped with the reason on a machine without CUDA). A GPU shift runs these first and stops if
one fails, keeping the rest of the lease for the fix (`pytest -m gpu -x`)."""

from __future__ import annotations

import pytest
import torch

from convnets.bench.measure import Timer
from convnets.checkpoint import load_checkpoint, save_checkpoint
from convnets.models import build_model
from convnets.multiseed import fit_seeds
from convnets.train import fit
from tests.test_train import interrupt_after_epoch_1_and_resume

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CFG = {
    "model": {"name": "cifar_resnet", "options": {"depth": 8}},
    "data": {"name": "synthetic", "options": {"n_train": 512, "n_test": 256, "image_size": 16}},
    "schedule": {"unit": "epochs", "length": 3},
    "batch_size": 64,
    "seed": 1,
}
FAST = {"device": "cuda", "precision": "fp32", "channels_last": True, "fused_sgd": True,
        "compile": False, "deterministic": True}


def _curve(result):
    return [(h["train_loss"], h["test_error"]) for h in result.history]


def test_fused_sgd_channels_last_resume_equals_uninterrupted(tmp_path):
    cfg = dict(CFG, runtime=FAST)
    full = fit(cfg, progress=False)
    resumed = interrupt_after_epoch_1_and_resume(cfg, tmp_path / "run.pt")
    assert _curve(resumed) == pytest.approx(_curve(full), rel=1e-5, abs=1e-5)


def test_a_cpu_checkpoint_resumes_on_cuda_with_fused_sgd(tmp_path):
    """Momentum buffers saved in NCHW on a CPU come back in the parameters' layout."""
    cpu = dict(CFG, runtime={"device": "cpu", "precision": "fp32", "compile": False})
    result = interrupt_after_epoch_1_and_resume(cpu, tmp_path / "run.pt",
                                                dict(CFG, runtime=FAST))
    assert len(result.history) == 3


def test_compile_reduce_overhead_with_cuda_graphs_trains():
    cfg = dict(CFG, runtime=dict(FAST, compile="reduce-overhead", deterministic=False))
    result = fit(cfg, progress=False)
    assert result.final["final_train_loss"] < result.history[0]["train_loss"] * 1.5


def test_the_cuda_rng_state_is_in_the_checkpoint(tmp_path):
    model = build_model("cifar_resnet", depth=8).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    save_checkpoint(tmp_path / "c.pt", model, opt, torch.Generator(), torch.device("cuda"))
    assert load_checkpoint(tmp_path / "c.pt")["cuda_rng"] is not None


def test_batched_seeds_on_cuda_equal_single_runs_to_float_rounding():
    cfg = dict(CFG, runtime={"device": "cuda", "precision": "fp32"})
    batched = fit_seeds(cfg, [0, 1])
    for seed, got in zip([0, 1], batched, strict=True):
        alone = fit(dict(cfg, seed=seed, runtime=dict(cfg["runtime"], channels_last=False)),
                    progress=False)
        assert got.final["final_test_error"] == pytest.approx(
            alone.final["final_test_error"], abs=2.0)


def test_a_one_rank_nccl_group_reduces():
    import torch.distributed as dist

    from convnets.distributed import free_port

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    try:
        t = torch.ones(3, device="cuda")
        dist.all_reduce(t)
        assert t.tolist() == [1.0, 1.0, 1.0]
    finally:
        dist.destroy_process_group()


def test_bench_timing_uses_cuda_events():
    t = Timer(torch.device("cuda"))
    t.start()
    torch.ones(1 << 20, device="cuda").sum()
    assert 0 < t.stop() < 10


def test_device_resident_data_and_augmentation_equal_the_cpus():
    """The images live on the GPU as uint8 and one epoch's permutation and crop/flip are drawn
    on the CPU and applied there: the same generator state gives the same bytes as on the
    CPU (integer gathers, no rounding)."""
    from convnets.config import resolve_config
    from convnets.device_data import epoch_data, prepare_data

    cfg = resolve_config(CFG)
    cpu, gpu = prepare_data(cfg, torch.device("cpu")), prepare_data(cfg, torch.device("cuda"))
    assert gpu.train_x.is_cuda and gpu.train_x.dtype == torch.uint8 and gpu.eval_x.is_cuda
    assert torch.equal(gpu.train_x.cpu(), cpu.train_x)
    draws = []
    for data in (cpu, gpu):
        g = torch.Generator().manual_seed(7)
        x, y = epoch_data(data.train_x, data.train_y, 384, 4, True, g, data.pad_fill)
        assert x.device == data.train_x.device and x.dtype == torch.uint8
        draws.append((x.cpu(), y.cpu()))
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
