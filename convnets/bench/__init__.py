"""`python -m convnets.bench` (`make bench`): training throughput, side by side in one run.

For each model at its paper's batch size it times

* ``baseline``: the conventional recipe: a torchvision-style dataset (uint8 array -> PIL ->
  per-sample transforms) through a ``DataLoader``, eager fp32, plain SGD;
* the trainer's own step (``convnets.train.make_step`` and ``epoch_data``, the code real runs
  use: data resident on the device, bulk augmentation, no host sync), one technique at a time:
  bf16 autocast, fused SGD, channels_last, torch.compile, CUDA graphs (GPU);
* K runs of one config at once for resnet56 and resnet110: one run, K processes, and K seeds
  batched into one network (``convnets.multiseed``);
* the device's measured matmul peak (bf16 and fp32), and each row's achieved FLOP/s against it.

``--size`` picks the scale: ``gpu`` (default with CUDA; writes ``paper_tables/bench.md``),
``cpu`` (default without; every model with few steps, writes ``paper_tables/bench-cpu.md``,
about 10 minutes on 2 cores) and ``tiny`` (seconds; tests use it, writes nothing by default).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from convnets.bench.measure import (
    Result,
    Spec,
    Timing,
    bench_baseline,
    bench_fast,
    matmul_peak_tflops,
    synthetic,
)
from convnets.bench.report import environment, report
from convnets.bench.seeds import bench_batched, bench_processes

REPO_ROOT = Path(__file__).resolve().parents[2]
MNIST_ITERS = 10 * (60000 // 64)

MODELS = [
    Spec("resnet20", "resnet20", {}, 128, 64000),
    Spec("resnet56", "resnet56", {}, 128, 64000),
    Spec("resnet110", "resnet110", {}, 128, 64000),
    Spec("resnet164 (full_preact)", "resnet164", {"unit": "full_preact"}, 128, 64000),
    Spec("DenseNet-BC-100-12", "densenet_bc100_k12", {}, 64, 300 * (50000 // 64)),
    Spec("NiN", "nin", {}, 128, 120 * (50000 // 128)),
    Spec("MNIST Inception", "mnist_inception", {}, 64, MNIST_ITERS, (1, 28, 28),
         augment=False),
    # d2l ch. 8.7: Fashion-MNIST at 96x96, batch 256, 10 epochs, [0, 1] inputs
    Spec("d2l DenseNet (96x96)", "d2l_densenet", {}, 256, 10 * (60000 // 256), (1, 28, 28),
         augment=False, normalize=False, resize=96),
]
CPU_MODELS = ["resnet20", "resnet56", "MNIST Inception", "d2l DenseNet (96x96)"]


def _flags(bf16=False, fused_sgd=False, channels_last=False, compile=None) -> dict:
    return dict(bf16=bf16, fused_sgd=fused_sgd, channels_last=channels_last, compile=compile)


# one technique at a time; each row names its full set of techniques
LADDER = [
    ("trainer: fp32", _flags()),
    ("trainer: bf16", _flags(bf16=True)),
    ("trainer: bf16, fused SGD", _flags(bf16=True, fused_sgd=True)),
    ("trainer: bf16, fused SGD, channels_last",
     _flags(bf16=True, fused_sgd=True, channels_last=True)),
    ("trainer: bf16, fused SGD, compile", _flags(bf16=True, fused_sgd=True, compile="default")),
    ("trainer: bf16, fused SGD, channels_last, compile",
     _flags(bf16=True, fused_sgd=True, channels_last=True, compile="default")),
    ("trainer: bf16, fused SGD, channels_last, CUDA graphs",
     _flags(bf16=True, fused_sgd=True, channels_last=True, compile="reduce-overhead")),
]
SIZES = {  # (timing, models, compile for these models, K values per K-runs model, data)
    "gpu": (Timing(15, 30, 5), [m.label for m in MODELS], ["resnet56", "resnet110"],
            {"resnet56": (2, 4, 8), "resnet110": (2, 4, 8)}, 50000),
    "cpu": (Timing(1, 3, 3), CPU_MODELS, ["resnet20"],
            {"resnet56": (2, 4, 8), "resnet110": (2, 4)}, 4096),
    "tiny": (Timing(1, 1, 2), ["resnet20"], [], {"resnet20": (2,)}, 256),
}


def _rungs(device, compiled: bool, cuda_graphs: bool):
    """The ladder rows this device and model get (compile rows cost 30-120 s each)."""
    out = []
    for label, f in LADDER:
        if f["compile"] == "reduce-overhead" and not (device.type == "cuda" and cuda_graphs):
            continue
        if f["compile"] and not compiled:
            continue
        if f["compile"] and device.type == "cpu" and f["channels_last"]:
            continue  # one compile row on a 2-core CPU: the measured eager winner's layout
        out.append((label, f))
    return out


def _guarded(fn, label: str, results: list, *args):
    """Run one measurement; a failing configuration must not lose the rest."""
    try:
        r = fn(*args)
    except Exception as err:
        print(f"   {label} failed: {type(err).__name__}: {err}"[:300], flush=True)
        return
    results.append(r)
    extra = f" (first step {r.compile_s:.1f}s)" if r.compile_s else ""
    print(f"   {r.config:50s} {r.images_per_sec:10.0f} img/s{extra}", flush=True)


def run(args) -> str:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = args.size or ("gpu" if device.type == "cuda" else "cpu")
    timing, labels, compiled, kvals, n_data = SIZES[size]
    timing = Timing(args.warmup or timing.warmup, args.iters or timing.iters,
                    args.windows or timing.windows)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    tiny = size == "tiny"
    specs = {m.label: m for m in MODELS}
    if tiny:  # seconds: a small batch of the smallest model
        specs["resnet20"] = Spec("resnet20", "resnet20", {}, 32, 64000)
    chosen = [specs[x] for x in labels if not args.models or x in args.models]
    peaks = {p: matmul_peak_tflops(device, dt) for p, dt in
             (("bf16", torch.bfloat16), ("fp32", torch.float32))}
    results: list[Result] = []
    for spec in chosen:
        print(f"== {spec.label}", flush=True)
        data = synthetic(n_data, spec.shape)
        _guarded(bench_baseline, "baseline", results, spec, data, device, timing)
        rungs = _rungs(device, spec.label in compiled and not args.no_compile, args.cuda_graphs)
        for rung, flags in (rungs[:2] if tiny else rungs):
            _guarded(bench_fast, rung, results, spec, data, device, flags, timing, rung)
            torch.compiler.reset()  # each configuration compiles from scratch
    kruns: list[Result] = []
    # the K-runs rows use the eager bf16 step with fused SGD: K compilations at once would
    # dominate the bench, and vmap's batched step runs eagerly
    flags = dict(LADDER[2][1])
    for label, ks in kvals.items():
        if args.no_kruns or (args.models and label not in args.models):
            continue
        spec = specs[label]
        print(f"== {label}: K runs at once", flush=True)
        data = synthetic(n_data, spec.shape)
        _guarded(bench_batched, "1 run", kruns, 1, spec, data, device, flags, timing)
        if kruns and kruns[-1].model == label and kruns[-1].seeds == 1:
            kruns[-1].config = "1 run (batched form, K=1)"
        for k in ks:
            _guarded(bench_processes, f"{k} processes", kruns, k, spec, device, flags, timing)
            _guarded(bench_batched, f"{k} batched", kruns, k, spec, data, device, flags,
                     timing)
    return report(results, kruns, chosen, peaks, environment(device, args.load), size, timing)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m convnets.bench")
    p.add_argument("--device", default=None)
    p.add_argument("--size", choices=sorted(SIZES), default=None,
                   help="gpu (default with CUDA), cpu (default without), tiny (tests)")
    p.add_argument("--models", nargs="*", default=[], help="labels (default: the size's)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    p.add_argument("--no-kruns", action="store_true", help="skip the K-runs table")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--windows", type=int, default=None)
    p.add_argument("--load", default=None,
                   help="what else ran on the machine during the bench (goes in the table)")
    p.add_argument("--out", default=None,
                   help="where to write the table (default: paper_tables/bench.md on GPU, "
                        "paper_tables/bench-cpu.md for --size cpu; tiny writes nothing)")
    args = p.parse_args(argv)
    text = run(args)
    print(text)
    out = args.out
    if out is None and args.size != "tiny":
        gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) != "cpu"
        size = args.size or ("gpu" if gpu else "cpu")
        out = REPO_ROOT / "paper_tables" / ("bench.md" if size == "gpu" else "bench-cpu.md")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        print(f"wrote {out}")
    return 0
