"""Optuna learning-rate search: ``python -m experiments lr-search NAME [options]``.

One Optuna study per (claim, group/variant, profile), named ``lr-<claim>-<group>/<variant>-<profile>``
(e.g. ``lr-degradation-plain/plain20-smoke``). A trial trains the variant's config with one
learning rate for a short budget and returns its **validation** error (%):

* the evaluation set is a fixed stratified split of the training set (``data.val_size``; the
  spec's own if it sets one, else 10% of the training images capped at 5000: 5000 of CIFAR's
  50000, 51 of the smoke profile's 512 synthetic images). ``fit`` never reads ``dataset.test``
  when ``val_size > 0``, and every trial config is checked for it before ``fit`` is called;
* the budget is ``budget_epochs`` epochs (default smoke 2, quick 10, paper 30): the spec's
  schedule with its length replaced by the budget (unit epochs), same relative drops and gamma;
* search space: log-uniform ``lr`` in ``[1e-3, 1]`` with seeded TPE, or a ``grid`` of values
  (``optuna.samplers.GridSampler``);
* pruning: the validation error is reported after every epoch and the trial is pruned when the
  pruner says so (``MedianPruner`` by default, ``HyperbandPruner`` with ``pruner: hyperband``).
  A diverged trial (non-finite loss) completes with error 100%.

Search settings live in ``experiments/search/<NAME>.yaml`` (optional; see ``SEARCH_KEYS``), not in
the claim spec, whose schema is strict.

Trials per call: ``--trials N`` runs N *more* trials each call (rerunning the same command adds N
trials to the same study; ``load_if_exists``). With a grid the default is the grid points not yet
evaluated. ``--workers K`` starts K processes on the same study and splits the N trials between
them (N // K each, the remainder to the first ones), so the study gains exactly N trials; worker 0
is the calling process, workers 1..K-1 are spawned processes (``multiprocessing``, spawn).

Storage: ``--storage URL``; default ``$OPTUNA_STORAGE``, else SQLite ``optuna.db`` at the
repository root. Any SQLAlchemy URL works (``postgresql://user@host/db`` for workers on several
machines, see docs/scaling.md); ``journal:PATH`` is Optuna's file journal
(``JournalStorage(JournalFileBackend(PATH))``), safe for several processes on one machine.

MLflow (the claim's experiment): one parent run per study, named ``lr-search/<group>/<variant>``,
tagged ``search=true``, reused when the search is rerun; one nested run per trial
(``mlflow.parentRunId``) with params ``lr`` and ``trial_number``, tags ``study`` and
``trial_state`` (COMPLETE / PRUNED / FAIL) and the per-epoch validation curve (step = epoch).
Search runs carry **no** ``variant`` / ``group`` / ``config_hash`` tags (they use
``search_group`` / ``search_variant``), so the analysis never mistakes them for final runs.

The best lr per variant goes to the parent run (tags ``best_lr``, ``best_val_error``) and to
``experiments/tuned/<NAME>.yaml`` (``$CONVNETS_TUNED_DIR`` overrides the folder), merged with the
entries already there; ``python -m experiments run NAME --lr tuned`` reads it. An entry from a
bigger profile (paper > quick > smoke) is not replaced by a smaller one unless ``--overwrite``.
Each entry records its profile, data set (``dataset_id``: name and content options, plus the
data's checksum) and budget; ``run --lr tuned`` refuses an entry searched for another profile or
data set (smoke values come from synthetic data) unless ``--allow-tuned-mismatch``.

A fresh SQLite file (Optuna's or MLflow's) is opened under ``first_use_lock``, so processes
started at once do not both create its schema.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import json
import os
import re
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from convnets import tracking
from experiments.spec import PROFILES, SpecError, expand, load_spec, parse_set, require_devices

SEARCH_DIR = Path(__file__).resolve().parent / "search"
TUNED_DIR = Path(__file__).resolve().parent / "tuned"

DEFAULT_LR_RANGE = (1e-3, 1.0)
DEFAULT_BUDGET_EPOCHS = {"smoke": 2, "cpu": 3, "quick": 10, "paper": 30}
DEFAULT_TRIALS = {"smoke": 4, "cpu": 8, "quick": 20, "paper": 20}
VAL_FRACTION = 0.1  # of the training images, when the spec sets no data.val_size ...
VAL_CAP = 5000  # ... and at most this many (CIFAR: 5000 of 50000)
DIVERGED_ERROR = 100.0  # objective of a trial whose loss became non-finite
PROFILE_RANK = {"smoke": 0, "cpu": 1, "quick": 2, "paper": 3}

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
    return os.environ.get("OPTUNA_STORAGE") or f"sqlite:///{tracking.REPO_ROOT / 'optuna.db'}"


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


@contextlib.contextmanager
def first_use_lock(url: str):
    """Hold an exclusive lock beside a SQLite database while a store opens it.

    Optuna and MLflow both create their schema (and run their migrations) on the first open;
    two processes opening a fresh file at once both try, and the second dies (``UNIQUE
    constraint failed: alembic_version.version_num``, ``duplicate column name``). The lock is
    a separate ``<db>.init-lock`` file: locking the database file itself would be wrong, since
    closing any descriptor of it drops the POSIX locks SQLite holds in this process. Database
    servers (PostgreSQL) and journals need no lock."""
    m = re.match(r"^sqlite:///(.+)$", url)
    if not m or m.group(1) in (":memory:", ""):
        yield
        return
    lock = Path(m.group(1)).with_name(Path(m.group(1)).name + ".init-lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def make_storage(url: str):
    """An Optuna storage for ``url``: ``journal:PATH`` or any SQLAlchemy database URL."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

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
    import optuna

    if s.grid:
        return optuna.samplers.GridSampler({"lr": s.grid}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials,
                                      multivariate=True, constant_liar=True)


def make_pruner(s: Settings):
    import optuna

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


def _load_train_size(cfg: dict) -> tuple[int, Any]:
    """Number of training images (the loaded data set is returned for reuse in-process).
    Only ``.train`` of the data set is touched."""
    from convnets import train as T

    d = cfg["data"]
    ds = T.load_dataset(d["name"], d["data_dir"], **d["options"])
    return int(ds.train.labels.shape[0]), ds


def default_val_size(n_train: int) -> int:
    return max(1, min(VAL_CAP, round(VAL_FRACTION * n_train)))


def trial_config(job_config: dict, s: Settings, n_train: int, seed: int) -> dict:
    """The job's resolved config for a search trial: a validation split, the budget schedule,
    evaluation every epoch, the search seed."""
    from convnets.train import resolve_config

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
# One variant's search
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


def _trial_tags(t: Target, number: int) -> dict[str, str]:
    return {
        "mlflow.parentRunId": t.parent_run_id,
        "search": "true",
        "study": t.study,
        "trial_number": str(number),
        "trial_state": "RUNNING",
        "experiment": t.experiment,
        "search_group": t.group,
        "search_variant": t.variant,
        "profile": t.profile,
    }


def _objective(trial, t: Target, cl, dataset, worker: int = 0):
    import optuna

    from convnets.train import DivergedError, fit

    s = t.settings
    lo, hi = (min(s.grid), max(s.grid)) if s.grid else s.lr_range
    lr = trial.suggest_float("lr", lo, hi, log=True)
    cfg = copy.deepcopy(t.config)
    cfg["optim"]["lr"] = lr
    require_validation_split(cfg)
    budget = int(cfg["schedule"]["length"])
    run = cl.create_run(t.experiment_id, run_name=f"lr-search/{t.full}/trial{trial.number}",
                        tags=_trial_tags(t, trial.number))
    logger = tracking.RunLogger(cl, run.info.run_id)
    logger.log_params({"lr": repr(float(lr)), "trial_number": str(trial.number),
                       "budget_epochs": str(budget)})
    trial.set_user_attr("mlflow_run_id", run.info.run_id)
    trial.set_user_attr("worker", worker)

    def on_epoch_end(m: dict) -> None:
        epoch, err = int(m["epoch"]), float(m["val_error"])
        logger.log_epoch(epoch, {"val_error": err, "train_loss": m["train_loss"],
                                 "train_error": m["train_error"]})
        trial.report(err, epoch)
        # the last epoch's value is the trial's result: never prune a finished trial
        if epoch < budget and trial.should_prune():
            raise optuna.TrialPruned(f"val error {err:.2f}% at epoch {epoch}")

    try:
        result = fit(cfg, progress=False, on_epoch_end=on_epoch_end, dataset=dataset)
    except optuna.TrialPruned:
        logger.set_tags({"trial_state": "PRUNED"})
        logger.finish("FINISHED")
        raise
    except DivergedError as err:
        trial.set_user_attr("diverged", True)
        logger.log_epoch(budget, {"final_val_error": DIVERGED_ERROR})
        logger.set_tags({"trial_state": "COMPLETE", "diverged": "true",
                         "failure_reason": str(err)[:5000]})
        logger.finish("FINISHED")
        return DIVERGED_ERROR
    except BaseException as err:
        logger.set_tags({"trial_state": "FAIL",
                         "failure_reason": f"{type(err).__name__}: {err}"[:5000]})
        logger.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        if not isinstance(err, KeyboardInterrupt):
            traceback.print_exc()
        raise
    if result.eval_split != "val":  # belt and braces: fit evaluated on the validation split
        raise RuntimeError(f"lr-search trial evaluated on {result.eval_split!r}, not 'val'")
    value = float(result.final["final_val_error"])
    logger.log_epoch(budget, {"final_val_error": value})
    logger.set_tags({"trial_state": "COMPLETE"})
    logger.finish("FINISHED")
    return value


def _print_trial(study, frozen) -> None:
    lr = frozen.params.get("lr")
    lr_s = "?" if lr is None else f"{lr:.4g}"
    val = "" if frozen.value is None else f" val error {frozen.value:6.2f}%"
    at = f" (pruned at epoch {frozen.last_step})" if frozen.state.name == "PRUNED" else ""
    print(f"  trial {frozen.number:>3d} lr {lr_s:<10s} {frozen.state.name:8s}{val}{at}", flush=True)


def run_trials(t: Target, n_trials: int, worker: int = 0, n_workers: int = 1,
               dataset=None) -> None:
    """Run ``n_trials`` trials of ``t``'s study in this process (one worker)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import torch

    threads = torch.get_num_threads()
    if n_workers > 1:  # K processes share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_workers))
    try:
        _optimize(t, n_trials, worker, dataset)
    finally:
        torch.set_num_threads(threads)


def _optimize(t: Target, n_trials: int, worker: int, dataset) -> None:
    import optuna

    storage = make_storage(t.storage)
    s = t.settings
    if s.grid:
        seed = t.seed  # one shuffle of the grid for every worker and call
    else:  # a different (deterministic) stream per call and worker: no repeated random trials
        n_before = len(optuna.load_study(study_name=t.study, storage=storage).trials)
        seed = (t.sampler_seed * 1_000_003 + n_before * 1009 + worker) % (2**31)
    study = optuna.load_study(study_name=t.study, storage=storage,
                              sampler=make_sampler(s, seed), pruner=make_pruner(s))
    cl = tracking.client()
    study.optimize(lambda trial: _objective(trial, t, cl, dataset, worker), n_trials=n_trials,
                   catch=(Exception,), callbacks=[_print_trial])


def _worker_main(t: Target, n_trials: int, worker: int, n_workers: int) -> None:
    run_trials(t, n_trials, worker, n_workers)


def _study_attrs(t: Target) -> dict[str, Any]:
    """What must not change between calls adding trials to one study."""
    from convnets.train import config_hash

    cfg = copy.deepcopy(t.config)
    cfg["optim"]["lr"] = 1.0
    return {"budget_epochs": t.settings.budget_epochs, "val_size": t.config["data"]["val_size"],
            "space": t.settings.space, "seed": t.seed, "config_hash": config_hash(cfg)}


def open_study(t: Target):
    """Create the study, or load it and check it was made for the same search."""
    import optuna

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


def _parent_run(cl, t: Target, n_train: int) -> str:
    """The study's parent MLflow run: found again on a rerun, else created."""
    storage = public_storage(t.storage)
    found = cl.search_runs(
        [t.experiment_id],
        filter_string=(f"tags.search = 'true' and tags.study = '{t.study}' "
                       f"and tags.optuna_storage = '{storage}' and tags.search_parent = 'true'"),
        order_by=["attributes.start_time DESC"],
    )
    if found:
        run_id = found[0].info.run_id
        cl.update_run(run_id, status="RUNNING")
        return run_id
    tags = {"search": "true", "search_parent": "true", "study": t.study,
            "optuna_storage": storage, "experiment": t.experiment, "search_group": t.group,
            "search_variant": t.variant, "profile": t.profile,
            "budget_epochs": str(t.settings.budget_epochs), "search_space": t.settings.space,
            "pruner": t.settings.pruner, "val_size": str(t.config["data"]["val_size"]),
            "n_train_images": str(n_train), **tracking.environment_tags()}
    run_id = cl.create_run(t.experiment_id, run_name=f"lr-search/{t.full}", tags=tags).info.run_id
    params = tracking.flatten({k: v for k, v in t.config.items()})
    params.pop("optim.lr", None)  # searched: a param of each trial
    params["search.space"] = t.settings.space
    params["search.seed"] = str(t.seed)
    tracking.RunLogger(cl, run_id).log_params(params)
    return run_id


def _split(n: int, k: int) -> list[int]:
    return [n // k + (i < n % k) for i in range(k)]


def search_variant(t: Target, *, trials: int | None, workers: int, n_train: int,
                   dataset=None) -> dict:
    """Add trials to one variant's study; returns its summary (best lr among COMPLETE trials)."""
    import multiprocessing

    import optuna

    study = open_study(t)
    cl = tracking.client()
    t.parent_run_id = _parent_run(cl, t, n_train)
    s = t.settings
    if trials is None:
        if s.grid:
            done = {tr.params.get("lr") for tr in study.trials if tr.state.is_finished()}
            trials = sum(g not in done for g in s.grid)
        else:
            trials = s.trials or DEFAULT_TRIALS[t.profile]
    workers = max(1, min(workers, trials)) if trials else 1
    print(f"[{t.experiment}] {t.full}: study {t.study} ({public_storage(t.storage)}), "
          f"{len(study.trials)} trials so far, +{trials} on {workers} worker(s); "
          f"{s.space}, {s.budget_epochs} epochs, val {t.config['data']['val_size']} images, "
          f"parent run {t.parent_run_id[:8]}", flush=True)
    status = "FINISHED"
    try:
        if trials and workers == 1:
            run_trials(t, trials, 0, 1, dataset)
        elif trials:
            # worker 0 is this process (already warm); workers 1..K-1 are spawned processes
            shares = _split(trials, workers)
            ctx = multiprocessing.get_context("spawn")
            procs = [ctx.Process(target=_worker_main, args=(t, n, i, workers))
                     for i, n in enumerate(shares) if i and n]
            for p in procs:
                p.start()
            try:
                run_trials(t, shares[0], 0, workers, dataset)
            finally:
                for p in procs:
                    p.join()
            bad = [p.exitcode for p in procs if p.exitcode]
            if bad:
                status = "FAILED"
                print(f"  {len(bad)} worker(s) exited with codes {bad}", flush=True)
    except KeyboardInterrupt:
        cl.set_terminated(t.parent_run_id, status="KILLED")
        raise
    study = optuna.load_study(study_name=t.study, storage=make_storage(t.storage))
    all_trials = study.get_trials(deepcopy=False)
    counts = {st: sum(tr.state.name == st for tr in all_trials)
              for st in ("COMPLETE", "PRUNED", "FAIL")}
    done = [tr for tr in all_trials if tr.state.name == "COMPLETE" and tr.value is not None]
    best = min(done, key=lambda tr: (tr.value, tr.number)) if done else None
    logger = tracking.RunLogger(cl, t.parent_run_id)
    tags = {"n_trials": len(all_trials), **{f"n_{k.lower()}": v for k, v in counts.items()}}
    row = {"variant": t.full, "study": t.study, "trials": len(all_trials), **counts,
           "best_lr": None, "best_val_error": None, "best_trial": None}
    if best is not None:
        tags.update(best_lr=repr(float(best.params["lr"])), best_val_error=f"{best.value:.4f}",
                    best_trial=best.number)
        logger.log_epoch(len(all_trials), {"best_val_error": float(best.value)})
        row.update(best_lr=float(best.params["lr"]), best_val_error=float(best.value),
                   best_trial=best.number)
    else:
        status = "FAILED"
    logger.set_tags(tags)
    logger.finish(status)
    return row


# ---------------------------------------------------------------------------------------------
# Tuned learning rates
# ---------------------------------------------------------------------------------------------


def tuned_dir() -> Path:
    """Where best learning rates are recorded ($CONVNETS_TUNED_DIR overrides)."""
    return Path(os.environ.get("CONVNETS_TUNED_DIR") or TUNED_DIR)


def dataset_id(cfg: dict) -> str:
    """What a tuned lr was searched on: the data set's name and the options that change its
    content (``label`` and ``cache`` do not), e.g. ``synthetic {"image_size": 16, ...}``."""
    d = cfg["data"]
    opts = {k: v for k, v in sorted((d.get("options") or {}).items())
            if k not in ("label", "cache") and v is not None}
    return f"{d['name']} {json.dumps(opts, sort_keys=True)}" if opts else str(d["name"])


def check_tuned(name: str, jobs: list, *, allow_mismatch: bool = False) -> None:
    """Refuse tuned learning rates searched for another profile or data set than the job's
    (a smoke search on synthetic data says nothing about CIFAR-10), unless ``allow_mismatch``;
    an allowed mismatch is tagged on the run (``tuned_from``)."""
    path = tuned_dir() / f"{Path(name).stem}.yaml"
    best = (yaml.safe_load(path.read_text()) or {}).get("best") or {}
    bad = []
    for job in jobs:
        entry = best.get(f"{job.group}/{job.variant}") or {}
        have = (entry.get("profile"), entry.get("dataset"))
        want = (job.tags.get("profile"), dataset_id(job.config))
        if have != want:
            job.tags["tuned_from"] = f"profile {have[0]}, dataset {have[1]}"
            bad.append(f"{job.group}/{job.variant}: tuned for profile {have[0]!r} on "
                       f"{have[1]!r}, this run is profile {want[0]!r} on {want[1]!r}")
    if bad and not allow_mismatch:
        lines = "\n  ".join(dict.fromkeys(bad))
        raise SpecError(f"--lr tuned: {path} was searched for other runs:\n  {lines}\n"
                        f"run `lr-search {Path(name).stem} --profile {jobs[0].tags['profile']}`"
                        " first, or pass --allow-tuned-mismatch to use these values anyway")


def record_best(experiment: str, rows: list[dict], *, profile: str, budget_epochs: int,
                storage: str, overwrite: bool = False) -> Path:
    """Merge the best lr per variant into ``tuned_dir()/<experiment>.yaml``."""
    path = tuned_dir() / f"{experiment}.yaml"
    data = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    best = data.setdefault("best", {}) or {}
    data["best"] = best
    for r in rows:
        if r["best_lr"] is None:
            continue
        old = best.get(r["variant"]) or {}
        old_rank = PROFILE_RANK.get(str(old.get("profile")), -1)
        if old and old_rank > PROFILE_RANK[profile] and not overwrite:
            print(f"  {r['variant']}: keeping the {old['profile']} profile's lr {old['lr']:g} in "
                  f"{path} (this is {profile}; --overwrite replaces it)", flush=True)
            continue
        best[r["variant"]] = {
            "dataset": r["dataset"],
            "dataset_checksum": r["dataset_checksum"],
            "lr": float(f"{r['best_lr']:.6g}"),
            "val_error": round(float(r["best_val_error"]), 4),
            "trials": int(r["trials"]),
            "study": r["study"],
            "profile": profile,
            "budget_epochs": int(budget_epochs),
            "storage": public_storage(storage),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    head = (f"# Best learning rates found by `python -m experiments lr-search {experiment}`\n"
            f"# (validation error after a short budget); `run {experiment} --lr tuned` uses them.\n")
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(head + yaml.safe_dump(data, sort_keys=True))
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def lr_search(
    name: str,
    profile: str = "smoke",
    *,
    variants: list[str] | None = None,
    trials: int | None = None,
    budget_epochs: int | None = None,
    storage: str | None = None,
    workers: int = 1,
    seed: int = 0,
    sampler_seed: int | None = None,
    settings_file: str | Path | None = None,
    sets: list[tuple[str, Any]] = (),
    dataset: str | None = None,
    data_dir: str | None = None,
    device: str | None = None,
    record: bool = True,
    overwrite: bool = False,
) -> list[dict]:
    """Search the lr of every (selected) variant of claim ``name``; returns one row per variant."""
    spec = load_spec(name)
    path = Path(settings_file) if settings_file else search_file(spec["name"])
    if settings_file and not path.exists():
        raise SearchError(f"no search file {path}")
    s = load_settings(path, profile)
    if budget_epochs is not None:
        if budget_epochs < 1:
            raise SearchError(f"--budget-epochs must be >= 1, got {budget_epochs}")
        s.budget_epochs = int(budget_epochs)
    if trials is not None and trials < 0:
        raise SearchError(f"--trials must be >= 0, got {trials}")
    if workers < 1:
        raise SearchError(f"--workers must be >= 1, got {workers}")
    storage = storage or default_storage()
    jobs = expand(spec, profile, seeds=1, sets=list(sets), only=variants or s.variants or None,
                  dataset=dataset, data_dir=data_dir, device=device)
    require_devices(jobs)  # before any study or MLflow run exists
    with first_use_lock(tracking.tracking_uri()):  # a fresh MLflow store: one creator
        cl = tracking.client()
        exp_id = tracking.experiment_id(cl, spec["name"], {"claim": spec["claim"].strip()})
    loaded: dict[str, tuple[int, Any]] = {}
    rows = []
    for job in jobs:
        d = job.config["data"]
        key = repr((d["name"], d["data_dir"], sorted(d["options"].items())))
        if key not in loaded:
            loaded[key] = _load_train_size(job.config)
        n_train, ds = loaded[key]
        t = Target(experiment=spec["name"], group=job.group, variant=job.variant,
                   profile=profile, study=study_name(spec["name"], job.group, job.variant, profile),
                   storage=storage, config=trial_config(job.config, s, n_train, seed),
                   settings=s, seed=seed,
                   sampler_seed=seed if sampler_seed is None else sampler_seed,
                   experiment_id=exp_id)
        row = search_variant(t, trials=trials, workers=workers, n_train=n_train, dataset=ds)
        rows.append(dict(row, dataset=dataset_id(job.config), dataset_checksum=ds.checksum))
    if record and any(r["best_lr"] is not None for r in rows):
        out = record_best(spec["name"], rows, profile=profile, budget_epochs=s.budget_epochs,
                          storage=storage, overwrite=overwrite)
        print(f"best learning rates recorded in {out}", flush=True)
    return rows


def add_lr_search_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``lr-search`` subcommand to ``python -m experiments``."""
    p = subparsers.add_parser(
        "lr-search", help="Optuna search of the learning rate on a validation split",
        description="Optuna learning-rate search per variant (validation error after a short "
                    "budget, pruning, resumable studies, several workers). Settings: "
                    "experiments/search/NAME.yaml (optional).")
    p.add_argument("name", help="spec name, e.g. degradation")
    p.add_argument("--profile", choices=PROFILES, default="smoke")
    p.add_argument("--variant", action="append", default=[],
                   help="only this variant ('group/variant' or 'variant'); repeatable")
    p.add_argument("--trials", type=int, default=None,
                   help="trials to add to each study in this call (default: the search file's, "
                        "else smoke 4 / quick 20 / paper 20; grid: the points not yet evaluated)")
    p.add_argument("--budget-epochs", type=int, default=None,
                   help="epochs per trial (default: smoke 2, quick 10, paper 30)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: SQLAlchemy URL (postgresql://user@host/db) or "
                        "journal:PATH (default: $OPTUNA_STORAGE, else sqlite:///<repo>/optuna.db)")
    p.add_argument("--workers", type=int, default=1,
                   help="K processes on the same study (the trials are split between them)")
    p.add_argument("--seed", type=int, default=0,
                   help="training seed of every trial (and the grid's order); default 0")
    p.add_argument("--sampler-seed", type=int, default=None,
                   help="seed of the TPE draws (default: --seed); give every machine that "
                        "shares a study its own")
    p.add_argument("--seeds", type=int, default=None,
                   help="accepted for `make` (RUN_ARGS); a search trains one seed per trial")
    p.add_argument("--search-file", default=None, help="search settings (default "
                   "experiments/search/NAME.yaml if it exists)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every trial, e.g. --set optim.momentum=0.9")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--no-record", action="store_true",
                   help="do not write experiments/tuned/NAME.yaml")
    p.add_argument("--overwrite", action="store_true",
                   help="replace tuned entries recorded by a bigger profile")
    return p


def run_lr_search(args: argparse.Namespace) -> int:
    """``python -m experiments lr-search``: 0 when every variant has a best lr."""
    if getattr(args, "seeds", None):
        print("note: --seeds is ignored by lr-search (each trial trains seed --seed)", flush=True)
    t0 = time.perf_counter()
    try:
        rows = lr_search(
            args.name, args.profile, variants=args.variant or None, trials=args.trials,
            budget_epochs=args.budget_epochs, storage=args.storage, workers=args.workers,
            seed=args.seed, sampler_seed=args.sampler_seed, settings_file=args.search_file,
            sets=parse_set(args.set), dataset=args.dataset, data_dir=args.data_dir, device=args.device,
            record=not args.no_record, overwrite=args.overwrite)
    except (SpecError, SearchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    from tabulate import tabulate

    table = [(r["variant"], r["trials"], r["COMPLETE"], r["PRUNED"], r["FAIL"],
              "" if r["best_lr"] is None else f"{r['best_lr']:.4g}",
              "" if r["best_val_error"] is None else f"{r['best_val_error']:.2f}")
             for r in rows]
    print(tabulate(table, headers=["variant", "trials", "complete", "pruned", "failed",
                                   "best lr", "val err %"]))
    print(f"lr-search done in {time.perf_counter() - t0:.0f} s", flush=True)
    missing = [r["variant"] for r in rows if r["best_lr"] is None]
    if missing:
        print(f"no completed trial for {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.search NAME ...`` (the same as ``python -m experiments lr-search``)."""
    parser = argparse.ArgumentParser(prog="python -m experiments")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_lr_search_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_lr_search(parser.parse_args(["lr-search", *argv]))


if __name__ == "__main__":
    from experiments.runner import stop_on_sigterm

    stop_on_sigterm()  # SIGTERM ends the search as Ctrl-C does (runs KILLED, not RUNNING)
    sys.exit(main())

