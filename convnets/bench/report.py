"""The bench's markdown: provenance, the side-by-side table, the K-runs table."""

from __future__ import annotations

import datetime as dt
import os
import platform

import torch

from convnets.bench.measure import Result, Spec
from convnets.complexity import complexity
from convnets.models import build_model, get_entry


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device, load: str | None) -> dict[str, str]:
    from convnets.tracking import git_info

    commit, dirty = git_info()
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": cpu_model(),
        "cpu cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "cpu capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn bf16": str(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "commit": commit + (" (dirty)" if dirty else ""),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "other load during the run": load or "none stated",
    }
    try:
        env["load average at start"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        pass
    if device.type == "cuda":
        try:
            import subprocess

            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except OSError:
            env["driver"] = "unknown"
    return env


def _row(r: Result, spec: Spec, results: list[Result], peaks: dict[str, float]):
    entry = get_entry(spec.name)
    shape = (spec.shape[0], spec.resize, spec.resize) if spec.resize else entry.input_size
    macs = complexity(build_model(spec.name, **spec.options), shape)["macs"]
    tflops = 3 * 2 * macs * r.images_per_sec / 1e12  # forward + backward ~ 3x forward
    base = next((b.images_per_sec for b in results
                 if b.model == r.model and b.config.startswith("baseline")), None)
    peak = peaks.get(r.precision)
    proj_min = spec.paper_iters * spec.batch * r.seeds / r.images_per_sec / 60
    gflops = f"{1000 * tflops:,.0f}" + (f" ({100 * tflops / peak:.1f}%)" if peak else "")
    return (r.model, r.config, r.precision, r.batch, f"{r.images_per_sec:,.0f}",
            f"{r.images_per_sec / base:.2f}x" if base else "",
            f"{r.peak_mem_mib:,.0f}" if r.peak_mem_mib is not None else "", gflops,
            f"{proj_min:,.0f}", f"{r.compile_s:.0f}" if r.compile_s else "")


HEADERS = ["model", "configuration", "precision", "batch", "images/s", "vs baseline",
           "peak MiB", "GFLOP/s (of peak)", "projected run(s) (min)", "first step s"]


def report(results: list[Result], kruns: list[Result], specs: list[Spec],
           peaks: dict[str, float], env: dict, size: str, timing) -> str:
    from tabulate import tabulate

    by_label = {s.label: s for s in specs}
    lines = ["# Training throughput", ""]
    if size == "tiny":
        lines += ["**Tiny run: exercises the code only; not a speed figure.**", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += [f"- measured {p} matmul peak: {v * 1000:,.0f} GFLOP/s" for p, v in peaks.items()]
    lines += [
        "- data: synthetic uint8 images of each model's stored shape (throughput does not "
        "depend on pixel values); d2l DenseNet: 1x28x28 upsampled to 96x96 in the step",
        f"- images/s: median over {timing.windows} windows of {timing.iters} steps after "
        f"{timing.warmup} warm-up steps (CUDA events on GPU, wall clock on CPU); peak memory: "
        "torch.cuda.max_memory_allocated (GPU only)",
        "- achieved FLOP/s = 3 x 2 x forward MACs x images/s, against the measured matmul "
        "peak of the row's precision",
        "- projected run = the paper's schedule (iterations x batch, per seed) / images/s, "
        "evaluation excluded; for K runs at once, the time for all K",
        "",
        tabulate([_row(r, by_label[r.model], results, peaks) for r in results],
                 headers=HEADERS, tablefmt="github"),
    ]
    if kruns:
        lines += ["", "## K runs of one config at once", "",
                  "1 run: the trainer's eager step (no compile, no channels_last, so the three "
                  "forms run the same kernels); K processes: separate processes on one device "
                  "(on CPU each gets cores/K threads); K seeds batched: `convnets.multiseed` "
                  "(vmap over stacked parameters, per-seed data, BN and optimizer state). "
                  "images/s counts every seed's images; 'vs 1 run' is the speed-up of "
                  "getting K seeds done.", ""]
        single = {r.model: r.images_per_sec for r in kruns if r.seeds == 1}
        rows = []
        for r in kruns:
            ratio = r.images_per_sec / single[r.model] if r.model in single else None
            rows.append((r.model, r.config, r.precision, r.seeds, f"{r.images_per_sec:,.0f}",
                         f"{ratio:.2f}x" if ratio else "",
                         f"{r.peak_mem_mib:,.0f}" if r.peak_mem_mib is not None else ""))
        lines.append(tabulate(rows, headers=["model", "configuration", "precision", "K",
                                             "images/s (all seeds)", "vs 1 run", "peak MiB"],
                              tablefmt="github"))
    return "\n".join(lines) + "\n"
