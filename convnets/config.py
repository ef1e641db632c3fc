"""The run config: ``DEFAULTS`` (every key documented), ``resolve_config`` (defaults filled in,
unknown keys and bad values rejected), ``config_hash`` and ``ConfigError``.

What a config *is* lives here; how it is run does not. Of the project this module imports only
``convnets.data`` (data-set names and their identity in the hash), which imports nothing of
training, so every other module may import it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any

from convnets.data import DatasetError, check_dataset_name, data_identity

DEFAULTS: dict[str, Any] = {
    "model": {  # what is trained
        "name": None,  # registered model name (convnets.list_models())
        "options": {},  # keyword options of the builder (unit=, shortcut=, head=, ...)
    },
    "data": {  # what it is trained and evaluated on
        "name": "cifar10",  # cifar10 | cifar100 | fashion_mnist | mnist | imagefolder:PATH | synthetic
        "data_dir": None,  # None: $CONVNETS_DATA or ~/.cache/convnets/data
        "options": {},  # dataset options (synthetic sizes, imagefolder label)
        "val_size": 0,  # >0: hold out a stratified validation split and never touch the test set
        "split_seed": 0,  # the split is fixed across runs and seeds
        "augment": True,  # pad 4 + random crop + horizontal flip (He et al. 2015, Sec. 4.2)
        "pad": 4,  # pixels of padding around each image before the random crop
        # "channel" (or True): per-channel mean/std of the training split (DenseNet, Sec. 4.2);
        # "pixel": subtract the training split's per-pixel mean image, no std (He et al. 2015,
        # Sec. 4.2), on the 0-255 scale; False: scale to [0, 1]
        "normalize": "channel",
        # padding colour of the crop: "mean" pads with what normalises to exactly 0 (the
        # reference code normalises, then zero-pads); "zero": black uint8 padding (old runs)
        "pad_fill": "mean",
        "resize": None,  # int: bilinear upsampling to resize x resize (d2l Fashion-MNIST: 96)
    },
    "optim": {  # SGD
        "lr": 0.1,  # base learning rate of SGD (He et al. 2015: 0.1 at batch 128)
        "momentum": 0.9,  # SGD momentum
        "nesterov": False,  # Nesterov momentum instead of the classic heavy ball
        "weight_decay": 1e-4,  # L2 penalty of SGD (He et al. 2015: 0.0001)
        # [[parameter-name prefix, lr multiplier], ...]: per-layer learning rates (NiN's
        # cifar-10_params: epsW 0.1 for cccp6 against 1 elsewhere); first matching prefix wins
        "lr_mult": [],
        "bias_lr_mult": 1.0,  # multiplier on the lr of 1-D parameters (NiN: epsB / epsW = 2)
        "bias_decay": True,  # weight decay on 1-D parameters too; False: none (cuda-convnet)
        # False: 1-D parameters keep lr * bias_lr_mult through the schedule's drops and
        # warm-up (NiN's README lowers epsW only: "changing all the epsW to one tenth")
        "bias_lr_schedule": True,
    },
    "schedule": {  # the step learning-rate schedule
        "unit": "iterations",  # iterations | epochs (the unit of `length`)
        "length": 64000,  # He et al. 2015: stop at 64k iterations
        "drops": [0.5, 0.75],  # lr /10 at these fractions of length (32k, 48k of 64k)
        "gamma": 0.1,  # lr factor at each drop
        "warmup_iterations": 0,  # Identity Mappings: 400 iterations at lr 0.01
        "warmup_lr": 0.01,  # constant lr during the warm-up
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
    "batch_size": 128,  # images per SGD step (the global batch of a DDP run)
    "eval_batch_size": 1000,  # images per forward pass when evaluating (memory only)
    "eval_every": 1,  # epochs between evaluations (the last epoch is always evaluated)
    "seed": 0,  # initialisation, data order and augmentation of this run
    # Where a run of the recipe stops, not what it is (excluded from the config hash): an
    # iteration H of the schedule (a figure's x-axis), at which the run is evaluated (the
    # evaluation split and the clean training error), checkpointed and ends; a later call with
    # a larger H extends it from that checkpoint, exactly as if it had never stopped. None:
    # the whole schedule.
    "horizon": None,
    # iterations at which the run is also evaluated on its way (each one a curve row with the
    # evaluation error, the clean training error and the running one), so a run that went on
    # answers every earlier horizon with the numbers a run stopped there gives
    "horizons": [],
    "runtime": {  # how, not what: excluded from the config hash
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "precision": "auto",  # auto (bf16 on CUDA and on CPUs with native bf16) | fp32 | bf16
        # bf16 forced on a CPU without native bf16 (AVX2 only: 6-7x slower than fp32 there) is
        # refused unless this is true
        "allow_slow_bf16": False,
        "channels_last": "auto",  # auto (on for CUDA) | true | false
        "compile": "auto",  # auto (off on CPU) | false | true (= "default") | "default" |
        # "reduce-overhead" (CUDA graphs) | "max-autotune-no-cudagraphs"
        "fused_sgd": "auto",  # auto (on for CUDA) | true | false
        "cudnn_benchmark": True,  # let cuDNN pick the fastest kernels (CUDA only)
        "deterministic": "auto",  # auto: deterministic algorithms on CPU
    },
}

#: keys of how a run is executed (excluded from the config hash)
RUNTIME_KEYS = ("runtime",)
#: keys that change neither what is trained nor what is reported
NON_TRAINING_KEYS = ("eval_batch_size", "eval_every")
#: where a run stops and is measured on its way: not what is trained (excluded from the hash)
HORIZON_KEYS = ("horizon", "horizons")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the dotted key."""


#: ``runtime.compile`` values besides auto / true / false (torch.compile modes)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


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
    _check_horizons(c)
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
    m, d = c["model"], c["data"]
    if not m["name"]:
        raise ConfigError("config key 'model.name' is required")
    if not isinstance(m["name"], str):
        raise ConfigError(f"'model.name' must be a string, got {m['name']!r}")
    for key in ("model.options", "data.options"):
        group, sub = key.split(".")
        if not isinstance(c[group][sub], dict):
            raise ConfigError(f"'{key}' must be a mapping, got {c[group][sub]!r}")
    try:  # one spelling per data set: `CIFAR-10` and `cifar10` are one config
        d["name"] = check_dataset_name(d["name"], d["options"])
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
    if o["momentum"] >= 1:  # the velocity would never decay: SGD's update grows without bound
        raise ConfigError(f"'optim.momentum' must be in [0, 1), got {o['momentum']!r}")
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


def _check_horizons(c: dict) -> None:
    h, marks, s = c["horizon"], c["horizons"], c["schedule"]
    if h is not None:
        _require_int("horizon", h, 1)
    if not isinstance(marks, list):
        raise ConfigError(f"'horizons' must be a list of iterations, e.g. [1600, 3200], got "
                          f"{marks!r}")
    for m in marks:
        _require_int("horizons[]", m, 1)
    # in epochs the length needs the data set's size (fit checks); marks past the end of a
    # shorter profile's schedule are not measured
    if s["unit"] == "iterations" and h is not None and h > s["length"]:
        raise ConfigError(f"'horizon' {h} is past the end of the schedule ('schedule.length' "
                          f"{s['length']} iterations)")


def _check_runtime(rt: dict) -> None:
    dev = rt["device"]
    if not (isinstance(dev, str) and (dev in ("auto", "cpu", "cuda", "mps")
                                      or (dev.startswith("cuda:") and dev[5:].isdigit()))):
        raise ConfigError(f"'runtime.device' must be auto, cpu, cuda, cuda:N or mps, got "
                          f"{dev!r}")
    if rt["precision"] not in ("auto", "fp32", "bf16"):
        raise ConfigError("'runtime.precision' must be auto, fp32 or bf16")
    for key in ("channels_last", "fused_sgd", "deterministic"):
        _require_bool(f"runtime.{key}", rt[key], auto=True)
    _require_bool("runtime.cudnn_benchmark", rt["cudnn_benchmark"])
    _require_bool("runtime.allow_slow_bf16", rt["allow_slow_bf16"])
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
            and _is_number(e[1]) and e[1] >= 0 for e in o["lr_mult"]):
        raise ConfigError("'optim.lr_mult' must be a list of [parameter-name prefix, "
                          f"multiplier >= 0] pairs, got {o['lr_mult']!r}")
    if not (_is_number(o["bias_lr_mult"]) and o["bias_lr_mult"] >= 0):
        raise ConfigError(f"'optim.bias_lr_mult' must be a number >= 0, got {o['bias_lr_mult']!r}")
    for key in ("bias_decay", "bias_lr_schedule"):
        if not isinstance(o[key], bool):
            raise ConfigError(f"'optim.{key}' must be true or false, got {o[key]!r}")
    e = s["warmup_until_error"]
    if e is not None:
        if not (_is_number(e) and 0 < e <= 100):
            raise ConfigError(f"'schedule.warmup_until_error' must be a percentage in (0, 100] "
                              f"or null, got {e!r}")
        if s["warmup_iterations"] <= 0:
            raise ConfigError("'schedule.warmup_until_error' needs 'schedule.warmup_iterations' "
                              "> 0: it is the cap of the rule")
    w = s["warmup_window"]
    if isinstance(w, bool) or not (isinstance(w, int) and w > 0):
        raise ConfigError(f"'schedule.warmup_window' must be a positive integer, got {w!r}")


def eval_split(cfg: dict) -> str:
    """The split a run is evaluated on: ``val`` when ``data.val_size`` holds a stratified
    validation split out of the training set (the test set is then never read), else ``test``."""
    return "val" if cfg["data"]["val_size"] > 0 else "test"


def config_hash(cfg: dict) -> str:
    """Hash of what is trained: the resolved config minus seed, how it runs (``runtime``, the
    precision included), where it stops (``horizon``, ``horizons``) and where the data lie; an
    image folder enters by its content checksum, not its path (``convnets.data.data_identity``),
    and the model by what it is, not how the config spelled it
    (``convnets.models.model_identity``: ``unit: original`` on ResNet-110 is ResNet-110).

    Precision is a runtime switch: bf16 autocast and fp32 train the same recipe, so their
    seeds pool in one cell, and each run records its precision (tag, ledger) so a table can
    show the mix and flag a cell whose two precisions disagree. Keys made under an earlier
    rule (``HASH_RULES``) are mapped to these: old ledger parts by ``analysis.rekey`` and
    their ``configs.json``, a live store's runs by the runner (``Job.legacy_hashes``)."""
    return hash_of_resolved(resolve_config(cfg))


#: the rules config keys were made by, oldest first. "precision": until 2026-12-03 the hash held
#: the resolved precision. "spelled": until 2026-12-07 it held the model options as a config
#: spelled them (an option set to its default made another key) and ``data.split_seed`` with
#: no validation split (where it selects nothing). "identity": today's rule.
HASH_RULES = ("precision", "spelled", "identity")


def hash_of_resolved(c: dict, *, rule: str = "identity", precision: str | None = None) -> str:
    """``config_hash`` of an already resolved config, by ``rule`` (``HASH_RULES``; the
    "precision" rule needs the run's recorded ``precision``: bf16, fp32 or ''). Earlier rules only serve to
    recognise keys made before: re-keying old ledger parts and finding a live store's runs."""
    c = copy.deepcopy(c)
    data_dir = c["data"].pop("data_dir", None)
    c["data"]["name"] = data_identity(c["data"]["name"], data_dir, c["data"]["options"])
    return identified_hash(c, rule=rule, precision=precision)


def identified_hash(c: dict, *, rule: str = "identity", precision: str | None = None) -> str:
    """``hash_of_resolved`` of a config whose data are already named by their identity (a
    ledger part's ``configs.json``, where an image folder is ``imagefolder:<checksum>``)."""
    if rule not in HASH_RULES:
        raise ValueError(f"unknown hash rule {rule!r}; one of {', '.join(HASH_RULES)}")
    if rule == "precision" and not isinstance(precision, str):
        raise ValueError(f"the 'precision' hash rule needs the run's precision (as the ledger "
                         f"recorded it, '' where it recorded none), got {precision!r}")
    c = copy.deepcopy(c)
    for key in RUNTIME_KEYS + NON_TRAINING_KEYS + HORIZON_KEYS + ("seed",):
        c.pop(key, None)
    c["data"].pop("data_dir", None)
    if rule == "identity":
        from convnets.models import model_identity  # the registry imports torch

        c["model"] = model_identity(c["model"]["name"], c["model"].get("options") or {})
        if not c["data"].get("val_size"):
            c["data"].pop("split_seed", None)  # selects nothing without a validation split
    if rule == "precision":
        c["precision"] = precision
    blob = json.dumps(c, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
