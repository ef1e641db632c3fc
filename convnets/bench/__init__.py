"""`python -m convnets.bench` (`make bench`): training throughput, side by side in one run.

Rows, in the order measured:

* the device's matmul peak: a large bf16 and a large fp32 matmul (and TF32 on CUDA), GFLOP/s;
* for each model at its paper's batch size, ``baseline``: the conventional recipe, a
  torchvision-style dataset (uint8 array -> PIL -> per-sample transforms) through a
  ``DataLoader``, eager fp32, plain SGD;
* then the trainer's own step (``convnets.train.make_step`` and ``epoch_data``, the code real
  runs use: data resident on the device, bulk augmentation, no host sync), one technique at a
  time: bf16 autocast, fused SGD, channels_last, torch.compile (inductor), CUDA graphs (GPU),
  other torch thread counts (CPU); every model row gets its achieved FLOP/s and the fraction
  of the matching measured peak;
* K runs of one config at once for resnet56 and resnet110 (K = 2, 4, 8): one run, one seed in
  the batched form, K processes, and K seeds batched into one network (``convnets.multiseed``).

``--size`` picks the scale: ``gpu`` (default with CUDA; writes ``paper_tables/bench-gpu.md``),
``cpu`` (default without; the four CPU models with few steps, writes
``paper_tables/bench-cpu.md``) and ``tiny`` (seconds: tests; writes nothing unless ``--out``).
Each row is written out as soon as it is measured (``convnets.bench.plan``); ``--resume``
measures only the rows an earlier, cut-off run of the same size did not finish.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from convnets.bench.measure import Spec, Timing, bench_baseline, bench_fast, matmul_peak
from convnets.bench.plan import (
    K_FLAGS,
    LADDER,
    Row,
    State,
    data_for,
    execute,
    load_state,
    rerender,
    resume_from,
    write_atomic,
)
from convnets.bench.report import environment, render
from convnets.bench.seeds import bench_batched, bench_processes, if_it_fits
from convnets.names import REPO_ROOT
from convnets.tracking import _git, git_info

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
    # --size tiny only: seconds on a loaded CPU, exercises every code path
    Spec("tiny resnet8 (16x16)", "cifar_resnet", {"depth": 8}, 16, 64000, (3, 16, 16)),
]
CPU_MODELS = ["resnet20", "resnet56", "MNIST Inception", "d2l DenseNet (96x96)"]
K_ALL = (2, 4, 8)




@dataclass
class Size:
    timing: Timing
    models: list[str]
    compiled: list[str]  # models that get the torch.compile rows
    kruns: dict[str, tuple[int, ...]]  # model -> K values
    n_data: int  # synthetic training images per model
    peak_n: int  # matmul size for the peak rows
    peak_s: float  # seconds of matmuls per peak row
    loader_workers: int | None = None  # the baseline's DataLoader workers (None: its default)
    #: CPU: host GiB per seed of the K-runs step (peak RSS of the batched bf16 step at batch
    #: 128, measured on the 2-core Xeon: resnet110 3.1 GiB at K=1, 6.1 at K=2); rows that
    #: would not fit in MemAvailable fail at once instead of getting the bench OOM-killed
    seed_gib: dict[str, float] = dataclasses.field(default_factory=dict)


SIZES = {
    "gpu": Size(Timing(15, 30, 5), [m.label for m in MODELS[:-1]], ["resnet56", "resnet110"],
                {"resnet56": K_ALL, "resnet110": K_ALL}, 50000, 8192, 2.0),
    "cpu": Size(Timing(2, 3, 3), CPU_MODELS, CPU_MODELS,
                {"resnet56": K_ALL, "resnet110": K_ALL}, 4096, 4096, 3.0,
                seed_gib={"resnet56": 1.6, "resnet110": 3.1}),
    "tiny": Size(Timing(0, 1, 1), ["tiny resnet8 (16x16)"], [],
                 {"tiny resnet8 (16x16)": (2,)}, 64, 128, 0.01, loader_workers=0),
}


def _rungs(device, compiled: bool, cuda_graphs: bool, tiny: bool, threads: list[int]):
    """The ladder rows this device and model get (compile rows cost 30-120 s each on CPU)."""
    out = []
    for label, f in LADDER:
        if f["compile"] == "reduce-overhead" and not (device.type == "cuda" and cuda_graphs):
            continue
        if f["compile"] and not compiled:
            continue
        out.append((label, f))
    if tiny:
        out = out[:2]
    if device.type == "cpu":  # thread settings: the bf16 + fused SGD step at other counts
        cores = os.cpu_count() or 1
        for n in threads or sorted({1, cores // 2, cores} - {0, torch.get_num_threads()}):
            out.append((f"trainer: bf16, fused SGD, {n} thread{'s' * (n > 1)}",
                        dict(K_FLAGS, threads=n)))
    return out


def _peak_rows(device, size: Size) -> list[Row]:
    precisions = ["bf16", "fp32"] + (["tf32"] if device.type == "cuda" else [])
    return [Row("peak", f"matmul {size.peak_n}x{size.peak_n}", p,
                functools.partial(matmul_peak, device, p, size.peak_n, size.peak_s))
            for p in precisions]


def _krun_rows(spec: Spec, ks, data, device, t: Timing, gib: float | None) -> list[Row]:
    f = K_FLAGS
    gib = gib if device.type == "cpu" else None
    rows = [Row("kruns", spec.label, "1 run (trainer step)",
                functools.partial(bench_fast, spec, data, device, f, t, "1 run"), spec),
            Row("kruns", spec.label, "1 seed batched (vmap, K=1)",
                functools.partial(bench_batched, 1, spec, data, device, f, t), spec)]
    for k in ks:
        rows += [Row("kruns", spec.label, f"{k} processes",
                     if_it_fits(functools.partial(bench_processes, k, spec, device, f, t),
                                k, gib), spec),
                 Row("kruns", spec.label, f"{k} seeds batched (vmap)",
                     if_it_fits(functools.partial(bench_batched, k, spec, data, device, f, t),
                                k, gib), spec)]
    return rows


def plan_rows(args, device, size: Size) -> tuple[list[Row], list[Spec]]:
    """Every row of this bench, in the order measured, and the models they use."""
    t = size.timing
    specs = {m.label: m for m in MODELS}
    wanted = [x for x in size.models if not args.models or x in args.models]
    tiny = args.size == "tiny"
    rows = _peak_rows(device, size)
    for spec in (specs[x] for x in wanted):
        data = data_for(size.n_data, spec.shape)
        rows.append(Row("model", spec.label, "baseline: DataLoader + eager fp32",
                        functools.partial(bench_baseline, spec, data, device, t,
                                          size.loader_workers), spec))
        compiled = spec.label in size.compiled and not args.no_compile
        for label, flags in _rungs(device, compiled, args.cuda_graphs, tiny, args.threads):
            rows.append(Row("model", spec.label, label, functools.partial(
                bench_fast, spec, data, device, flags, t, label), spec))
    for label, ks in ({} if args.no_kruns else size.kruns).items():
        if args.models and label not in args.models:
            continue
        ks = tuple(k for k in ks if not args.k or k in args.k)
        spec = specs[label]
        rows += _krun_rows(spec, ks, data_for(size.n_data, spec.shape), device, t,
                           size.seed_gib.get(label))
    used = {r.model for r in rows}
    return rows, [s for s in MODELS if s.label in used]


def default_out(device: torch.device, size: str) -> Path | None:
    """paper_tables/bench-cpu.md on CPU, bench-gpu.md on CUDA; the tiny size writes nothing."""
    if size == "tiny":
        return None
    return REPO_ROOT / "paper_tables" / f"bench-{'gpu' if device.type == 'cuda' else 'cpu'}.md"


#: the code that renders a bench table from its rows (the defaults come from the runtime)
RENDER_CODE = ("convnets/bench", "convnets/runtime.py")


def _code_commit(out: Path) -> str:
    """The last commit that changed the rendering code (``RENDER_CODE``), so rendering again
    at a later commit rewrites the same table; "(dirty)" if that code has uncommitted edits."""
    try:
        commit = _git("log", "-1", "--format=%H", "--", *RENDER_CODE).strip()
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--",
                          *RENDER_CODE).strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = git_info()
    return (commit or "unknown") + (" (dirty)" if dirty else "")


def run(args) -> State:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.size = args.size or ("gpu" if device.type == "cuda" else "cpu")
    size = SIZES[args.size]
    given = {"warmup": args.warmup, "iters": args.iters, "windows": args.windows}
    timing = dataclasses.replace(size.timing, **{k: v for k, v in given.items() if v is not None})
    size = dataclasses.replace(size, timing=timing)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows, specs = plan_rows(args, device, size)
    out = Path(args.out) if args.out else default_out(device, args.size)
    state = State(environment(device, args.load), args.size, asdict(size.timing),
                  [r.key for r in rows])
    if args.render:
        state = rerender(state, load_state(out) if out else None, _code_commit(out))
        write_atomic(out, render(state, specs={s.label: s for s in MODELS}))
        print(f"rendered {out} again from its stored rows (nothing measured)")
        return state
    if args.resume:
        resume_from(state, load_state(out) if out else None)
    by_label = {s.label: s for s in specs}
    state = execute(rows, state, functools.partial(render, specs=by_label), out)
    if out:
        print(f"wrote {out}")
    return state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m convnets.bench")
    p.add_argument("--device", default=None)
    p.add_argument("--size", choices=sorted(SIZES), default=None,
                   help="gpu (default with CUDA), cpu (default without), tiny (tests)")
    p.add_argument("--models", nargs="*", default=[], help="labels (default: the size's)")
    p.add_argument("--k", type=int, nargs="*", default=[], help="K values (default: 2 4 8)")
    p.add_argument("--threads", type=int, nargs="*", default=[],
                   help="thread counts for the CPU thread rows (default: 1, cores/2 and "
                        "cores, less the current torch.get_num_threads())")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    p.add_argument("--no-kruns", action="store_true", help="skip the K-runs rows")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--windows", type=int, default=None)
    p.add_argument("--resume", action="store_true",
                   help="keep the rows the output already holds (same device, size and "
                        "timing) and measure the rest")
    p.add_argument("--render", action="store_true",
                   help="rewrite the output from the rows it stores, with this code's tables "
                        "(e.g. after a change to the defaults); measures nothing")
    p.add_argument("--load", default=None,
                   help="what else ran on the machine during the bench (goes in the table)")
    p.add_argument("--out", default=None,
                   help="the table (default: paper_tables/bench-gpu.md with CUDA, "
                        "paper_tables/bench-cpu.md on CPU; --size tiny writes nothing)")
    args = p.parse_args(argv)
    state = run(args)
    if not args.render:
        print(render(state, specs={s.label: s for s in MODELS}), end="")
    return 0
