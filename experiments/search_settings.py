"""lr-search settings, storage, sampler and pruner, trial configs and studies
(``experiments/lr_search.py`` runs the search).

Search settings live in ``experiments/search/<NAME>.yaml`` (optional; see ``SEARCH_KEYS``), not in
the claim spec, whose schema is strict.

Storage: ``--storage URL``; default ``$OPTUNA_STORAGE``, else SQLite ``optuna.db`` at the
repository root. Any SQLAlchemy URL works (``postgresql://user@host/db`` for workers on several
machines, see docs/scaling.md); ``journal:PATH`` is Optuna's file journal
(``JournalStorage(JournalFileBackend(PATH))``), safe for several processes on one machine.

A fresh SQLite file (Optuna's or MLflow's) is opened under ``first_use_lock``, so processes
started at once do not both create its schema.

A trial's config (``trial_config``) is the job's with a validation split, the budget schedule
and evaluation every epoch; ``require_validation_split`` refuses one that would read the test
set. ``open_study`` refuses to add trials to a study made for another search.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.storages.journal import JournalFileBackend, JournalStorage

from convnets.config import config_hash, resolve_config
from convnets.data import load_dataset
from convnets.names import REPO_ROOT
from experiments.locks import first_use_lock
from experiments.spec import PROFILES

SEARCH_DIR = Path(__file__).resolve().parent / "search"

VAL_FRACTION = 0.1  # of the training images, when the spec sets no data.val_size ...
VAL_CAP = 5000  # ... and at most this many (CIFAR: 5000 of 50000)
DEFAULT_LR_RANGE = (1e-3, 1.0)
DEFAULT_BUDGET_EPOCHS = {"smoke": 2, "cpu": 3, "quick": 10, "paper": 30}
DEFAULT_TRIALS = {"smoke": 4, "cpu": 8, "quick": 20, "paper": 20}
VAL_FRACTION = 0.1  # of the training images, when the spec sets no data.val_size ...
VAL_CAP = 5000  # ... and at most this many (CIFAR: 5000 of 50000)

# Every key a search file may hold (unknown keys are errors).
SEARCH_KEYS = {
    "lr_range": "[low, high]: log-uniform search range of optim.lr (default [1e-3, 1])",
    "grid": "list of learning rates: evaluate exactly these (GridSampler) instead of TPE",
    "trials": "trials per call: int or {profile: int} (default smoke 4, quick 20, paper 20)",
    "budget_epochs": "epochs per trial: int or {profile: int} (default smoke 2, quick 10, paper 30)",
    "pruner": "median (default) | hyperband | none",
    "pruner_options": "keyword options of the pruner, e.g. {n_startup_trials: 3}",
    "n_startup_trials": "random trials before TPE models the results (default 10)",
    "val_size": "validation images held out of the training set (default: 10%, at most 5000)",
    "variants": "'group/variant' or 'variant' names to search (default: the profile's all)",
}


class SearchError(ValueError):
    """A search setting is wrong, or a stored study does not match the requested search."""


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass
class Settings:
    lr_range: tuple[float, float] = DEFAULT_LR_RANGE
    grid: list[float] | None = None
    trials: int | None = None  # None: the profile default (grid: points not yet evaluated)
    budget_epochs: int = 2
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    n_startup_trials: int = 10
    val_size: int | None = None
    variants: list[str] | None = None

    @property
    def space(self) -> str:
        if self.grid:
            return "grid " + ",".join(f"{v:g}" for v in self.grid)
        return f"loguniform {self.lr_range[0]:g}..{self.lr_range[1]:g}"


def _per_profile(where: str, value: Any, profile: str, default: dict[str, int]) -> int:
    if isinstance(value, dict):
        unknown = set(value) - set(PROFILES)
        if unknown:
            raise SearchError(f"{where}: unknown profiles {sorted(unknown)}")
        value = value.get(profile, default[profile])
    if value is None:
        value = default[profile]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SearchError(f"{where}: must be a positive integer, got {value!r}")
    return value


def search_file(name: str) -> Path:
    return SEARCH_DIR / f"{Path(name).stem}.yaml"


def load_settings(path: Path | None, profile: str) -> Settings:
    """Read (optional) search settings; defaults apply to every missing key."""
    raw: dict = {}
    where = str(path)
    if path is not None and path.exists():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise SearchError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise SearchError(f"{path}: expected a mapping")
        for key in raw:
            if key not in SEARCH_KEYS:
                raise SearchError(f"{path}: unknown key {key!r}; allowed: {', '.join(SEARCH_KEYS)}")
    s = Settings()
    if "lr_range" in raw:
        lo_hi = raw["lr_range"]
        if not (isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2
                and all(isinstance(v, (int, float)) for v in lo_hi) and 0 < lo_hi[0] < lo_hi[1]):
            raise SearchError(f"{where}: lr_range must be [low, high] with 0 < low < high")
        s.lr_range = (float(lo_hi[0]), float(lo_hi[1]))
    if raw.get("grid") is not None:
        grid = raw["grid"]
        if not (isinstance(grid, list) and grid and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in grid)):
            raise SearchError(f"{where}: grid must be a non-empty list of positive learning rates")
        s.grid = [float(v) for v in dict.fromkeys(grid)]
    if raw.get("trials") is not None:
        s.trials = _per_profile(f"{where}: trials", raw["trials"], profile, DEFAULT_TRIALS)
    s.budget_epochs = _per_profile(f"{where}: budget_epochs", raw.get("budget_epochs"), profile,
                                   DEFAULT_BUDGET_EPOCHS)
    s.pruner = str(raw.get("pruner", "median")).lower()
    if s.pruner not in ("median", "hyperband", "none"):
        raise SearchError(f"{where}: pruner must be median, hyperband or none, got {s.pruner!r}")
    s.pruner_options = dict(raw.get("pruner_options") or {})
    if "n_startup_trials" in raw:
        s.n_startup_trials = int(raw["n_startup_trials"])
    if raw.get("val_size") is not None:
        v = raw["val_size"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SearchError(f"{where}: val_size must be a positive integer, got {v!r}")
        s.val_size = v
    if raw.get("variants") is not None:
        s.variants = [str(v) for v in raw["variants"]]
    return s


# ---------------------------------------------------------------------------------------------
# Storage, sampler, pruner
# ---------------------------------------------------------------------------------------------


def default_storage() -> str:
    return os.environ.get("OPTUNA_STORAGE") or f"sqlite:///{REPO_ROOT / 'optuna.db'}"


def _rdb_url(url: str) -> str:
    """SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; use psycopg2 when only it is
    installed (the dev extra installs psycopg2-binary)."""
    m = re.match(r"^(postgres|postgresql)://", url)
    if m:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "postgresql+psycopg2://" + url[m.end():]
    return url


def public_storage(url: str) -> str:
    """The storage URL without a password (for tags and messages)."""
    return re.sub(r"(://[^/:@]+):[^/@]*@", r"\1@", url)


def check_storage(url: str) -> None:
    """``SearchError`` in one line for a storage URL that names no database Optuna can open
    (``foo://bar``: SQLAlchemy's "Can't load plugin" traceback), before any study or run."""
    if url.startswith("journal:"):
        if not url[len("journal:"):].strip():
            raise SearchError("--storage journal:PATH needs a path")
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(_rdb_url(url)).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise SearchError(f"--storage {public_storage(url)!r}: not a storage Optuna can open "
                          f"({str(err).splitlines()[0]}); use a database URL such as "
                          "sqlite:///optuna.db or postgresql://user@host/db, or journal:PATH") \
            from None


def make_storage(url: str):
    """An Optuna storage for ``url``: ``journal:PATH`` or any SQLAlchemy database URL."""
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:"):
        # several workers write to one file: wait for the lock instead of failing at once
        with first_use_lock(url):
            return optuna.storages.RDBStorage(url,
                                              engine_kwargs={"connect_args": {"timeout": 120}})
    # a database server shared by several machines: a worker that dies leaves its trial
    # RUNNING; the heartbeat marks such trials FAIL after the grace period
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(_rdb_url(url), heartbeat_interval=60,
                                          grace_period=180)


def make_sampler(s: Settings, seed: int):
    """GridSampler for a grid (same seed in every worker: trial k takes the k-th point of one
    seeded shuffle of the grid), else TPE.

    TPE settings relied on (optuna 5.0): ``multivariate=True`` and ``constant_liar=True`` are the
    defaults there (multivariate only matters with more than one parameter; constant liar makes
    concurrent workers treat RUNNING trials as bad, so they spread out instead of suggesting the
    same lr). Both are passed explicitly, so an older or newer default changes nothing.
    ``n_startup_trials`` random trials come first; ``seed`` fixes every draw of this sampler.
    """
    if s.grid:
        return optuna.samplers.GridSampler({"lr": s.grid}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials,
                                      multivariate=True, constant_liar=True)


def make_pruner(s: Settings):
    opts = dict(s.pruner_options)
    try:
        if s.pruner == "median":
            return optuna.pruners.MedianPruner(**opts)
        if s.pruner == "hyperband":
            opts.setdefault("min_resource", 1)
            opts.setdefault("max_resource", s.budget_epochs)
            return optuna.pruners.HyperbandPruner(**opts)
    except TypeError as err:
        raise SearchError(f"pruner_options for {s.pruner}: {err}") from None
    return optuna.pruners.NopPruner()


def study_name(experiment: str, group: str, variant: str, profile: str) -> str:
    return f"lr-{experiment}-{group}/{variant}-{profile}"


# ---------------------------------------------------------------------------------------------
# Trial configs: validation split, budget; the test set is never read
# ---------------------------------------------------------------------------------------------


def train_size(cfg: dict) -> tuple[int, Any]:
    """Number of training images (the loaded data set is returned for reuse in-process).
    Only ``.train`` of the data set is touched."""
    d = cfg["data"]
    ds = load_dataset(d["name"], d["data_dir"], **d["options"])
    return int(ds.train.labels.shape[0]), ds


def default_val_size(n_train: int) -> int:
    return max(1, min(VAL_CAP, round(VAL_FRACTION * n_train)))


def trial_config(job_config: dict, s: Settings, n_train: int, seed: int) -> dict:
    """The job's resolved config for a search trial: a validation split, the budget schedule,
    evaluation every epoch, the search seed."""
    cfg = copy.deepcopy(job_config)
    val = s.val_size or cfg["data"]["val_size"] or default_val_size(n_train)
    if not 0 < val < n_train:
        raise SearchError(f"val_size {val} must be between 1 and the {n_train} training images")
    cfg["data"]["val_size"] = int(val)
    cfg["schedule"]["unit"] = "epochs"
    cfg["schedule"]["length"] = int(s.budget_epochs)
    cfg["eval_every"] = 1
    cfg["seed"] = int(seed)
    cfg = resolve_config(cfg)
    require_validation_split(cfg)
    return cfg


def require_validation_split(cfg: dict) -> None:
    """A search config must evaluate on the validation split (fit then never reads the test
    set). Raised rather than asserted, so ``python -O`` keeps the check."""
    if not cfg["data"]["val_size"] > 0:
        raise RuntimeError("lr-search config without data.val_size > 0 would evaluate on the "
                           "test set; refusing to train")


# ---------------------------------------------------------------------------------------------
# One variant's study
# ---------------------------------------------------------------------------------------------


@dataclass
class Target:
    """Everything a worker process needs to run trials of one study (picklable)."""

    experiment: str
    group: str
    variant: str
    profile: str
    study: str
    storage: str
    config: dict  # trial config with the spec's lr (replaced per trial)
    settings: Settings
    seed: int  # training seed of every trial; also the grid's shuffle
    sampler_seed: int = 0  # TPE draws (give each machine its own when several share a study)
    experiment_id: str = ""
    parent_run_id: str = ""

    @property
    def full(self) -> str:
        return f"{self.group}/{self.variant}"


def _study_attrs(t: Target) -> dict[str, Any]:
    """What must not change between calls adding trials to one study."""
    cfg = copy.deepcopy(t.config)
    cfg["optim"]["lr"] = 1.0
    return {"budget_epochs": t.settings.budget_epochs, "val_size": t.config["data"]["val_size"],
            "space": t.settings.space, "seed": t.seed, "config_hash": config_hash(cfg)}


def open_study(t: Target):
    """Create the study, or load it and check it was made for the same search."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(t.storage)
    study = optuna.create_study(storage=storage, study_name=t.study, direction="minimize",
                                load_if_exists=True)
    want = _study_attrs(t)
    have = study.user_attrs
    if have:
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if diff:
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise SearchError(
                f"study {t.study!r} in {public_storage(t.storage)} was made for another search "
                f"({what}); delete it (optuna delete-study --study-name '{t.study}' --storage "
                f"URL) or use another --storage")
    else:
        for k, v in want.items():
            study.set_user_attr(k, v)
    return study
