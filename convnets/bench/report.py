"""The bench's markdown: status, provenance, the peak, model and K-runs tables, missing rows."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess

import torch
from tabulate import tabulate

from convnets.bench.measure import Result, Spec
from convnets.bench.plan import LADDER
from convnets.models.registry import get_entry
from convnets.runtime import auto_switches
from convnets.tracking import git_info


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device, load: str | None) -> dict[str, str]:
    commit, dirty = git_info()
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": cpu_model(),
        "cpu cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
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
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except OSError:
            env["driver"] = "unknown"
        env["cudnn"] = str(torch.backends.cudnn.version())
    return env


def _num(v: float) -> str:
    """Three significant figures at least, thousands separated: 1,234 / 56.7 / 0.0123."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _done(state, section: str) -> list:
    """The section's measured rows, in the plan's order (resumed ones included)."""
    return [state.done[k] for k in state.keys if k.startswith(f"{section} |") and
            k in state.done]


def _peaks(state) -> dict[str, float]:
    return {r.precision: r.gflops for r in _done(state, "peak")}


def matching_peak(r: Result, peaks: dict[str, float]) -> str:
    """The peak a row's FLOP/s is compared with: bf16 rows with the bf16 matmul; fp32 rows with
    TF32 where it was measured (CUDA, where cuDNN convolutions use TF32 by default), else fp32."""
    if r.precision == "bf16":
        return "bf16"
    return "tf32" if "tf32" in peaks else "fp32"


def _flops_cells(r: Result, peaks: dict[str, float]) -> tuple[str, str, str]:
    """(achieved GFLOP/s, the matching peak, achieved / peak) for all the row's images."""
    if not r.flops_per_image:
        return "", "", ""
    achieved = r.flops_per_image * r.images_per_sec / 1e9
    p = matching_peak(r, peaks)
    if p not in peaks:
        return _num(achieved), f"{p}: not measured", ""
    return _num(achieved), f"{p} {_num(peaks[p])}", f"{100 * achieved / peaks[p]:.3g}%"


def _mib(r: Result) -> str:
    return f"{r.peak_mem_mib:,.0f}" if r.peak_mem_mib is not None else ""


def _minutes(r: Result, spec: Spec | None) -> str:
    if spec is None:
        return ""
    return _num(spec.paper_iters * spec.batch * r.seeds / r.images_per_sec / 60)


BASELINE = "baseline: DataLoader + eager fp32"
MODEL_HEADERS = ["model", "configuration", "precision", "batch", "images/s", "vs baseline",
                 "peak MiB", "achieved GFLOP/s", "peak GFLOP/s", "fraction of peak",
                 "projected run (min)", "first step s"]
K_HEADERS = ["model", "configuration", "precision", "K", "images/s per seed",
             "images/s (all seeds)", "vs 1 run", "achieved GFLOP/s", "peak GFLOP/s",
             "fraction of peak", "projected K runs (min)", "peak MiB"]


def _model_rows(state, specs: dict[str, Spec]) -> list[tuple]:
    peaks, out = _peaks(state), []
    for r in _done(state, "model"):
        base = state.done.get(f"model | {r.model} | {BASELINE}")
        out.append((r.model, r.config, r.precision, r.batch, _num(r.images_per_sec),
                    f"{r.images_per_sec / base.images_per_sec:.2f}x" if base else "",
                    _mib(r), *_flops_cells(r, peaks), _minutes(r, specs.get(r.model)),
                    f"{r.compile_s:.0f}" if r.compile_s else ""))
    return out


def _k_rows(state, specs: dict[str, Spec]) -> list[tuple]:
    peaks, out = _peaks(state), []
    for r in _done(state, "kruns"):
        one = state.done.get(f"kruns | {r.model} | 1 run (trainer step)")
        out.append((r.model, r.config, r.precision, r.seeds, _num(r.images_per_sec / r.seeds),
                    _num(r.images_per_sec),
                    f"{r.images_per_sec / one.images_per_sec:.2f}x" if one else "",
                    *_flops_cells(r, peaks), _minutes(r, specs.get(r.model)), _mib(r)))
    return out


def _label_of(flags: dict) -> str | None:
    return next((k for k, f in LADDER if f == flags), None)


def _rate(state, model: str, label: str | None) -> float | None:
    r = state.done.get(f"model | {model} | {label}") if label else None
    return r.images_per_sec if r else None


def _default_rows(state, specs: dict[str, Spec]) -> list[tuple]:
    """Per model: the ladder row that the trainer's ``runtime: auto`` resolves to for the
    paper's schedule on this device (``convnets.runtime.auto_switches``), and its speed."""
    cuda = state.env.get("device", "cpu") != "cpu"
    bf16 = cuda or state.env.get("mkldnn bf16") == "True"
    out, seen = [], []
    for r in _done(state, "model"):
        if r.model in seen or r.model not in specs:
            continue
        seen.append(r.model)
        spec = specs[r.model]
        auto = auto_switches(cuda, spec.name, spec.paper_iters, get_entry(spec.name).family)
        label = _label_of(dict(bf16=bf16, fused_sgd=auto["fused_sgd"],
                               channels_last=auto["channels_last"], compile=auto["compile"]))
        rate, base = _rate(state, r.model, label), _rate(state, r.model, BASELINE)
        out.append((r.model, f"{spec.paper_iters:,}", label or "(no such row)",
                    _num(rate) if rate else "not measured",
                    f"{rate / base:.2f}x" if rate and base else ""))
    return out


def _payback_rows(state) -> list[tuple]:
    """Per compiled row: the seconds its first step took and the steps after which the
    compiled step's saving over the same eager row has paid for them."""
    out = []
    for r in _done(state, "model"):
        flags = dict(LADDER).get(r.config)
        if not r.compile_s or not flags:
            continue
        eager = _label_of(dict(flags, compile=None))
        rate = _rate(state, r.model, eager)
        if rate is None:
            continue
        saved = r.batch / rate - r.batch / r.images_per_sec  # seconds a step
        out.append((r.model, r.config, _num(rate), _num(r.images_per_sec), f"{r.compile_s:.0f}",
                    f"{saved * 1e3:.3g}",
                    f"{r.compile_s / saved:,.0f}" if saved > 0 else "never (slower)"))
    return out


DEFAULT_NOTE = ("What a run with `runtime: auto` (the default) uses on this device for the "
                "paper's schedule, as `convnets.runtime.auto_switches` decides it, and that "
                "row's speed. Shorter runs on a CPU (fewer than "
                "`AUTO_COMPILE_CPU_MIN_ITERATIONS` steps) stay eager.")
PAYBACK_NOTE = ("A compiled row against the same row eager: the first step's seconds "
                "(compilation) divided by the seconds the compiled step saves.")


def _status(state) -> list[str]:
    n, m = len(state.done), len(state.keys)
    if state.running:
        return [f"**partial: {n} of {m} rows** (the bench is running or was cut off; the rows "
                "not measured are listed at the end)", ""]
    if n < m:
        return [f"**incomplete: {n} of {m} rows** ({m - n} failed; listed at the end)", ""]
    return [f"complete: {m} of {m} rows", ""]


def _notes(state) -> list[str]:
    t = state.timing
    return [
        "- data: synthetic uint8 images of each model's stored shape (throughput does not "
        "depend on pixel values); d2l DenseNet: 1x28x28 upsampled to 96x96 in the step",
        f"- images/s: median over {t['windows']} windows of {t['iters']} steps after "
        f"{t['warmup']} warm-up steps and a first step (CUDA events on GPU, wall clock on "
        "CPU); peak memory: torch.cuda.max_memory_allocated (GPU only)",
        "- achieved GFLOP/s = training FLOPs per image x images/s, where training FLOPs per "
        "image = 3 x the forward pass's (2 x MACs from `convnets.complexity`): an assumption, "
        "backward ~ 2 x forward (input and weight gradients), BN/ReLU/pooling not counted",
        "- fraction of peak = achieved GFLOP/s / the measured matmul peak of the row's "
        "precision (bf16 rows: bf16; fp32 rows: TF32 where measured, i.e. CUDA, else fp32)",
        "- projected run = the paper's schedule (iterations x batch, per seed) / images/s, "
        "evaluation excluded; for K runs at once, the time for all K",
    ]


K_NOTE = ("1 run: the trainer's eager bf16 + fused SGD step; 1 seed batched: the same "
          "through `convnets.multiseed`'s vmap (its overhead alone); K processes: separate "
          "processes on one device, at once (on CPU each gets cores/K threads); K seeds "
          "batched: `convnets.multiseed` (vmap over stacked parameters, per-seed data, BN and "
          "optimizer state). images/s (all seeds) counts every seed's images; 'vs 1 run' is "
          "the speed-up of getting K seeds done.")


def _missing(state) -> list[str]:
    lost = [k for k in state.keys if k not in state.done]
    if not lost:
        return []
    why = "not measured yet (running, or cut off)" if state.running else "not measured"
    return ["", "## Rows not measured", ""] + [
        f"- {k}: " + (f"failed: {state.failed[k]}" if k in state.failed else why)
        for k in lost]


def render(state, specs: dict[str, Spec]) -> str:
    """The whole markdown table of ``state`` (a ``convnets.bench.plan.State``)."""
    lines = ["# Training throughput", ""] + _status(state)
    if state.size == "tiny":
        lines += ["**Tiny run: exercises the code only; not a speed figure.**", ""]
    lines += [f"- {k}: {v}" for k, v in state.env.items()]
    if state.rendered_by:
        lines.append(f"- tables rendered again from the stored rows (nothing re-measured) by "
                     f"the rendering code of commit {state.rendered_by}")
    if state.resumed:
        lines.append(f"- resumed: {len(state.resumed)} rows from the run of {state.earlier}; "
                     "the others measured in this run")
    peaks = _done(state, "peak")
    lines += [f"- measured {r.precision} matmul peak: {_num(r.gflops)} GFLOP/s "
              f"({r.n}x{r.n})" for r in peaks]
    lines += _notes(state) + [""]
    if peaks:
        lines += ["## Matmul peak", "", tabulate(
            [(f"{r.n}x{r.n}", r.precision, _num(r.gflops)) for r in peaks],
            headers=["matmul", "precision", "GFLOP/s"], tablefmt="github"), ""]
    model_rows = _model_rows(state, specs)
    if model_rows:
        lines += ["## Models", "", tabulate(model_rows, headers=MODEL_HEADERS,
                                            tablefmt="github", disable_numparse=True), ""]
    defaults = _default_rows(state, specs) if model_rows else []
    if defaults:
        lines += ["## The trainer's defaults", "", DEFAULT_NOTE, "", tabulate(
            defaults, headers=["model", "paper iterations", "runtime: auto resolves to",
                               "images/s", "vs baseline"],
            tablefmt="github", disable_numparse=True), ""]
    payback = _payback_rows(state)
    if payback:
        lines += ["## torch.compile payback", "", PAYBACK_NOTE, "", tabulate(
            payback, headers=["model", "configuration", "eager images/s",
                              "compiled images/s", "first step s", "ms saved a step",
                              "pays back after (steps)"],
            tablefmt="github", disable_numparse=True), ""]
    k_rows = _k_rows(state, specs)
    if k_rows:
        lines += ["## K runs of one config at once", "", K_NOTE, "",
                  tabulate(k_rows, headers=K_HEADERS, tablefmt="github",
                           disable_numparse=True)]
    lines += _missing(state)
    return "\n".join(lines) + f"\n\n<!-- bench-state {state.to_json()} -->\n"
