"""Timing of one training configuration: the conventional baseline and the trainer's own step."""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from convnets.complexity import registered_complexity
from convnets.data import channel_stats
from convnets.device_data import epoch_data
from convnets.models import build_model
from convnets.runtime import Runtime
from convnets.train import make_step

# torchvision is imported only by the baseline (per-sample transform) rows: it takes seconds to
# import and the project's own rows do not use it.


@dataclass
class Spec:
    """A benchmarked model: label, registered name, options, batch and paper schedule."""

    label: str
    name: str
    options: dict
    batch: int
    paper_iters: int
    shape: tuple[int, int, int] = (3, 32, 32)  # stored image shape (uint8)
    augment: bool = True  # pad-4 crop + flip (the CIFAR papers); off for the MNIST nets
    normalize: bool = True  # per-channel standardisation; False: ToTensor's [0, 1]
    resize: int | None = None  # bilinear upsampling in the step (d2l: 28 -> 96)


@dataclass
class Result:
    model: str
    config: str
    batch: int
    images_per_sec: float
    peak_mem_mib: float | None
    compile_s: float | None = None
    precision: str = "fp32"
    seeds: int = 1  # models trained per step (batched seeds or processes)
    flops_per_image: float | None = None  # training FLOPs of one image (3 x forward)


@dataclass
class Peak:
    """A measured square-matmul rate: the ceiling that achieved FLOP/s is compared with."""

    precision: str
    n: int
    gflops: float


@dataclass
class Timing:
    warmup: int
    iters: int
    windows: int


def synthetic(n: int, shape=(3, 32, 32), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images of ``shape``; throughput does not depend on the pixel values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, 10, (n,), generator=g)


class Timer:
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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_mem(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mem(device):
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def time_windows(one, images: int, device, t: Timing) -> tuple[float, float]:
    """(first-call seconds, median images/s over ``t.windows`` windows of ``t.iters`` calls)."""
    t0 = time.perf_counter()
    one()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(t.warmup):
        one()
    sync(device)
    timer = Timer(device)
    rates = []
    for _ in range(t.windows):
        timer.start()
        for _ in range(t.iters):
            one()
        rates.append(t.iters * images / timer.stop())
    return first, statistics.median(rates)


class SampleDataset(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 / MNIST do per sample: uint8 array -> PIL -> transforms."""

    def __init__(self, x, y, transform):
        # HWC (CIFAR) or HW (MNIST) uint8, as torchvision holds them
        self.x = x.permute(0, 2, 3, 1).numpy() if x.shape[1] == 3 else x[:, 0].numpy()
        self.y = y.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.x[i])), self.y[i]


def baseline_transform(spec: Spec, data):
    """The per-sample torchvision pipeline public reproductions use for this model."""
    import torchvision.transforms as T

    tf = []
    if spec.resize:
        tf.append(T.Resize(spec.resize))  # d2l's load_data_fashion_mnist(resize=96)
    if spec.augment:
        tf += [T.RandomCrop(spec.shape[-1], padding=4), T.RandomHorizontalFlip()]
    tf.append(T.ToTensor())
    if spec.normalize:
        m, s = channel_stats(data[0][:5000])
        tf.append(T.Normalize([v / 255 for v in m], [v / 255 for v in s]))
    return T.Compose(tf)


def bench_baseline(spec: Spec, data, device, t: Timing, workers: int | None = None) -> Result:
    """torchvision Dataset + DataLoader, eager fp32, plain SGD: how public reproductions train.

    ``workers``: loader processes; default 2 (the tutorials' usual setting) on CPU, up to 8 on a
    GPU host."""
    if workers is None:
        workers = min(8 if device.type == "cuda" else 2, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(
        SampleDataset(*data, baseline_transform(spec, data)), batch_size=spec.batch,
        shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = build_model(spec.name, **spec.options).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    reset_mem(device)

    def batches():
        while True:
            yield from loader

    it = batches()

    def one():
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    _, rate = time_windows(one, spec.batch, device, t)
    return Result(spec.label, "baseline: DataLoader + eager fp32", spec.batch, rate,
                  peak_mem(device))


def device_stats(spec: Spec, data, device):
    """(uint8 images on the device, labels, mean, std) as the trainer holds them."""
    x, y = data[0].to(device), data[1].to(device)
    if not spec.normalize:
        return x, y, None, None
    m, s = channel_stats(data[0][:5000])
    return x, y, torch.tensor(m, device=device), torch.tensor(s, device=device)


def bench_fast(spec: Spec, data, device, flags: dict, t: Timing, label: str) -> Result:
    """The trainer's own step (``make_step``) and epoch data path, with the given flags.

    ``flags`` may hold ``threads``: the torch intra-op thread count for this row (restored
    afterwards); the other keys are ``convnets.train.Runtime``'s."""
    flags = dict(flags)
    threads = flags.pop("threads", None)
    if not threads:
        return _bench_fast(spec, data, device, flags, t, label)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _bench_fast(spec, data, device, flags, t, label)
    finally:
        torch.set_num_threads(before)


def _bench_fast(spec: Spec, data, device, flags: dict, t: Timing, label: str) -> Result:
    rt = Runtime(device=device, **flags)
    torch.manual_seed(0)
    model = build_model(spec.name, **spec.options).to(device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    extra = {"fused": True} if rt.fused_sgd else {}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, **extra)
    x_train, y_train, mean, std = device_stats(spec, data, device)
    step = make_step(model, opt, rt, mean, std, spec.resize)
    gen = torch.Generator().manual_seed(0)
    reset_mem(device)
    batch = spec.batch
    n = (x_train.shape[0] // batch) * batch
    state = {"x": None, "pos": n}

    def one():
        if state["pos"] + batch > n:  # a new epoch: bulk permutation + augmentation
            state["x"], state["y"] = epoch_data(x_train, y_train, n, 4, spec.augment, gen)
            state["pos"] = 0
        p = state["pos"]
        step(state["x"][p : p + batch], state["y"][p : p + batch], 0.1)
        state["pos"] += batch

    first, rate = time_windows(one, batch, device, t)
    return Result(spec.label, label, batch, rate, peak_mem(device),
                  first if rt.compile else None, rt.precision)


PEAK_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "tf32": torch.float32}


def matmul_peak(device: torch.device, precision: str, n: int, min_s: float) -> Peak:
    """Measured ``n`` x ``n`` matmul GFLOP/s: the best of 3 windows of >= ``min_s`` / 3 each.

    Compute bound at the sizes the bench uses (4096 on CPU, 8192 on GPU): 2n^3 FLOPs over
    3n^2 elements moved is 2n/3 FLOPs per element, over a thousand. ``tf32`` is fp32 inputs
    with TF32 tensor-core matmuls allowed (CUDA; cuDNN convolutions allow TF32 by default)."""
    dtype = PEAK_DTYPES[precision]
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        c = a @ b  # warm-up (kernel choice, page faults)
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        sync(device)
        reps = max(1, math.ceil(min_s / 3 / max(time.perf_counter() - t0, 1e-9)))
        timer, best = Timer(device), 0.0
        for _ in range(3):
            timer.start()
            for _ in range(reps):
                torch.mm(a, b, out=c)
            best = max(best, 2 * n**3 * reps / timer.stop() / 1e9)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    return Peak(precision, n, best)


def train_flops(spec: Spec) -> float:
    """Training FLOPs of one image: 2 x forward MACs (``convnets.complexity``), x3 for the
    forward and the backward pass (input and weight gradients each cost about a forward).
    The image is the one the network sees: the stored shape, or ``resize`` (d2l: 96x96)."""
    shape = (spec.shape[0], spec.resize, spec.resize) if spec.resize else spec.shape
    return 3 * 2 * registered_complexity(spec.name, spec.options, shape)["macs"]
