"""The CUDA side's decisions, checked on a CPU: precision by device capability, fp32 without
TF32, deterministic meaning deterministic (each failed on the main of 2026-12-07)."""

from __future__ import annotations

import os

import pytest
import torch

from convnets.runtime import resolved_precision, set_cuda_math


@pytest.mark.parametrize("capability, want", [((7, 0), "fp32"), ((7, 5), "fp32"),
                                              ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_on_cuda_follows_the_devices_bf16_support(monkeypatch, capability, want):
    """A V100 (7.0) or T4 (7.5) has no bf16 tensor cores: auto means fp32 there."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolved_precision({"precision": "auto", "device": "cuda"}) == want
    assert resolved_precision({"precision": "fp32", "device": "cuda"}) == "fp32"


@pytest.fixture
def cuda_switches(monkeypatch):
    """Restore torch's global switches and the cuBLAS variable after the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) = saved[:4]
    torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


def test_an_fp32_run_on_cuda_computes_in_fp32_not_tf32(cuda_switches):
    set_cuda_math(True, False, {"deterministic": "auto", "cudnn_benchmark": True})
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.benchmark
    set_cuda_math(True, True, {"deterministic": "auto", "cudnn_benchmark": True})
    assert torch.backends.cudnn.allow_tf32


def test_deterministic_on_cuda_is_deterministic(cuda_switches):
    set_cuda_math(True, False, {"deterministic": True, "cudnn_benchmark": True})
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
