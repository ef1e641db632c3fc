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
from convnets.data import channel_stats, load_dataset, stratified_split
from convnets.models import build_model

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
        "normalize": True,  # per-channel mean/std of the training set; False: scale to [0, 1]
        "resize": None,  # int: bilinear upsampling to resize x resize (d2l Fashion-MNIST: 96)
    },
    "optim": {
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
    },
    "schedule": {
        "unit": "iterations",  # iterations | epochs (the unit of `length`)
        "length": 64000,  # He et al. 2015: stop at 64k iterations
        "drops": [0.5, 0.75],  # lr /10 at these fractions of length (32k, 48k of 64k)
        "gamma": 0.1,
        "warmup_iterations": 0,  # Identity Mappings: 400 iterations at lr 0.01
        "warmup_lr": 0.01,
    },
    "batch_size": 128,
    "eval_batch_size": 1000,
    "eval_every": 1,  # epochs between evaluations (the last epoch is always evaluated)
    "seed": 0,
    "runtime": {  # how, not what: excluded from the config hash
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "precision": "auto",  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
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
    for key in ("augment", "normalize"):
        _require_bool(f"data.{key}", d[key])
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


def resolved_precision(rt: dict) -> str:
    """``fp32`` or ``bf16``: what ``runtime.precision`` means on the device it resolves to."""
    if rt["precision"] != "auto":
        return rt["precision"]
    dev = rt["device"]
    cuda = (dev == "auto" and torch.cuda.is_available()) or str(dev).startswith("cuda")
    return "bf16" if cuda else "fp32"


def config_hash(cfg: dict) -> str:
    """Hash of what is trained: the resolved config minus seed, how it runs and where the data
    lie. Precision changes the arithmetic, so it is in (as ``precision``: bf16 | fp32)."""
    c = copy.deepcopy(resolve_config(cfg))
    precision = resolved_precision(c["runtime"])
    for key in RUNTIME_KEYS + NON_TRAINING_KEYS + ("seed",):
        c.pop(key, None)
    c["data"].pop("data_dir", None)
    c["precision"] = precision
    blob = json.dumps(c, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepSchedule:
    """Step learning-rate schedule in iterations, with an optional constant warm-up."""

    base_lr: float
    total: int
    milestones: tuple[int, ...]
    gamma: float = 0.1
    warmup_iterations: int = 0
    warmup_lr: float = 0.01

    def lr(self, iteration: int) -> float:
        """Learning rate used for the update of (0-based) ``iteration``."""
        if iteration < self.warmup_iterations:
            return self.warmup_lr
        drops = sum(iteration >= m for m in self.milestones)
        return self.base_lr * self.gamma**drops


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
    bf16 = (precision == "bf16") or (precision == "auto" and cuda)
    comp = rt["compile"]
    if comp == "auto":
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
        channels_last=flag("channels_last", cuda),
        compile=comp,
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
    mean = std = None
    info = {"dataset": ds.name, "dataset_label": ds.label, "dataset_checksum": ds.checksum}
    if d["normalize"]:
        m, s = channel_stats(tr_x)
        mean = torch.tensor(m, dtype=torch.float32, device=device)
        std = torch.tensor(s, dtype=torch.float32, device=device)
        info["train_mean"] = [round(v, 4) for v in m]
        info["train_std"] = [round(v, 4) for v in s]
    return DeviceData(
        train_x=tr_x.to(device),
        train_y=tr_y.to(device),
        eval_x=ev_x.to(device),
        eval_y=ev_y.to(device),
        eval_split=split,
        mean=mean,
        std=std,
        num_classes=ds.num_classes,
        info=info,
    )


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
            g["lr"] = lr
        loss, wrong = fwd(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach().float(), wrong

    return step


def make_optimizer(model, cfg: dict, rt: Runtime) -> torch.optim.SGD:
    o = cfg["optim"]
    extra = {"fused": True} if rt.fused_sgd else {}
    return torch.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"],
                           nesterov=o["nesterov"], weight_decay=o["weight_decay"], **extra)


def epoch_data(train_x, train_y, n_samples: int, pad: int, augment: bool,
               generator: torch.Generator):
    """One epoch's training data in bulk: a fresh permutation (drawn on CPU, applied on the
    device), then pad/crop/flip of every image in one gather. Batches are slices of it."""
    perm = torch.randperm(train_x.shape[0], generator=generator)[:n_samples].to(train_x.device)
    x = train_x[perm]
    if augment:
        dy, dx, flip = draw_crop_flip(x.shape[0], pad, generator)
        x = crop_flip(x, dy, dx, flip, pad)
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

    Raises:
        DivergedError: the training loss became non-finite (the checkpoint is kept).
    """
    cfg = resolve_config(cfg)
    logger = logger or NullLogger()
    rt = resolve_runtime(cfg["runtime"])
    seed = int(cfg["seed"])
    seed_everything(seed)
    data = prepare_data(cfg, rt.device, dataset)
    model = build_model(cfg["model"]["name"], num_classes=data.num_classes,
                        **cfg["model"]["options"]).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg, rt)
    n_train = data.train_x.shape[0]
    batch = cfg["batch_size"]
    steps_per_epoch, sched, n_epochs = plan_iterations(cfg, n_train, batch)
    data_gen = torch.Generator().manual_seed(data_seed(seed))

    history: list[dict[str, float]] = []
    start_epoch, iteration, wall_before = 0, 0, 0.0
    ckpt_path = Path(checkpoint) if checkpoint else None
    if ckpt_path and ckpt_path.exists():
        state = restore_checkpoint(ckpt_path, model, optimizer, data_gen, rt.device)
        start_epoch, iteration, history = state["epoch"], state["iteration"], state["history"]
        wall_before = state.get("wall_time_s", 0.0)

    step = make_step(model, optimizer, rt, data.mean, data.std, cfg["data"]["resize"])
    bar = _Progress(sched.total, progress, initial=iteration)
    pred = None
    wall0 = time.perf_counter()
    pad = cfg["data"]["pad"] if cfg["data"]["augment"] else 0
    try:
        for epoch in range(start_epoch, n_epochs):
            t0 = time.perf_counter()
            steps = min(steps_per_epoch, sched.total - iteration)
            x_all, y_all = epoch_data(data.train_x, data.train_y, steps * batch, pad,
                                      cfg["data"]["augment"], data_gen)
            loss_sum = torch.zeros((), device=rt.device)
            wrong = torch.zeros((), device=rt.device, dtype=torch.long)
            for s in range(steps):
                lr = sched.lr(iteration)
                loss, n_wrong = step(x_all[s * batch : (s + 1) * batch],
                                     y_all[s * batch : (s + 1) * batch], lr)
                loss_sum += loss
                wrong += n_wrong
                iteration += 1
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
                "images_per_sec": steps * batch / dt,
                "epoch_time_s": dt,
            }
            last = epoch == n_epochs - 1
            if last or (epoch + 1) % cfg["eval_every"] == 0:
                err, pred = evaluate(model, data, rt, cfg)
                metrics[f"{data.eval_split}_error"] = err
            history.append(metrics)
            # checkpoint first, then log: a crash in between re-runs nothing already logged
            if ckpt_path:
                save_checkpoint(ckpt_path, model, optimizer, data_gen, rt.device,
                                epoch=epoch + 1, iteration=iteration, history=history,
                                config=cfg, meta=checkpoint_meta or {},
                                wall_time_s=wall_before + time.perf_counter() - wall0)
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
    """tqdm bar on a terminal (updated once per epoch: no host sync inside an epoch), else lines."""

    def __init__(self, total: int, enabled: bool, initial: int = 0):
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.bar = None
        self.total = total
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="it", leave=False,
                            dynamic_ncols=True)

    def update(self, n: int, m: dict, split: str) -> None:
        ev = m.get(f"{split}_error")
        ev_s = f" {split}_err {ev:5.2f}%" if ev is not None else ""
        if self.bar is not None:
            self.bar.update(n)
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
