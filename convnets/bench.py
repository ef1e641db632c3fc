"""`python -m convnets.bench` (`make bench`): training throughput, side by side.

For each model at its paper's batch size it times

* ``baseline``: the conventional recipe: a torchvision-style CIFAR dataset (uint8 HWC array ->
  PIL -> RandomCrop(32, padding=4) -> RandomHorizontalFlip -> ToTensor -> Normalize) through a
  ``DataLoader`` (num_workers = min(8, cores), pin_memory), eager fp32, plain SGD;
* a ladder that adds one fast-path technique at a time to the trainer's own step
  (``convnets.train.make_step`` and ``epoch_data``, the code real runs use): data resident on the
  device with bulk augmentation and no host sync, then bf16 autocast, channels_last, fused SGD,
  torch.compile, CUDA graphs;
* K concurrent runs (separate processes, each with its own batch of 128): aggregate images/s.

Throughput is the median over timed windows after a warm-up (CUDA events on GPU; compile time
is reported separately), peak memory is ``torch.cuda.max_memory_allocated``. Achieved FLOP/s
counts a training step as 3x the forward MACs x 2, against a measured bf16 matmul peak. On CPU
it runs a tiny version (seconds) so CI exercises the code.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from convnets.complexity import complexity
from convnets.models import build_model, get_entry
from convnets.train import (
    Runtime,
    epoch_data,
    make_step,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

# (label, registered name, options, batch, paper iterations per run)
MODELS = [
    ("resnet20", "resnet20", {}, 128, 64000),
    ("resnet56", "resnet56", {}, 128, 64000),
    ("resnet110", "resnet110", {}, 128, 64000),
    ("resnet164 (full_preact)", "resnet164", {"unit": "full_preact"}, 128, 64000),
    ("DenseNet-BC-100-12", "densenet_bc100_k12", {}, 64, 300 * (50000 // 64)),
    ("DenseNet-BC-100-12 (memory_efficient)", "densenet_bc100_k12",
     {"memory_efficient": True}, 64, 300 * (50000 // 64)),
    ("NiN", "nin", {}, 128, 120 * (50000 // 128)),
]

# cumulative ladder: each rung adds one technique to the previous one
LADDER = [
    ("resident data, bulk aug, no sync (fp32)",
     dict(bf16=False, channels_last=False, fused_sgd=False, compile=None)),
    ("+ bf16 autocast", dict(bf16=True, channels_last=False, fused_sgd=False, compile=None)),
    ("+ channels_last", dict(bf16=True, channels_last=True, fused_sgd=False, compile=None)),
    ("+ fused SGD", dict(bf16=True, channels_last=True, fused_sgd=True, compile=None)),
    ("+ torch.compile", dict(bf16=True, channels_last=True, fused_sgd=True, compile="default")),
    ("+ CUDA graphs", dict(bf16=True, channels_last=True, fused_sgd=True,
                           compile="reduce-overhead")),
]


@dataclass
class Result:
    model: str
    config: str
    batch: int
    images_per_sec: float
    peak_mem_mib: float | None
    compile_s: float | None = None


def synthetic_cifar(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-shaped uint8 data; throughput does not depend on the pixel values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


class _Timer:
    """Wall time of a window: CUDA events on GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            self.a = torch.cuda.Event(enable_timing=True)
            self.b = torch.cuda.Event(enable_timing=True)
            self.a.record()
        else:
            self.t = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self.b.record()
            self.b.synchronize()
            return self.a.elapsed_time(self.b) / 1000.0
        return time.perf_counter() - self.t


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_mem(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device):
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


class CIFARStyle(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does per sample: HWC uint8 -> PIL -> transforms."""

    def __init__(self, x, y, transform):
        self.x = x.permute(0, 2, 3, 1).numpy()  # HWC uint8, as torchvision's CIFAR10 holds it
        self.y = y.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), self.y[i]


def bench_baseline(name, options, batch, data, device, warmup, iters, windows) -> Result:
    """torchvision Dataset + DataLoader, eager fp32: how public reproductions train."""
    import torchvision.transforms as T

    mean = (125.3 / 255, 123.0 / 255, 113.9 / 255)
    std = (63.0 / 255, 62.1 / 255, 66.7 / 255)
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(mean, std)])
    workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    loader = torch.utils.data.DataLoader(
        CIFARStyle(*data, tf), batch_size=batch, shuffle=True, drop_last=True,
        num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = build_model(name, **options).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    _reset_mem(device)
    timer = _Timer(device)

    def batches():
        while True:
            yield from loader

    it = batches()

    def step():
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    rates = []
    for _ in range(windows):
        timer.start()
        for _ in range(iters):
            step()
        rates.append(iters * batch / timer.stop())
    return Result(name, "baseline: DataLoader + eager fp32", batch, statistics.median(rates),
                  _peak(device))


def bench_fast(name, options, batch, data, device, flags, warmup, iters, windows,
               label) -> Result:
    """The trainer's own step and epoch data path, with the given fast-path flags."""
    rt = Runtime(device=device, **flags)
    torch.manual_seed(0)
    model = build_model(name, **options).to(device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    extra = {"fused": True} if rt.fused_sgd else {}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, **extra)
    x_train, y_train = data[0].to(device), data[1].to(device)
    from convnets.data import channel_stats

    m, s = channel_stats(data[0][:5000])
    mean = torch.tensor(m, device=device)
    std = torch.tensor(s, device=device)
    step = make_step(model, opt, rt, mean, std, None)
    gen = torch.Generator().manual_seed(0)
    _reset_mem(device)
    n = (x_train.shape[0] // batch) * batch
    state = {"x": None, "pos": n}

    def one():
        if state["pos"] + batch > n:  # a new epoch: bulk permutation + augmentation
            state["x"], state["y"] = epoch_data(x_train, y_train, n, 4, True, gen)
            state["pos"] = 0
        p = state["pos"]
        loss, wrong = step(state["x"][p : p + batch], state["y"][p : p + batch], 0.1)
        state["pos"] += batch
        return loss

    t0 = time.perf_counter()
    one()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        one()
    _sync(device)
    timer = _Timer(device)
    rates = []
    for _ in range(windows):
        timer.start()
        for _ in range(iters):
            one()
        rates.append(iters * batch / timer.stop())
    return Result(name, label, batch, statistics.median(rates), _peak(device),
                  first if rt.compile else None)


def _concurrent_worker(name, options, batch, flags, warmup, iters, windows, barrier, queue):
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True  # as in the single-run measurements
    data = synthetic_cifar(10000)
    # warm up (and compile) before the barrier, so all K processes time the same window
    res = bench_fast(name, options, batch, data, device, flags, warmup, 1, 1, "warm")
    barrier.wait(timeout=600)
    res = bench_fast(name, options, batch, data, device, flags, 2, iters, windows, "k")
    queue.put(res.images_per_sec)


def bench_concurrent(k, name, options, batch, flags, warmup, iters, windows) -> float:
    """Aggregate images/s of ``k`` processes training at once on one GPU."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_concurrent_worker, daemon=True,
                         args=(name, options, batch, flags, warmup, iters, windows, barrier,
                               queue)) for _ in range(k)]
    for p in procs:
        p.start()
    try:
        rates = [queue.get(timeout=900) for _ in procs]
    finally:
        for p in procs:  # a worker that died must not leave the others waiting
            if p.is_alive():
                p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    return sum(rates)


def matmul_peak_tflops(device: torch.device) -> float | None:
    """Measured bf16 matmul throughput (8192^3), the ceiling for achieved FLOP/s."""
    if device.type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    timer = _Timer(device)
    timer.start()
    reps = 20
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / timer.stop() / 1e12


def environment(device: torch.device) -> dict[str, str]:
    from convnets.tracking import git_info

    commit, dirty = git_info()
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "commit": commit + (" (dirty)" if dirty else ""),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu cores": str(os.cpu_count()),
    }
    if device.type == "cuda":
        try:
            import subprocess

            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except OSError:
            env["driver"] = "unknown"
    return env


def run(args) -> str:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tiny = device.type == "cpu"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    models = [m for m in MODELS if not args.models or m[0] in args.models or m[1] in args.models]
    if tiny:  # CI-sized: one small model, few iterations
        models = [("resnet20", "resnet20", {}, 32, 64000)]
        warmup, iters, windows, n_data = 1, 2, 2, 512
        ladder = LADDER[:1]
    else:
        warmup, iters, windows, n_data = args.warmup, args.iters, args.windows, 50000
        ladder = LADDER if args.ladder == "all" else [LADDER[0], LADDER[-1]]
    data = synthetic_cifar(n_data)
    results: list[Result] = []
    peak = matmul_peak_tflops(device)
    for label, name, options, batch, _ in models:
        print(f"== {label}", flush=True)
        try:
            r = bench_baseline(name, options, batch, data, device, warmup, iters, windows)
            r.model = label
            results.append(r)
            print(f"   {r.config:45s} {r.images_per_sec:10.0f} img/s", flush=True)
        except Exception as err:  # keep going: one failing config must not lose the rest
            print(f"   baseline failed: {err}", flush=True)
        usable = [r_ for r_ in ladder if args.cuda_graphs
                  or r_[1]["compile"] != "reduce-overhead"]
        # the full ladder (with its compilations, 30-90 s each) only where asked; other models
        # get the first rung and the best eager rung (fused SGD), so the whole bench fits in
        # about 5 minutes on one GPU
        eager = [r_ for r_ in usable if not r_[1]["compile"]]
        in_ladder = label in args.ladder_models or name in args.ladder_models
        rungs = usable if (in_ladder or tiny) else [eager[0], eager[-1]]
        for rung, flags in rungs:
            if flags["compile"] and tiny:
                continue
            try:
                r = bench_fast(name, options, batch, data, device, flags, warmup, iters,
                               windows, rung)
                r.model = label
                results.append(r)
                extra = f" (first step {r.compile_s:.1f}s)" if r.compile_s else ""
                print(f"   {rung:45s} {r.images_per_sec:10.0f} img/s{extra}", flush=True)
            except Exception as err:
                print(f"   {rung} failed: {type(err).__name__}: {err}"[:300], flush=True)
            torch.compiler.reset()  # each configuration compiles from scratch
    concurrent = []
    if device.type == "cuda" and args.concurrent:
        label, name, options, batch, _ = MODELS[1]  # resnet56
        # eager fast path by default: K compilations at once would dominate the bench
        flags = dict(LADDER[3][1]) if not args.concurrent_compile else (
            dict(LADDER[-1][1]) if args.cuda_graphs else dict(LADDER[-2][1]))
        for k in args.concurrent:
            try:
                agg = bench_concurrent(k, name, options, batch, flags, warmup, iters, windows)
                concurrent.append((label, k, agg))
                print(f"== {label} K={k}: {agg:.0f} img/s aggregate", flush=True)
            except Exception as err:
                print(f"== K={k} failed: {err}", flush=True)
    return report(results, concurrent, models, peak, environment(device), tiny)


def report(results, concurrent, models, peak, env, tiny) -> str:
    from tabulate import tabulate

    info = {m[0]: m for m in MODELS + models}
    rows = []
    for r in results:
        label, name, options, batch, paper_iters = info[r.model]
        entry = get_entry(name)
        macs = complexity(build_model(name, **options), entry.input_size)["macs"]
        tflops = 3 * 2 * macs * r.images_per_sec / 1e12
        base = next((b.images_per_sec for b in results
                     if b.model == r.model and b.config.startswith("baseline")), None)
        proj_min = paper_iters * batch / r.images_per_sec / 60
        rows.append((
            r.model, r.config, r.batch, f"{r.images_per_sec:,.0f}",
            f"{r.images_per_sec / base:.2f}x" if base else "",
            f"{r.peak_mem_mib:,.0f}" if r.peak_mem_mib is not None else "",
            f"{tflops:.1f}" + (f" ({100 * tflops / peak:.1f}%)" if peak else ""),
            f"{proj_min:,.1f}",
            f"{r.compile_s:.0f}" if r.compile_s else "",
        ))
    lines = ["# Training throughput", ""]
    if tiny:
        lines += ["**CPU tiny run: exercises the code only; not a speed figure.**", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    if peak:
        lines.append(f"- measured bf16 matmul peak (8192^3): {peak:.0f} TFLOP/s")
    lines += [
        "- data: synthetic CIFAR-shaped uint8 (50,000 x 3 x 32 x 32); throughput does not "
        "depend on pixel values",
        "- images/s: median over timed windows after warm-up (CUDA events); peak memory: "
        "torch.cuda.max_memory_allocated; achieved FLOP/s = 3 x 2 x forward MACs x images/s",
        "- projected run = paper schedule (64k iterations for ResNets; 300 epochs of "
        "781 iterations for DenseNet; 120 epochs for NiN) / images/s, evaluation excluded",
        "- ladder rows are cumulative: each adds one technique to the row above",
        "",
        tabulate(rows, headers=["model", "configuration", "batch", "images/s", "vs baseline",
                                "peak MiB", "TFLOP/s (of peak)", "projected run (min)",
                                "first step s"], tablefmt="github"),
    ]
    if concurrent:
        single = {r.model: r.images_per_sec for r in results if r.config == LADDER[3][0]}
        lines += ["", "## Concurrent runs on one GPU (separate processes, batch 128 each)", "",
                  f"Each process runs the '{LADDER[3][0]}' rung (eager; `--concurrent-compile` "
                  "for the compiled step); 'vs one run' compares with that rung above.", ""]
        crow = [(m, k, f"{agg:,.0f}", f"{agg / single[m]:.2f}x" if m in single else "")
                for m, k, agg in concurrent]
        lines.append(tabulate(crow, headers=["model", "K", "aggregate images/s",
                                             "vs one run"], tablefmt="github"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m convnets.bench")
    p.add_argument("--device", default=None)
    p.add_argument("--models", nargs="*", default=[], help="labels or names (default: all)")
    p.add_argument("--ladder", choices=["all", "ends"], default="all")
    p.add_argument("--ladder-models", nargs="*", default=["resnet56", "resnet110"],
                   help="models that get the full ladder incl. compile (others: first rung "
                        "and the best eager rung)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    p.add_argument("--concurrent", nargs="*", type=int, default=[2, 4, 8])
    p.add_argument("--concurrent-compile", action="store_true",
                   help="concurrent runs use the compiled step (default: eager fast path)")
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--out", default=None,
                   help="where to write the table (default on GPU: paper_tables/bench.md; "
                        "on CPU the tiny run only prints, so it never replaces GPU figures)")
    args = p.parse_args(argv)
    text = run(args)
    print(text)
    out = args.out
    if out is None and torch.cuda.is_available() and args.device != "cpu":
        out = REPO_ROOT / "paper_tables" / "bench.md"
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
