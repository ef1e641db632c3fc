"""How a run executes, never what it trains: the device, precision, compile mode and the other
fast-path switches (``Runtime``), seeding, and the processes of a data-parallel run (``World``).

Imports torch and ``convnets.config`` only; nothing here may import the trainer, the models or
``convnets.distributed`` (which builds on this module).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from convnets.config import COMPILE_MODES, ConfigError

#: what ``compile: auto`` means on CUDA: eager until `make bench` on a GPU shows compile pays
AUTO_COMPILE_CUDA: str | None = None
#: CPU, ``compile: auto``: inductor compiles the step of a run of at least this many
#: iterations (see ``auto_switches``), eager below it (tests, smoke and quick runs)
AUTO_COMPILE_CPU_MIN_ITERATIONS = 8000
#: CPU, ``compile: auto``: the model families whose step `make bench` measured faster
#: compiled (see ``auto_switches``); the others stay eager
CPU_COMPILE_FAMILIES = frozenset({"cifar-resnet"})
#: CPU, ``channels_last: auto``: the models whose step `make bench` measured faster in
#: channels_last (see ``auto_switches``); every other model runs NCHW
CPU_CHANNELS_LAST_MODELS = frozenset({"mnist_inception", "d2l_densenet"})
#: ``data_seed`` multiplies the run seed by this prime (the 1000th) and adds ``DATA_SEED_OFFSET``,
#: so the data-order generator of run s never starts where that of a nearby run does. Changing
#: either changes every run's data order (and so its results): they are fixed.
DATA_SEED_PRIME = 7919
DATA_SEED_OFFSET = 17


def precision_name(bf16: bool) -> str:
    """The precision as runs record it: ``bf16`` (autocast) or ``fp32``; the one place the
    string is formed."""
    return "bf16" if bf16 else "fp32"


def resolved_precision(rt: dict) -> str:
    """``fp32`` or ``bf16``: what ``runtime.precision`` means on the device it resolves to."""
    if rt["precision"] != "auto":
        return rt["precision"]
    dev = rt["device"]
    cuda = (dev == "auto" and torch.cuda.is_available()) or str(dev).startswith("cuda")
    if cuda:
        return precision_name(cuda_has_bf16("cuda" if dev == "auto" else dev))
    return precision_name(cpu_has_bf16())


def cuda_has_bf16(device: str | torch.device) -> bool:
    """Whether a CUDA device has bf16 tensor cores (compute capability 8.0, Ampere, or newer):
    a V100 (7.0) or a T4 (7.5) emulates bf16, slower than fp32, so ``auto`` picks fp32 there
    (fp16 would need a gradient scaler, a recipe of its own)."""
    return torch.cuda.get_device_capability(torch.device(device))[0] >= 8


def check_precision(rt: dict, device: torch.device | str) -> None:
    """Refuse ``precision: bf16`` on a CPU without native bf16 unless ``allow_slow_bf16``:
    there autocast is emulated, 6-7x slower than fp32 (docs/measurements.md), and ``auto``
    would have chosen fp32."""
    if (rt["precision"] == "bf16" and torch.device(device).type == "cpu"
            and not rt.get("allow_slow_bf16") and not cpu_has_bf16()):
        raise ConfigError(
            "'runtime.precision' is bf16, but this CPU has no native bf16 (no AVX512-BF16 or "
            "AMX): bf16 autocast is emulated here, 6-7x slower than fp32. Use precision auto "
            "(fp32 here; the precision is outside the config hash, so the seeds still pool) "
            "or set runtime.allow_slow_bf16=true to run it anyway")


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels here (AVX512-BF16 / AMX): only then does bf16
    autocast pay on CPU; emulated bf16 is slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class Runtime:
    """The resolved ``runtime`` switches of a run (``resolve_runtime``)."""

    device: torch.device
    bf16: bool
    channels_last: bool
    compile: str | None  # None (eager) or a torch.compile mode
    fused_sgd: bool
    #: ``compile`` came from ``compile: auto``: a step that fails to compile falls back to
    #: eager with a warning instead of ending the run (an explicit compile request fails)
    compile_auto: bool = False

    @property
    def precision(self) -> str:
        """What the run's arithmetic is, as runs record it: ``bf16`` (autocast) or ``fp32``."""
        return precision_name(self.bf16)

    @property
    def autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=False)


def auto_switches(cuda: bool, model: str | None = None, iterations: int | None = None,
                  family: str | None = None) -> dict:
    """What ``auto`` means for ``channels_last``, ``fused_sgd`` and ``compile`` (a mode or
    None) on this kind of device, for a run of ``model`` (its registry name; ``family``, its
    registry family) lasting ``iterations`` steps. None for any of them: not known, and the
    choice is then the one that is right without it.

    The CPU choices follow what `make bench` measured, the trainer's step side by side in one
    run (the figures: ``paper_tables/bench-cpu.md``, ``paper_tables/bench-cpu-xeon.md``; the
    ones measured outside the bench: ``docs/measurements.md``):

    * fused SGD: on (faster or level against the foreach SGD in 6 of 8 model-machine pairs;
      it changes only the order of floating-point operations, tests/test_fastpath.py).
    * channels_last: only for ``CPU_CHANNELS_LAST_MODELS`` (the MNIST Inception net and the
      d2l DenseNet gain; the CIFAR ResNets' 16-64 channels favour oneDNN's blocked NCHW path);
      models the bench does not measure stay NCHW.
    * compile (inductor, default mode): the CIFAR ResNet family (``CPU_COMPILE_FAMILIES``)
      in runs of at least ``AUTO_COMPILE_CPU_MIN_ITERATIONS`` steps (4x the longer payback
      measured, so compilation costs at most a quarter of what it saves); every other run,
      and runs of unknown length, stay eager. Where compiling was slower (an AVX2-only EPYC)
      ``auto`` is only a candidate: ``convnets.train.CompileTrial`` times both on the machine
      that runs and keeps the faster.

    CUDA: channels_last and fused SGD on (the usual Tensor Core layout and the fused
    kernel); compile ``AUTO_COMPILE_CUDA`` until a GPU bench decides.
    """
    if cuda:
        return {"channels_last": True, "fused_sgd": True, "compile": AUTO_COMPILE_CUDA}
    long_run = iterations is not None and iterations >= AUTO_COMPILE_CPU_MIN_ITERATIONS
    compiles = long_run and family in CPU_COMPILE_FAMILIES
    return {"channels_last": model in CPU_CHANNELS_LAST_MODELS, "fused_sgd": True,
            "compile": "default" if compiles else None}


def resolve_device(rt: dict) -> torch.device:
    """The ``runtime.device`` of config ``rt`` on this machine (``auto``: CUDA when visible)."""
    dev = rt["device"]
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"'runtime.device' is {dev!r} but no CUDA device is visible")
    return device


def resolve_runtime(rt: dict, model: str | None = None, iterations: int | None = None,
                    family: str | None = None) -> Runtime:
    """The ``runtime`` config resolved for this machine; ``auto`` switches as ``auto_switches``
    decides for ``model`` (a registry name, of registry ``family``) trained for
    ``iterations`` steps."""
    device = resolve_device(rt)
    cuda = device.type == "cuda"
    auto = auto_switches(cuda, model, iterations, family)

    def flag(key: str) -> bool:
        v = rt[key]
        return auto[key] if v == "auto" else bool(v)

    # bf16 autocast where the CPU has it natively (faster in every bench row); `precision:
    # fp32` stays available: the deterministic mode in which resume is bitwise on every CPU
    check_precision(rt, device)
    bf16 = resolved_precision(dict(rt, device=str(device))) == "bf16"
    comp = rt["compile"]
    if comp == "auto":
        comp = auto["compile"]
    elif comp is True:
        comp = "default"
    elif comp is False or comp is None:
        comp = None
    elif comp not in COMPILE_MODES:
        raise ConfigError(f"'runtime.compile' must be auto, true, false or one of {COMPILE_MODES}")
    set_cuda_math(cuda, bf16, rt)
    det = rt["deterministic"]
    if not cuda and ((det == "auto") or bool(det)):
        torch.use_deterministic_algorithms(True, warn_only=True)
    return Runtime(device=device, bf16=bf16, channels_last=flag("channels_last"), compile=comp,
                   fused_sgd=flag("fused_sgd"),
                   compile_auto=rt["compile"] == "auto" and comp is not None)


def set_cuda_math(cuda: bool, bf16: bool, rt: dict) -> None:
    """The CUDA backends' global switches for a run, so that what it records is what ran:

    * fp32 is fp32: TF32 convolutions and matmuls (cuDNN's default on Ampere and newer) are
      turned off in an fp32 run, on in a bf16 one (its fp32 parts are not the point there);
    * ``deterministic: true`` is deterministic: cuDNN's benchmark off and its deterministic
      algorithms on, ``CUBLAS_WORKSPACE_CONFIG`` set (cuBLAS reads it when it starts, so a
      value set by the user is kept), and torch's deterministic algorithms enforced (an op
      without one raises instead of warning). ``auto`` on CUDA means not deterministic, with
      ``cudnn_benchmark`` as set."""
    if not cuda:
        return
    torch.backends.cuda.matmul.allow_tf32 = bf16
    torch.backends.cudnn.allow_tf32 = bf16
    if rt["deterministic"] is True:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)
    else:
        torch.backends.cudnn.benchmark = bool(rt["cudnn_benchmark"])


def thread_share(k: int) -> int:
    """torch threads for each of ``k`` processes sharing this machine's cores (at least 1)."""
    return max(1, (os.cpu_count() or 1) // k)


def device_name(device: torch.device) -> str:
    """The GPU's model name, or ``cpu``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model initialisation)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def data_seed(seed: int) -> int:
    """Seed of the CPU generator that draws permutations and augmentation for run ``seed``."""
    return seed * DATA_SEED_PRIME + DATA_SEED_OFFSET


# ---------------------------------------------------------------------------------------------
# The processes of one run
# ---------------------------------------------------------------------------------------------


def rank() -> int:
    """This process's rank in the initialised process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the initialised process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@dataclass(frozen=True)
class World:
    """The ``size`` processes that train one run together, seen from the one of rank ``rank``.

    ``fit`` trains through it: every rank draws the whole epoch from the same seeded generator
    and trains on its own contiguous ``per_rank`` slice of each global batch (rank r of step s:
    samples ``[s*B + r*B/K, s*B + (r+1)*B/K)``); the epoch's totals are summed over ranks; only
    the main rank evaluates, logs, shows progress and writes checkpoints. ``World()`` is one
    process, where all of this is the identity.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the GPU of this rank on its node (``$LOCAL_RANK``)

    @classmethod
    def current(cls) -> World:
        """This process's place in the initialised process group (``World()`` without one)."""
        r, k = rank(), world_size()
        return cls(r, k, int(os.environ.get("LOCAL_RANK", r))) if k > 1 else cls()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def per_rank(self, cfg: dict, deadline: float | None = None) -> int:
        """Images per step on this rank; refuses what K processes cannot train as one does.
        With ``bn_group`` the ranks' batch norm is not synchronised (``convnets.train``): each
        normalises groups of its own images, rank 0's keep the running statistics (DDP
        broadcasts its buffers), which is what one process with ghost batch norm does."""
        batch = cfg["batch_size"]
        if self.size == 1:
            return batch
        if batch % self.size:
            raise ConfigError(f"'batch_size' {batch} (the global batch) is not divisible by the "
                              f"{self.size} processes")
        per = batch // self.size
        group = cfg["bn_group"]
        if group is not None and per % group:
            # each process normalises its own images (no synchronised BN): the groups must
            # tile them; bn_group = the per-process batch is the paper's 2-GPU setting
            raise ConfigError(f"'bn_group' {group} with {self.size} processes of {per} images: "
                              f"each process normalises its own {per}, so bn_group must divide "
                              f"{per} (bn_group {per}: each process one group, as the paper's "
                              "GPUs without synchronised batch norm)")
        if cfg["schedule"]["warmup_until_error"] is not None:  # not implemented across ranks
            raise ConfigError("'schedule.warmup_until_error' is not supported by DDP runs (got "
                              f"{cfg['schedule']['warmup_until_error']!r}); run it in one process")
        if deadline is not None:  # ranks reading their own clocks could stop at different steps
            raise ConfigError("a deadline is not supported by DDP runs")
        return per

    def place(self, rt: dict) -> dict:
        """``runtime`` config for this rank: its own GPU (``cuda:LOCAL_RANK``) under CUDA."""
        if self.size == 1 or not torch.cuda.is_available():
            return rt
        return dict(rt, device=f"cuda:{self.local_rank}")

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (in place)."""
        if self.size > 1:
            dist.all_reduce(t)
        return t

    def info(self, per_rank: int) -> dict:
        """What a result records about the processes ({} for one)."""
        return {} if self.size == 1 else {"world_size": self.size, "per_rank_batch": per_rank}
