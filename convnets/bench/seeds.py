"""K runs of one config at once: K processes, or K seeds batched into one network."""

from __future__ import annotations

import multiprocessing as mp

import torch

from convnets.bench.measure import (
    Result,
    Spec,
    Timing,
    bench_fast,
    device_stats,
    peak_mem,
    reset_mem,
    synthetic,
    time_windows,
)
from convnets.config import DEFAULTS
from convnets.device_data import epoch_data
from convnets.models import build_model
from convnets.multiseed import SeedStack
from convnets.runtime import Runtime, precision_name, thread_share


def _worker(spec, device, flags, t, threads, barrier, queue):
    if threads:  # K processes share the CPU's cores instead of each taking all of them
        torch.set_num_threads(threads)
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as in the single-run measurements
    data = synthetic(max(4 * spec.batch, 2048), spec.shape)
    # warm up (and compile) before the barrier, so all K processes time the same window
    bench_fast(spec, data, device, flags, Timing(t.warmup, 1, 1), "warm")
    barrier.wait(timeout=600)
    queue.put(bench_fast(spec, data, device, flags, Timing(1, t.iters, t.windows),
                         "k").images_per_sec)


def bench_processes(k: int, spec: Spec, device, flags: dict, t: Timing) -> Result:
    """Aggregate images/s of ``k`` processes training at once on one device."""
    # forkserver: one server process imports torch and this module once (no CUDA, no OpenMP
    # pool in it, so forking it is safe), and every worker of every row forks from it instead
    # of re-importing torch: K=8 spawned interpreters cost ~30 CPU-seconds per row on 2 cores
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["convnets.bench.seeds"])
    barrier, queue = ctx.Barrier(k), ctx.Queue()
    threads = thread_share(k) if device.type == "cpu" else 0
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(spec, str(device), flags, t, threads, barrier, queue))
             for _ in range(k)]
    for p in procs:
        p.start()
    try:
        rates = [queue.get(timeout=900) for _ in procs]
    finally:
        for p in procs:  # a worker that died must not leave the others waiting
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    return Result(spec.label, f"{k} processes", spec.batch, sum(rates), None,
                  precision=precision_name(flags["bf16"]), seeds=k)


def bench_batched(k: int, spec: Spec, data, device, flags: dict, t: Timing) -> Result:
    """``k`` seeds in one vmap-ed network (``convnets.multiseed``), batch ``spec.batch`` each."""
    rt = Runtime(device=device, **dict(flags, channels_last=False, compile=None))
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(build_model(spec.name, **spec.options).to(device))
    x_train, y_train, mean, std = device_stats(spec, data, device)
    cfg = {"optim": DEFAULTS["optim"], "data": {"resize": spec.resize}}  # He et al.'s SGD
    stack = SeedStack(models, cfg, rt, mean, std)
    gens = [torch.Generator().manual_seed(s) for s in range(k)]
    reset_mem(device)
    batch = spec.batch
    n = (x_train.shape[0] // batch) * batch
    state = {"pos": n}

    def one():
        if state["pos"] + batch > n:  # every seed its own permutation and augmentation
            xs, ys = zip(*[epoch_data(x_train, y_train, n, 4, spec.augment, g) for g in gens],
                         strict=True)
            state["x"], state["y"], state["pos"] = torch.stack(xs), torch.stack(ys), 0
        p = state["pos"]
        stack.step(state["x"][:, p : p + batch], state["y"][:, p : p + batch], 0.1)
        state["pos"] += batch

    _, rate = time_windows(one, k * batch, device, t)
    return Result(spec.label, f"{k} seeds batched (vmap)", batch, rate, peak_mem(device),
                  precision=rt.precision, seeds=k)


def mem_available_gib() -> float | None:
    """MemAvailable of /proc/meminfo (Linux), GiB; None where unknown."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def if_it_fits(fn, k: int, gib_per_seed: float | None):
    """``fn`` behind a host-memory check: K seeds of a CPU step that cannot fit in RAM would
    get the bench OOM-killed (and a --resume would retry them); such a row fails at once, with
    the estimate, and is listed as failed. ``gib_per_seed`` is measured (peak RSS per seed)."""

    def run():
        free = mem_available_gib()
        if gib_per_seed and free is not None and k * gib_per_seed > 0.9 * free:
            raise MemoryError(f"needs about {k * gib_per_seed:.0f} GiB for {k} seeds "
                              f"({gib_per_seed} GiB each), {free:.0f} GiB available")
        return fn()

    return run

