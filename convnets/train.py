"""One training run: data on the device, the papers' SGD and step schedule, checkpoints.

``fit(config)`` knows nothing of spec files or MLflow: it takes a resolved config dict and an
optional logger (see ``convnets.tracking.RunLogger``), and returns the run's results. The same
code runs on CPU and GPU; the fast-path switches (``runtime.*``) never change what is trained.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import pickle
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from convnets.augment import crop_flip, draw_crop_flip, to_float
from convnets.data import (
    channel_stats,
    data_identity,
    load_dataset,
    pixel_mean,
    stratified_split,
)
from convnets.models import build_model
from convnets.models.common import use_ghost_batchnorm

# ---------------------------------------------------------------------------------------------
# Config: every key documented; `resolve_config` fills defaults and rejects unknown keys.
# ---------------------------------------------------------------------------------------------

DEFAULTS: dict[str, Any] = {
    "model": {
        "name": None,  # registered model name (convnets.list_models())
        "options": {},  # keyword options of the builder (unit=, shortcut=, head=, ...)
    },
    "data": {
        "name": "cifar10",  # cifar10 | cifar100 | fashion_mnist | mnist | imagefolder:PATH | synthetic
        "data_dir": None,  # None: $CONVNETS_DATA or ~/.cache/convnets/data
        "options": {},  # dataset options (synthetic sizes, imagefolder label)
        "val_size": 0,  # >0: hold out a stratified validation split and never touch the test set
        "split_seed": 0,  # the split is fixed across runs and seeds
        "augment": True,  # pad 4 + random crop + horizontal flip (He et al. 2015, Sec. 4.2)
        "pad": 4,
        # "channel" (or True): per-channel mean/std of the training split (DenseNet, Sec. 4.2);
        # "pixel": subtract the training split's per-pixel mean image, no std (He et al. 2015,
        # Sec. 4.2), on the 0-255 scale; False: scale to [0, 1]
        "normalize": "channel",
        # padding colour of the crop: "mean" pads with what normalises to exactly 0 (the
        # reference code normalises, then zero-pads); "zero": black uint8 padding (old runs)
        "pad_fill": "mean",
        "resize": None,  # int: bilinear upsampling to resize x resize (d2l Fashion-MNIST: 96)
    },
    "optim": {
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        # [[parameter-name prefix, lr multiplier], ...]: per-layer learning rates (NiN's
        # cifar-10_params: epsW 0.1 for cccp6 against 1 elsewhere); first matching prefix wins
        "lr_mult": [],
        "bias_lr_mult": 1.0,  # multiplier on the lr of 1-D parameters (NiN: epsB / epsW = 2)
        "bias_decay": True,  # weight decay on 1-D parameters too; False: none (cuda-convnet)
        # False: 1-D parameters keep lr * bias_lr_mult through the schedule's drops and
        # warm-up (NiN's README lowers epsW only: "changing all the epsW to one tenth")
        "bias_lr_schedule": True,
    },
    "schedule": {
        "unit": "iterations",  # iterations | epochs (the unit of `length`)
        "length": 64000,  # He et al. 2015: stop at 64k iterations
        "drops": [0.5, 0.75],  # lr /10 at these fractions of length (32k, 48k of 64k)
        "gamma": 0.1,
        "warmup_iterations": 0,  # Identity Mappings: 400 iterations at lr 0.01
        "warmup_lr": 0.01,
        # He et al. 2015 Sec. 4.2 (ResNet-110): warm "until the training error is below 80%".
        # A number E (80): stay at warmup_lr until the running training error over the last
        # warmup_window batches is below E %, with warmup_iterations as the cap. None: warm-up
        # is a fixed warmup_iterations (Identity Mappings appendix: 400 in all CIFAR runs).
        "warmup_until_error": None,
        "warmup_window": 20,  # batches in the running training error of the rule above
    },
    # BN statistics over groups of this many images of each batch ("ghost" BN): He et al.
    # 2015 and IM trained 128 images on 2 GPUs, 64 each. None: the whole batch.
    "bn_group": None,
    "batch_size": 128,
    "eval_batch_size": 1000,
    "eval_every": 1,  # epochs between evaluations (the last epoch is always evaluated)
    "seed": 0,
    "runtime": {  # how, not what: excluded from the config hash
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "precision": "auto",  # auto (bf16 on CUDA and on CPUs with native bf16) | fp32 | bf16
        "channels_last": "auto",  # auto (on for CUDA) | true | false
        "compile": "auto",  # auto (off on CPU) | false | true (= "default") | "default" |
        # "reduce-overhead" (CUDA graphs) | "max-autotune-no-cudagraphs"
        "fused_sgd": "auto",  # auto (on for CUDA) | true | false
        "cudnn_benchmark": True,
        "deterministic": "auto",  # auto: deterministic algorithms on CPU
    },
}

RUNTIME_KEYS = ("runtime",)
#: keys that change neither what is trained nor what is reported
NON_TRAINING_KEYS = ("eval_batch_size", "eval_every")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the dotted key."""


class DivergedError(RuntimeError):
    """The training loss became non-finite."""


#: the clock deadlines are read from (``time.time``; tests replace it)
_clock = time.time


class DeadlineReached(RuntimeError):
    """The run was stopped at an iteration boundary because its deadline passed; the
    checkpoint (if any) holds the exact state, so rerunning resumes to the same result."""

    def __init__(self, iteration: int, total: int):
        super().__init__(f"deadline reached at iteration {iteration} of {total}")
        self.iteration, self.total = iteration, total


def _merge(base: dict, over: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        dotted = f"{path}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {dotted!r}; valid keys here: {', '.join(base)}")
        if isinstance(base[key], dict) and key not in ("options",):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, dotted + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config(cfg: dict) -> dict:
    """Defaults filled in, unknown keys and bad values rejected (ConfigError names the key)."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"a config must be a mapping, got {type(cfg).__name__}")
    c = _merge(DEFAULTS, cfg)
    _check_model_data(c)
    _check_optim_schedule(c)
    for key in ("batch_size", "eval_batch_size", "eval_every"):
        _require_int(key, c[key], 1)
    _require_int("seed", c["seed"], None)
    _check_runtime(c["runtime"])
    _check_recipe_keys(c)
    return c


# Strict value types: YAML reads `true` as a bool and Python's bool is an int, so `batch_size:
# true` would train with batch 1; a quoted 'no' is a non-empty string, i.e. true. Neither is
# what the author meant, so both are errors.


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _require_int(key: str, v: Any, low: int | None) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or (low is not None and v < low):
        what = "an integer" if low is None else f"an integer >= {low}"
        raise ConfigError(f"'{key}' must be {what}, got {v!r}")


def _require_number(key: str, v: Any, low: float, *, strict: bool) -> None:
    if not _is_number(v) or v < low or (strict and v == low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ConfigError(f"'{key}' must be a finite number {bound}, got {v!r}")


def _require_bool(key: str, v: Any, *, auto: bool = False) -> None:
    if not (isinstance(v, bool) or (auto and v == "auto")):
        allowed = "true, false or auto" if auto else "true or false"
        raise ConfigError(f"'{key}' must be {allowed} (unquoted), got {v!r}")


def _check_model_data(c: dict) -> None:
    from convnets.data import DatasetError, check_dataset_name

    m, d = c["model"], c["data"]
    if not m["name"]:
        raise ConfigError("config key 'model.name' is required")
    if not isinstance(m["name"], str):
        raise ConfigError(f"'model.name' must be a string, got {m['name']!r}")
    for key in ("model.options", "data.options"):
        group, sub = key.split(".")
        if not isinstance(c[group][sub], dict):
            raise ConfigError(f"'{key}' must be a mapping, got {c[group][sub]!r}")
    try:
        check_dataset_name(d["name"], d["options"])
    except DatasetError as err:
        raise ConfigError(f"'data.name' / 'data.options': {err}") from None
    if d["data_dir"] is not None and not isinstance(d["data_dir"], str):
        raise ConfigError(f"'data.data_dir' must be a path string, got {d['data_dir']!r}")
    _require_int("data.val_size", d["val_size"], 0)
    _require_int("data.split_seed", d["split_seed"], None)
    _require_int("data.pad", d["pad"], 0)
    _require_bool("data.augment", d["augment"])  # data.normalize: see _check_recipe_keys
    if d["resize"] is not None:
        _require_int("data.resize", d["resize"], 1)


def _check_optim_schedule(c: dict) -> None:
    o, s = c["optim"], c["schedule"]
    _require_number("optim.lr", o["lr"], 0, strict=True)
    _require_number("optim.momentum", o["momentum"], 0, strict=False)
    _require_number("optim.weight_decay", o["weight_decay"], 0, strict=False)
    _require_bool("optim.nesterov", o["nesterov"])
    if s["unit"] not in ("iterations", "epochs"):
        raise ConfigError(f"'schedule.unit' must be iterations or epochs, got {s['unit']!r}")
    _require_number("schedule.length", s["length"], 0, strict=True)
    drops = s["drops"]
    if not isinstance(drops, list) or not all(_is_number(d) for d in drops):
        raise ConfigError(f"'schedule.drops' must be a list of fractions of the length, e.g. "
                          f"[0.5, 0.75], got {drops!r}")
    for d in drops:
        if not 0 < d < 1:
            raise ConfigError(
                f"'schedule.drops' are fractions of the length in (0, 1); {d!r} is past the end"
            )
    if not (_is_number(s["gamma"]) and 0 < s["gamma"] <= 1):
        raise ConfigError(f"'schedule.gamma' (lr factor at each drop) must be in (0, 1], "
                          f"got {s['gamma']!r}")
    _require_int("schedule.warmup_iterations", s["warmup_iterations"], 0)
    _require_number("schedule.warmup_lr", s["warmup_lr"], 0, strict=True)
    # in epochs the length in iterations needs the data set's size; in iterations it is known
    if s["unit"] == "iterations" and s["warmup_iterations"] >= s["length"]:
        raise ConfigError(f"'schedule.warmup_iterations' ({s['warmup_iterations']}) must be "
                          f"shorter than 'schedule.length' ({s['length']} iterations)")


def _check_runtime(rt: dict) -> None:
    dev = rt["device"]
    if not (isinstance(dev, str) and (dev in ("auto", "cpu", "cuda", "mps")
                                      or (dev.startswith("cuda:") and dev[5:].isdigit()))):
        raise ConfigError(f"'runtime.device' must be auto, cpu, cuda or cuda:N, got {dev!r}")
    if rt["precision"] not in ("auto", "fp32", "bf16"):
        raise ConfigError("'runtime.precision' must be auto, fp32 or bf16")
    for key in ("channels_last", "fused_sgd", "deterministic"):
        _require_bool(f"runtime.{key}", rt[key], auto=True)
    _require_bool("runtime.cudnn_benchmark", rt["cudnn_benchmark"])
    comp = rt["compile"]
    if not (isinstance(comp, bool) or comp is None or comp == "auto" or comp in COMPILE_MODES):
        raise ConfigError(f"'runtime.compile' must be auto, true, false or one of "
                          f"{COMPILE_MODES}, got {comp!r}")


def _check_recipe_keys(c: dict) -> None:
    """Values of the normalisation, padding, ghost-BN, per-layer-lr and warm-up-rule keys."""
    d, o, s = c["data"], c["optim"], c["schedule"]
    if d["normalize"] not in (True, False, "channel", "pixel"):
        raise ConfigError(f"'data.normalize' must be channel, pixel, true or false, got "
                          f"{d['normalize']!r}")
    if d["pad_fill"] not in ("mean", "zero"):
        raise ConfigError(f"'data.pad_fill' must be mean or zero, got {d['pad_fill']!r}")
    g = c["bn_group"]
    if g is not None and not (isinstance(g, int) and not isinstance(g, bool) and g > 0):
        raise ConfigError(f"'bn_group' must be a positive integer or null, got {g!r}")
    if not isinstance(o["lr_mult"], list) or not all(
            isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], str)
            and isinstance(e[1], (int, float)) and e[1] >= 0 for e in o["lr_mult"]):
        raise ConfigError("'optim.lr_mult' must be a list of [parameter-name prefix, "
                          f"multiplier >= 0] pairs, got {o['lr_mult']!r}")
    if not (isinstance(o["bias_lr_mult"], (int, float)) and o["bias_lr_mult"] >= 0):
        raise ConfigError(f"'optim.bias_lr_mult' must be a number >= 0, got {o['bias_lr_mult']!r}")
    for key in ("bias_decay", "bias_lr_schedule"):
        if not isinstance(o[key], bool):
            raise ConfigError(f"'optim.{key}' must be true or false, got {o[key]!r}")
    e = s["warmup_until_error"]
    if e is not None:
        if not (isinstance(e, (int, float)) and 0 < e <= 100):
            raise ConfigError(f"'schedule.warmup_until_error' must be a percentage in (0, 100] "
                              f"or null, got {e!r}")
        if s["warmup_iterations"] <= 0:
            raise ConfigError("'schedule.warmup_until_error' needs 'schedule.warmup_iterations' "
                              "> 0: it is the cap of the rule")
    w = s["warmup_window"]
    if not (isinstance(w, int) and w > 0):
        raise ConfigError(f"'schedule.warmup_window' must be a positive integer, got {w!r}")


def resolved_precision(rt: dict) -> str:
    """``fp32`` or ``bf16``: what ``runtime.precision`` means on the device it resolves to."""
    if rt["precision"] != "auto":
        return rt["precision"]
    dev = rt["device"]
    cuda = (dev == "auto" and torch.cuda.is_available()) or str(dev).startswith("cuda")
    return "bf16" if cuda or cpu_has_bf16() else "fp32"


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels here (AVX512-BF16 / AMX): only then does bf16
    autocast pay on CPU; emulated bf16 is slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def config_hash(cfg: dict) -> str:
    """Hash of what is trained: the resolved config minus seed, how it runs and where the data
    lie. Precision changes the arithmetic, so it is in (as ``precision``: bf16 | fp32); an image
    folder enters by its content checksum, not its path (``convnets.data.data_identity``)."""
    c = copy.deepcopy(resolve_config(cfg))
    precision = resolved_precision(c["runtime"])
    for key in RUNTIME_KEYS + NON_TRAINING_KEYS + ("seed",):
        c.pop(key, None)
    data_dir = c["data"].pop("data_dir", None)
    c["data"]["name"] = data_identity(c["data"]["name"], data_dir, c["data"]["options"])
    c["precision"] = precision
    blob = json.dumps(c, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepSchedule:
    """Step learning-rate schedule in iterations, with an optional constant warm-up.

    The warm-up is either a fixed ``warmup_iterations`` (IM appendix) or, with
    ``warmup_until_error`` set, He et al. 2015's rule (Sec. 4.2, ResNet-110): lr ``warmup_lr``
    until the training error of the last ``warmup_window`` batches, pooled, is below
    ``warmup_until_error`` %, and never longer than ``warmup_iterations`` (the cap). The rule
    needs the batches' error counts, passed to :meth:`observe` after each update; only
    while warm does it read them on the host (one synchronisation per warm iteration).
    Milestones count from iteration 0 either way (the paper drops at 32k and 48k).
    """

    base_lr: float
    total: int
    milestones: tuple[int, ...]
    gamma: float = 0.1
    warmup_iterations: int = 0
    warmup_lr: float = 0.01
    warmup_until_error: float | None = None
    warmup_window: int = 20
    #: mutable rule state: "end" (first iteration after warm-up, None while warm), "window"
    state: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        rule = self.warmup_until_error is not None
        self.state.setdefault("end", None if rule else self.warmup_iterations)
        self.state.setdefault("window", [])

    @property
    def warmup_end(self) -> int | None:
        """Iteration at which the lr left warm-up (None: still warm, rule undecided)."""
        return self.state["end"]

    def lr(self, iteration: int) -> float:
        """Learning rate used for the update of (0-based) ``iteration``."""
        end = self.state["end"]
        if iteration < (self.warmup_iterations if end is None else end):
            return self.warmup_lr
        drops = sum(iteration >= m for m in self.milestones)
        return self.base_lr * self.gamma**drops

    def observe(self, iteration: int, n_wrong, batch: int) -> None:
        """Feed the error count of the update of ``iteration``; ends a rule-based warm-up."""
        if self.state["end"] is not None:
            return
        window = self.state["window"]
        window.append(int(n_wrong))
        del window[: -self.warmup_window]
        running = 100.0 * sum(window) / (len(window) * batch)
        if len(window) == self.warmup_window and running < self.warmup_until_error:
            self.state["end"] = iteration + 1
        elif iteration + 1 >= self.warmup_iterations:
            self.state["end"] = self.warmup_iterations  # the cap

    def state_dict(self) -> dict:
        return copy.deepcopy(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state.update(copy.deepcopy(state))


def make_schedule(cfg: dict, steps_per_epoch: int) -> StepSchedule:
    s = cfg["schedule"]
    per = steps_per_epoch if s["unit"] == "epochs" else 1
    total = int(round(s["length"] * per))
    milestones = tuple(int(round(d * s["length"] * per)) for d in s["drops"])
    return StepSchedule(
        base_lr=float(cfg["optim"]["lr"]),
        total=total,
        milestones=milestones,
        gamma=float(s["gamma"]),
        warmup_iterations=int(s["warmup_iterations"]),
        warmup_lr=float(s["warmup_lr"]),
        warmup_until_error=(None if s["warmup_until_error"] is None
                            else float(s["warmup_until_error"])),
        warmup_window=int(s["warmup_window"]),
    )


# ---------------------------------------------------------------------------------------------
# Runtime
# ---------------------------------------------------------------------------------------------


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
#: what ``compile: auto`` means on CUDA: eager until `make bench` on a GPU shows compile pays
AUTO_COMPILE_CUDA: str | None = None


@dataclass
class Runtime:
    device: torch.device
    bf16: bool
    channels_last: bool
    compile: str | None  # None (eager) or a torch.compile mode
    fused_sgd: bool

    @property
    def autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=False)


def resolve_runtime(rt: dict) -> Runtime:
    dev = rt["device"]
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"'runtime.device' is {dev!r} but no CUDA device is visible")
    cuda = device.type == "cuda"

    def flag(key: str, auto: bool) -> bool:
        v = rt[key]
        return auto if v == "auto" else bool(v)

    precision = rt["precision"]
    # CPU, measured by `make bench` (paper_tables/bench-cpu.md, 2-core Xeon with AMX): bf16
    # autocast takes the trainer's ResNet-20 step from 462 to 820 images/s, ResNet-56 from 141
    # to 216. `precision: fp32` stays available: the deterministic mode in which resume is
    # bitwise on every CPU.
    bf16 = (precision == "bf16") or (precision == "auto" and (cuda or cpu_has_bf16()))
    comp = rt["compile"]
    if comp == "auto":
        # CPU: eager. Inductor took 78 s to compile the ResNet-20 step and then ran it at 782
        # images/s against 820 eager (bf16): no gain to pay for.
        comp = AUTO_COMPILE_CUDA if cuda else None
    elif comp is True:
        comp = "default"
    elif comp is False or comp is None:
        comp = None
    elif comp not in COMPILE_MODES:
        raise ConfigError(f"'runtime.compile' must be auto, true, false or one of {COMPILE_MODES}")
    if cuda:
        torch.backends.cudnn.benchmark = bool(rt["cudnn_benchmark"])
    if flag("deterministic", not cuda):
        torch.use_deterministic_algorithms(True, warn_only=True)
    return Runtime(
        device=device,
        bf16=bf16,
        # CPU: off. NCHW measured faster for the ResNets (ResNet-20 bf16 764 vs 801 images/s,
        # ResNet-56 227 vs 233), the bulk of the claims; the MNIST Inception net (2498 vs 1869)
        # and the d2l DenseNet at 96x96 (198 vs 124) gain: set it per spec there.
        channels_last=flag("channels_last", cuda),
        compile=comp,
        # CPU: off. The fused CPU SGD measured within noise of the plain one (801 vs 820
        # images/s on ResNet-20, 233 vs 216 on ResNet-56).
        fused_sgd=flag("fused_sgd", cuda),
    )


def data_seed(seed: int) -> int:
    """Seed of the CPU generator that draws permutations and augmentation for run ``seed``."""
    return seed * 7919 + 17


def restore_checkpoint(path: Path, model, optimizer, data_gen: torch.Generator,
                       device: torch.device) -> dict:
    """Load a run's checkpoint into ``model``, ``optimizer``, ``data_gen`` and the RNGs.

    Returns the checkpoint dict (epoch, iteration, history, wall_time_s, meta). Loaded on the
    CPU: RNG states must stay CPU byte tensors; ``load_state_dict`` moves the rest.
    """
    state = load_checkpoint(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    data_gen.set_state(state["data_gen"])
    torch.set_rng_state(state["cpu_rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return state


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint read with torch's weights-only unpickler.

    Checkpoints may sit on a shared disk (docs/scaling.md), and a full unpickler runs any code
    a file names. What ``save_checkpoint`` writes is tensors, RNG byte tensors, state dicts and
    plain containers of numbers and strings, all of which the weights-only unpickler accepts, so
    the allow-list of extra globals stays empty: anything else is refused, not executed.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise RuntimeError(f"checkpoint {path} holds objects outside the weights-only "
                           f"allow-list, so it was not written by convnets.train (delete it to "
                           f"start afresh): {str(err).splitlines()[0]}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Data on the device
# ---------------------------------------------------------------------------------------------


@dataclass
class DeviceData:
    """Training and evaluation images as uint8 on the training device, plus normalisation."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    eval_split: str  # "test" or "val"
    mean: torch.Tensor | None
    std: torch.Tensor | None
    num_classes: int
    info: dict[str, Any]
    #: per-channel padding value of the crop (None: zeros); normalises to exactly 0
    pad_fill: torch.Tensor | None = None


def prepare_data(cfg: dict, device: torch.device, dataset=None) -> DeviceData:
    """Load the dataset and move it to ``device``.

    With ``data.val_size > 0`` the evaluation set is a fixed stratified split of the training
    set, and the test set is not read at all (tuning and selection never see it).
    """
    d = cfg["data"]
    ds = dataset or load_dataset(d["name"], d["data_dir"], **d["options"])
    tr_x, tr_y = ds.train.images, ds.train.labels
    if d["val_size"] > 0:
        tr_idx, val_idx = stratified_split(tr_y, d["val_size"], d["split_seed"])
        ev_x, ev_y = tr_x[val_idx], tr_y[val_idx]
        tr_x, tr_y = tr_x[tr_idx], tr_y[tr_idx]
        split = "val"
    else:
        ev_x, ev_y = ds.test.images, ds.test.labels
        split = "test"
    info = {"dataset": ds.name, "dataset_label": ds.label, "dataset_checksum": ds.checksum}
    tr_x, ev_x, mean, std, fill = _normalisation(d, tr_x, ev_x, info)
    return DeviceData(
        train_x=tr_x.to(device),
        train_y=tr_y.to(device),
        eval_x=ev_x.to(device),
        eval_y=ev_y.to(device),
        eval_split=split,
        mean=None if mean is None else mean.to(device),
        std=None if std is None else std.to(device),
        num_classes=ds.num_classes,
        info=info,
        pad_fill=None if fill is None else fill.to(device),
    )


def _normalisation(d: dict, tr_x: torch.Tensor, ev_x: torch.Tensor, info: dict):
    """(train images, eval images, mean, std, pad fill) for the ``data.normalize`` mode.

    Statistics come from the training split only (after any validation hold-out).

    * ``pixel`` (He et al. 2015, Sec. 4.2): images become int16 ``x - M`` with ``M`` the
      per-pixel mean image rounded to integers (< 0.5 grey levels from the exact mean), so
      the mean is subtracted at each pixel's own position *before* the crop, and the crop pads
      with 0 = the mean; ``to_float`` then only converts (mean 0, std 1).
    * ``channel`` with ``pad_fill: mean``: the padding colour is the per-channel mean rounded
      to uint8, and the same rounded mean is subtracted, so padded pixels are exactly 0 (as
      when normalising first and zero-padding, fb.resnet.torch / DenseNet Lua); the std is
      exact. ``pad_fill: zero`` keeps the exact mean and black padding (the old behaviour).
    """
    mode = "channel" if d["normalize"] is True else d["normalize"]
    info["normalize"] = mode or "none"
    info["pad_fill"] = d["pad_fill"]
    if mode == "pixel":
        m_img = pixel_mean(tr_x).round().to(torch.int16)
        info["train_pixel_mean_channel_avg"] = [round(float(v), 4)
                                                for v in m_img.double().mean((1, 2))]
        c = tr_x.shape[1]
        zero, one = torch.zeros(c), torch.ones(c)
        return (tr_x.to(torch.int16) - m_img, ev_x.to(torch.int16) - m_img, zero, one,
                torch.zeros(c, dtype=torch.int16))
    if not mode:
        return tr_x, ev_x, None, None, None
    m, s = channel_stats(tr_x)
    info["train_mean"] = [round(v, 4) for v in m]
    info["train_std"] = [round(v, 4) for v in s]
    fill = None
    if d["pad_fill"] == "mean":
        fill = torch.tensor([min(255, max(0, round(v))) for v in m], dtype=torch.uint8)
        m = tuple(float(v) for v in fill)
    return (tr_x, ev_x, torch.tensor(m, dtype=torch.float32),
            torch.tensor(s, dtype=torch.float32), fill)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    history: list[dict[str, float]]
    final: dict[str, float]
    predictions: np.ndarray  # predicted class per evaluation example, dataset order
    targets: np.ndarray
    eval_split: str
    info: dict[str, Any] = field(default_factory=dict)


class NullLogger:
    """Logger used when none is given: does nothing."""

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None: ...


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def evaluate(model, data: DeviceData, rt: Runtime, cfg: dict) -> tuple[float, torch.Tensor]:
    """Error (%) and predictions on the evaluation set; model left in train mode."""
    model.eval()
    preds = []
    with torch.no_grad(), rt.autocast:
        for i in range(0, data.eval_x.shape[0], cfg["eval_batch_size"]):
            x = to_float(data.eval_x[i : i + cfg["eval_batch_size"]], data.mean, data.std,
                         cfg["data"]["resize"], rt.channels_last)
            preds.append(model(x).argmax(1))
    model.train()
    pred = torch.cat(preds)
    err = (pred != data.eval_y).float().mean().item() * 100.0
    return err, pred


def plan_iterations(cfg: dict, n_train: int, batch: int) -> tuple[int, StepSchedule, int]:
    """(steps per epoch, schedule, epochs) for ``n_train`` images at global ``batch``.

    Iteration-based sampling with full batches only: an epoch is n_train // batch steps over a
    fresh permutation (the remainder of each permutation is skipped, so shapes are static).
    """
    if batch > n_train:
        raise ConfigError(f"'batch_size' {batch} exceeds the {n_train} training images")
    steps_per_epoch = n_train // batch
    sched = make_schedule(cfg, steps_per_epoch)
    return steps_per_epoch, sched, math.ceil(sched.total / steps_per_epoch)


def check_finite(train_loss: float, epoch: int, iteration: int, steps: int, lr: float) -> None:
    """Raise ``DivergedError`` if the epoch's mean training loss is not finite."""
    if not math.isfinite(train_loss):
        raise DivergedError(
            f"training loss became non-finite ({train_loss}) in epoch {epoch + 1} "
            f"(iterations {iteration - steps}-{iteration}, lr {lr:g})"
        )


def save_checkpoint(path: Path, model, optimizer, data_gen: torch.Generator,
                    device: torch.device, **state: Any) -> None:
    """Everything ``restore_checkpoint`` needs, plus ``state`` (epoch, iteration, history, ...)."""
    _atomic_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "data_gen": data_gen.get_state(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            **state,
        },
        path,
    )


def build_result(history: list[dict], err: float, pred: torch.Tensor, data: DeviceData,
                 rt: Runtime, sched: StepSchedule, steps_per_epoch: int, wall_time_s: float,
                 **info: Any) -> RunResult:
    """The run's final metrics and provenance from its last epoch and evaluation."""
    last = history[-1]
    final = {
        f"final_{data.eval_split}_error": err,
        "final_train_error": last["train_error"],
        "final_train_loss": last["train_loss"],
        "wall_time_s": wall_time_s,
    }
    info = dict(data.info, eval_split=data.eval_split, steps_per_epoch=steps_per_epoch,
                total_iterations=sched.total, device=_device_name(rt.device),
                precision="bf16" if rt.bf16 else "fp32", channels_last=rt.channels_last,
                compile=rt.compile, fused_sgd=rt.fused_sgd, **info)
    return RunResult(history=history, final=final, predictions=pred.cpu().numpy(),
                     targets=data.eval_y.cpu().numpy(), eval_split=data.eval_split, info=info)


def make_step(model, optimizer, rt: Runtime, mean, std, resize: int | None):
    """The training step shared by ``fit`` and ``convnets.bench``.

    ``step(x_uint8, y, lr)`` does one SGD update and returns the batch loss and the number of
    misclassified examples as device tensors (no host synchronisation). Normalisation, the
    forward pass, the loss and the error count form one function, compiled as a whole when
    ``rt.compile`` is set (so the uint8 -> float conversion fuses into it).
    """

    def forward_loss(xb: torch.Tensor, yb: torch.Tensor):
        x = to_float(xb, mean, std, resize, rt.channels_last)
        with rt.autocast:
            out = model(x)
            loss = F.cross_entropy(out, yb)
        return loss, (out.argmax(1) != yb).sum()

    fwd = torch.compile(forward_loss, mode=rt.compile) if rt.compile else forward_loss
    cudagraphs = rt.compile == "reduce-overhead"

    def step(xb: torch.Tensor, yb: torch.Tensor, lr: float):
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        for g in optimizer.param_groups:
            # per-layer rates (optim.lr_mult); fixed_lr: a group the schedule leaves alone
            g["lr"] = g["fixed_lr"] if "fixed_lr" in g else lr * g.get("lr_mult", 1.0)
        loss, wrong = fwd(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach().float(), wrong

    return step


def param_groups(model, o: dict) -> list[dict]:
    """Parameter groups with an ``lr_mult`` each (applied by ``make_step``) and their decay.

    A parameter's multiplier is that of the first ``optim.lr_mult`` prefix its name starts
    with (else 1), times ``optim.bias_lr_mult`` for 1-D parameters (biases, BN scale and
    shift); 1-D parameters get no weight decay when ``optim.bias_decay`` is false, and a
    constant lr (``fixed_lr``: ``optim.lr`` times their multiplier) when
    ``optim.bias_lr_schedule`` is false. Parameters of equal (multiplier, decay, fixed)
    share a group, in model order.
    """
    groups: dict[tuple[float, float, bool], list] = {}
    for name, p in model.named_parameters():
        mult = next((float(m) for pre, m in o["lr_mult"] if name.startswith(pre)), 1.0)
        wd, fixed = o["weight_decay"], False
        if p.ndim <= 1:
            mult *= float(o["bias_lr_mult"])
            wd = wd if o["bias_decay"] else 0.0
            fixed = not o["bias_lr_schedule"]
        groups.setdefault((mult, wd, fixed), []).append(p)
    out = []
    for (m, wd, fixed), ps in groups.items():
        g = {"params": ps, "lr_mult": m, "weight_decay": wd}
        if fixed:
            g["fixed_lr"] = float(o["lr"]) * m
        out.append(g)
    return out


def make_optimizer(model, cfg: dict, rt: Runtime) -> torch.optim.SGD:
    o = cfg["optim"]
    extra = {"fused": True} if rt.fused_sgd else {}
    plain = (not o["lr_mult"] and o["bias_lr_mult"] == 1 and o["bias_decay"]
             and o["bias_lr_schedule"])
    params = model.parameters() if plain else param_groups(model, o)
    return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"],
                           nesterov=o["nesterov"], weight_decay=o["weight_decay"], **extra)


def epoch_data(train_x, train_y, n_samples: int, pad: int, augment: bool,
               generator: torch.Generator, fill: torch.Tensor | None = None):
    """One epoch's training data in bulk: a fresh permutation (drawn on CPU, applied on the
    device), then pad/crop/flip of every image in one gather. Batches are slices of it.
    ``fill``: per-channel padding value (``DeviceData.pad_fill``; None pads with 0)."""
    perm = torch.randperm(train_x.shape[0], generator=generator)[:n_samples].to(train_x.device)
    x = train_x[perm]
    if augment:
        dy, dx, flip = draw_crop_flip(x.shape[0], pad, generator)
        x = crop_flip(x, dy, dx, flip, pad, fill)
    return x, train_y[perm]


def fit(
    cfg: dict,
    *,
    logger=None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
    dataset=None,
    checkpoint_meta: dict | None = None,
    deadline: float | None = None,
) -> RunResult:
    """Train one run as ``cfg`` says and return its curve, final metrics and predictions.

    Args:
        cfg: config (see ``DEFAULTS``); resolved and validated here.
        logger: receives ``log_epoch(step, metrics)`` once per epoch (batched, one call).
        checkpoint: file written atomically at every epoch end; if it exists, the run resumes
            from it and ends with the same metrics as an uninterrupted run (bitwise on CPU).
        progress: a progress bar on a terminal, plain lines otherwise.
        on_epoch_end: called with the epoch's metrics (tests use it to interrupt a run).
        dataset: an already loaded ``convnets.data.Dataset`` (skips loading).
        checkpoint_meta: stored in the checkpoint as ``meta`` (the runner keeps the MLflow run
            id there, so a checkpoint resumes only the run that wrote it).
        deadline: a ``time.time()`` value; once passed, the run stops at the next iteration
            boundary, writes a mid-epoch checkpoint and raises ``DeadlineReached``.

    Raises:
        DivergedError: the training loss became non-finite (the checkpoint is kept).
        DeadlineReached: ``deadline`` passed (the checkpoint resumes the run exactly).
    """
    cfg = resolve_config(cfg)
    logger = logger or NullLogger()
    rt = resolve_runtime(cfg["runtime"])
    seed = int(cfg["seed"])
    seed_everything(seed)
    data = prepare_data(cfg, rt.device, dataset)
    model = build_model(cfg["model"]["name"], num_classes=data.num_classes,
                        **cfg["model"]["options"]).to(rt.device)
    use_ghost_batchnorm(model, cfg["bn_group"])
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg, rt)
    n_train = data.train_x.shape[0]
    batch = cfg["batch_size"]
    steps_per_epoch, sched, n_epochs = plan_iterations(cfg, n_train, batch)
    data_gen = torch.Generator().manual_seed(data_seed(seed))

    history: list[dict[str, float]] = []
    start_epoch, iteration, wall_before, partial = 0, 0, 0.0, None
    ckpt_path = Path(checkpoint) if checkpoint else None
    if ckpt_path and ckpt_path.exists():
        state = restore_checkpoint(ckpt_path, model, optimizer, data_gen, rt.device)
        start_epoch, iteration, history = state["epoch"], state["iteration"], state["history"]
        wall_before = state.get("wall_time_s", 0.0)
        partial = state.get("partial")  # stopped inside an epoch by a deadline
        sched.load_state_dict(state.get("schedule", {}))

    step = make_step(model, optimizer, rt, data.mean, data.std, cfg["data"]["resize"])
    bar = _Progress(sched.total, progress, initial=iteration)
    pred = None
    wall0 = time.perf_counter()
    pad = cfg["data"]["pad"] if cfg["data"]["augment"] else 0

    def save(**state: Any) -> None:
        if ckpt_path:
            save_checkpoint(ckpt_path, model, optimizer, data_gen, rt.device, history=history,
                            config=cfg, meta=checkpoint_meta or {},
                            schedule=sched.state_dict(),
                            wall_time_s=wall_before + time.perf_counter() - wall0, **state)

    try:
        for epoch in range(start_epoch, n_epochs):
            t0 = time.perf_counter()
            steps = min(steps_per_epoch, sched.total - iteration + (partial or {}).get("step", 0))
            gen_before = data_gen.get_state()  # a mid-epoch checkpoint redraws this epoch
            x_all, y_all = epoch_data(data.train_x, data.train_y, steps * batch, pad,
                                      cfg["data"]["augment"], data_gen, data.pad_fill)
            loss_sum = torch.zeros((), device=rt.device)
            wrong = torch.zeros((), device=rt.device, dtype=torch.long)
            first = 0
            if partial:  # resume inside the epoch, with its running sums
                first = partial["step"]
                loss_sum, wrong = partial["loss_sum"].to(rt.device), partial["wrong"].to(rt.device)
                partial = None
            for s in range(first, steps):
                if deadline is not None and _clock() >= deadline:
                    gen_now = data_gen.get_state()
                    data_gen.set_state(gen_before)
                    save(epoch=epoch, iteration=iteration,
                         partial={"step": s, "loss_sum": loss_sum.cpu(), "wrong": wrong.cpu()})
                    data_gen.set_state(gen_now)
                    raise DeadlineReached(iteration, sched.total)
                lr = sched.lr(iteration)
                loss, n_wrong = step(x_all[s * batch : (s + 1) * batch],
                                     y_all[s * batch : (s + 1) * batch], lr)
                loss_sum += loss
                wrong += n_wrong
                sched.observe(iteration, n_wrong, batch)  # host sync only while warm
                iteration += 1
                bar.tick(iteration, s + 1 - first, batch, t0)  # host clock only: no sync
            # one host synchronisation per epoch
            train_loss = loss_sum.item() / steps
            train_err = wrong.item() * 100.0 / (steps * batch)
            dt = time.perf_counter() - t0
            check_finite(train_loss, epoch, iteration, steps, lr)
            metrics = {
                "epoch": epoch + 1,
                "iteration": iteration,
                "train_loss": train_loss,
                "train_error": train_err,
                "lr": lr,
                "images_per_sec": (steps - first) * batch / dt,
                "epoch_time_s": dt,
            }
            if sched.warmup_iterations and sched.warmup_end is not None:
                metrics["warmup_end_iteration"] = sched.warmup_end
            last = epoch == n_epochs - 1
            if last or (epoch + 1) % cfg["eval_every"] == 0:
                err, pred = evaluate(model, data, rt, cfg)
                metrics[f"{data.eval_split}_error"] = err
            history.append(metrics)
            # checkpoint first, then log: a crash in between re-runs nothing already logged
            save(epoch=epoch + 1, iteration=iteration)
            logger.log_epoch(iteration, metrics)
            bar.update(steps, metrics, data.eval_split)
            if on_epoch_end:
                on_epoch_end(metrics)
    finally:
        bar.close()
    if pred is None:  # resumed from a checkpoint of the finished run
        err, pred = evaluate(model, data, rt, cfg)
    return build_result(history, err, pred, data, rt, sched, steps_per_epoch,
                        wall_before + time.perf_counter() - wall0)


def read_checkpoint_meta(path: str | Path) -> dict:
    """The ``meta`` a checkpoint was written with ({} if none or unreadable)."""
    try:
        return load_checkpoint(path).get("meta", {})
    except Exception:  # a truncated or foreign file: treat as no checkpoint
        return {}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


class _Progress:
    """tqdm bar on a terminal, else plain lines. Inside an epoch it is refreshed from the host
    clock alone (every ``every`` seconds: iterations done, images/s, ETA) so that it never
    forces a device synchronisation; the loss and errors appear at each epoch's end."""

    def __init__(self, total: int, enabled: bool, initial: int = 0, every: float = 2.0):
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.bar = None
        self.total = total
        self.every = every if self.tty else 30.0  # plain logs: a line every 30 s
        self.last = time.perf_counter()
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="it", leave=False,
                            dynamic_ncols=True)

    def tick(self, iteration: int, steps_done: int, batch: int, t0: float) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.every:
            return
        self.last = now
        per_step = (now - t0) / max(steps_done, 1)
        text = (f"{batch / per_step:.0f} img/s, "
                f"ETA {_hms((self.total - iteration) * per_step)}")
        if self.bar is not None:
            self.bar.update(iteration - self.bar.n)
            self.bar.set_postfix_str(text)
        else:
            print(f"  it {iteration:>6d}/{self.total} {text}", flush=True)

    def update(self, n: int, m: dict, split: str) -> None:
        ev = m.get(f"{split}_error")
        ev_s = f" {split}_err {ev:5.2f}%" if ev is not None else ""
        if self.bar is not None:
            self.bar.update(m["iteration"] - self.bar.n)
            self.bar.set_postfix_str(
                f"loss {m['train_loss']:.3f} err {m['train_error']:.2f}%{ev_s} "
                f"{m['images_per_sec']:.0f} img/s"
            )
        elif self.enabled:
            print(
                f"  epoch {m['epoch']:>4d} it {m['iteration']:>6d}/{self.total} "
                f"loss {m['train_loss']:.4f} train_err {m['train_error']:5.2f}%{ev_s} "
                f"lr {m['lr']:.4g} {m['images_per_sec']:.0f} img/s",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
