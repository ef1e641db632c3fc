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

Settings (``experiments/search/<NAME>.yaml``), storage, sampler and pruner:
``experiments/search_settings.py``; the tuned-lr files: ``experiments/tuned.py``.

Trials per call: ``--trials N`` runs N *more* trials each call (rerunning the same command adds N
trials to the same study; ``load_if_exists``). With a grid the default is the grid points not yet
evaluated. ``--workers K`` starts K processes on the same study and splits the N trials between
them (N // K each, the remainder to the first ones), so the study gains exactly N trials; worker 0
is the calling process, workers 1..K-1 are spawned processes (``multiprocessing``, spawn).

MLflow (the claim's experiment): one parent run per study, named ``lr-search/<group>/<variant>``,
tagged ``search=true``, reused when the search is rerun; one nested run per trial
(``mlflow.parentRunId``), opened and ended by ``convnets.tracking.TrackedRun`` as every run is
(environment tags, the trial config as params, ``resolved.*`` params, final metrics,
artifacts), plus the search's own params ``lr``, ``trial_number``, ``budget_epochs`` and tags
``search``, ``study``, ``trial_number``, ``trial_state`` (COMPLETE / PRUNED / FAIL),
``search_group``, ``search_variant`` (``diverged`` for a diverged trial); the per-epoch curve
is logged at step = epoch. Search runs carry **no** ``variant`` / ``group`` / ``config_hash``
tags, so the analysis never mistakes them for final runs.

The best lr per variant goes to the parent run (tags ``best_lr``, ``best_val_error``) and to
``tuned/<NAME>.yaml`` (git-ignored; ``experiments.tuned``); ``python -m experiments run NAME
--lr tuned`` reads it.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import optuna
import torch
from tabulate import tabulate

from convnets import tracking
from convnets.names import ERROR, eval_error, final_error, tracking_uri
from convnets.results import DivergedError
from convnets.runtime import thread_share
from convnets.train import fit
from experiments.cli_args import add_lr_search_parser
from experiments.locks import first_use_lock
from experiments.runner import stop_on_sigterm
from experiments.search_settings import (
    DEFAULT_TRIALS,
    SearchError,
    Target,
    check_storage,
    default_storage,
    load_settings,
    make_pruner,
    make_sampler,
    make_storage,
    open_study,
    public_storage,
    require_validation_split,
    search_file,
    study_name,
    train_size,
    trial_config,
)
from experiments.spec import SpecError, expand, load_spec, parse_set, require_devices
from experiments.tuned import dataset_id, record_best, shown

DIVERGED_ERROR = 100.0  # objective of a trial whose loss became non-finite


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

    s = t.settings
    lo, hi = (min(s.grid), max(s.grid)) if s.grid else s.lr_range
    lr = trial.suggest_float("lr", lo, hi, log=True)
    cfg = copy.deepcopy(t.config)
    cfg["optim"]["lr"] = lr
    require_validation_split(cfg)
    budget = int(cfg["schedule"]["length"])
    run = tracking.TrackedRun.start(
        cl, t.experiment_id, run_name=f"lr-search/{t.full}/trial{trial.number}",
        tags=_trial_tags(t, trial.number), config=cfg,
        params={"lr": repr(float(lr)), "trial_number": str(trial.number),
                "budget_epochs": str(budget)})
    trial.set_user_attr("mlflow_run_id", run.run_id)
    trial.set_user_attr("worker", worker)

    def on_epoch_end(m: dict) -> None:
        epoch, err = int(m["epoch"]), float(m[eval_error("val")])
        run.logger.log_epoch(epoch, m)  # the curve at step = epoch (the pruner's step)
        trial.report(err, epoch)
        # the last epoch's value is the trial's result: never prune a finished trial
        if epoch < budget and trial.should_prune():
            raise optuna.TrialPruned(f"val error {err:.2f}% at epoch {epoch}")

    try:
        result = fit(cfg, progress=False, on_epoch_end=on_epoch_end, dataset=dataset)
        if result.eval_split != "val":  # belt and braces: fit evaluated on the validation split
            raise RuntimeError(f"lr-search trial evaluated on {result.eval_split!r}, not 'val'")
    except optuna.TrialPruned:
        run.finish(tags={"trial_state": "PRUNED"})
        raise
    except DivergedError as err:  # a result of this lr: the trial completes with 100%
        trial.set_user_attr("diverged", True)
        run.finish(metrics={final_error("val"): DIVERGED_ERROR}, step=budget,
                   tags={"trial_state": "COMPLETE", "diverged": "true",
                         "failure_reason": str(err)[:5000]})
        return DIVERGED_ERROR
    except BaseException as err:
        run.fail_with(err, tags={"trial_state": "FAIL"})
        if not isinstance(err, KeyboardInterrupt):
            traceback.print_exc()
        raise
    run.finish(result, cfg, tags={"trial_state": "COMPLETE"})
    return float(result.final[final_error("val")])


def _print_trial(study, frozen) -> None:
    lr = frozen.params.get("lr")
    lr_s = "?" if lr is None else f"{lr:.4g}"
    val = "" if frozen.value is None else f" val error {frozen.value:6.2f}%"
    at = f" (pruned at epoch {frozen.last_step})" if frozen.state.name == "PRUNED" else ""
    print(f"  trial {frozen.number:>3d} lr {lr_s:<10s} {frozen.state.name:8s}{val}{at}", flush=True)


def run_trials(t: Target, n_trials: int, worker: int = 0, n_workers: int = 1,
               dataset=None) -> None:
    """Run ``n_trials`` trials of ``t``'s study in this process (one worker)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    threads = torch.get_num_threads()
    if n_workers > 1:  # K processes share the cores
        torch.set_num_threads(thread_share(n_workers))
    try:
        _optimize(t, n_trials, worker, dataset)
    finally:
        torch.set_num_threads(threads)


def _optimize(t: Target, n_trials: int, worker: int, dataset) -> None:
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


def _parent_run(cl, t: Target, n_train: int) -> tracking.TrackedRun:
    """The study's parent MLflow run: found again on a rerun, else created."""
    storage = public_storage(t.storage)
    found = cl.search_runs(
        [t.experiment_id],
        filter_string=(f"tags.search = 'true' and tags.study = '{t.study}' "
                       f"and tags.optuna_storage = '{storage}' and tags.search_parent = 'true'"),
        order_by=["attributes.start_time DESC"],
    )
    if found:
        return tracking.TrackedRun.start(cl, t.experiment_id, run_id=found[0].info.run_id)
    tags = {"search": "true", "search_parent": "true", "study": t.study,
            "optuna_storage": storage, "experiment": t.experiment, "search_group": t.group,
            "search_variant": t.variant, "profile": t.profile,
            "budget_epochs": str(t.settings.budget_epochs), "search_space": t.settings.space,
            "pruner": t.settings.pruner, "val_size": str(t.config["data"]["val_size"]),
            "n_train_images": str(n_train)}
    params = tracking.flatten(t.config)
    params.pop("optim.lr", None)  # searched: a param of each trial
    params["search.space"] = t.settings.space
    params["search.seed"] = str(t.seed)
    return tracking.TrackedRun.start(cl, t.experiment_id, run_name=f"lr-search/{t.full}",
                                     tags=tags, params=params)


def _split(n: int, k: int) -> list[int]:
    return [n // k + (i < n % k) for i in range(k)]


def search_variant(t: Target, *, trials: int | None, workers: int, n_train: int,
                   dataset=None) -> dict:
    """Add trials to one variant's study; returns its summary (best lr among COMPLETE trials)."""
    study = open_study(t)
    cl = tracking.client()
    parent = _parent_run(cl, t, n_train)
    t.parent_run_id = parent.run_id
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
    failed = ""
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
                failed = f"{len(bad)} worker(s) exited with codes {bad}"
                print(f"  {failed}", flush=True)
    except KeyboardInterrupt as err:
        parent.fail_with(err)
        raise
    study = optuna.load_study(study_name=t.study, storage=make_storage(t.storage))
    all_trials = study.get_trials(deepcopy=False)
    counts = {st: sum(tr.state.name == st for tr in all_trials)
              for st in ("COMPLETE", "PRUNED", "FAIL")}
    done = [tr for tr in all_trials if tr.state.name == "COMPLETE" and tr.value is not None]
    best = min(done, key=lambda tr: (tr.value, tr.number)) if done else None
    tags = {"n_trials": len(all_trials), **{f"n_{k.lower()}": v for k, v in counts.items()}}
    row = {"variant": t.full, "study": t.study, "trials": len(all_trials), **counts,
           "best_lr": None, "best_val_error": None, "best_trial": None}
    if best is not None:
        tags.update(best_lr=repr(float(best.params["lr"])), best_val_error=f"{best.value:.4f}",
                    best_trial=best.number)
        parent.logger.log_epoch(len(all_trials), {"best_val_error": float(best.value)})
        row.update(best_lr=float(best.params["lr"]), best_val_error=float(best.value),
                   best_trial=best.number)
    else:
        failed = failed or "no completed trial"
    if failed:
        parent.fail(ERROR, failed, tags=tags)
    else:
        parent.finish(tags=tags)
    return row


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
    check_storage(storage)
    jobs = expand(spec, profile, seeds=1, sets=list(sets), only=variants or s.variants or None,
                  dataset=dataset, data_dir=data_dir, device=device)
    require_devices(jobs)  # before any study or MLflow run exists
    with first_use_lock(tracking_uri()):  # a fresh MLflow store: one creator
        cl = tracking.client()
        exp_id = tracking.experiment_id(cl, spec["name"], {"claim": spec["claim"].strip()})
    loaded: dict[str, tuple[int, Any]] = {}
    rows = []
    for job in jobs:
        d = job.config["data"]
        key = repr((d["name"], d["data_dir"], sorted(d["options"].items())))
        if key not in loaded:
            loaded[key] = train_size(job.config)
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
        print(f"best learning rates recorded in {shown(out)} (git-ignored; copy it to "
              f"experiments/tuned/ to commit it)", flush=True)
    return rows


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
    """``python -m experiments.lr_search NAME ...`` (the same as ``python -m experiments lr-search``)."""
    parser = argparse.ArgumentParser(prog="python -m experiments")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_lr_search_parser(sub)  # experiments.cli_args: the CLI's options, torch-free
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_lr_search(parser.parse_args(["lr-search", *argv]))


if __name__ == "__main__":
    stop_on_sigterm()  # SIGTERM ends the search as Ctrl-C does (runs KILLED, not RUNNING)
    sys.exit(main())

