"""Run a list of jobs: skip finished ones, resume interrupted ones, go on past failed ones.

A job is identified by (experiment, config hash, seed). Before training, the runner looks the
job up in MLflow: a FINISHED run is skipped (``force`` reruns it), an unfinished run with a
checkpoint is resumed into the same MLflow run, anything else starts a new run. A diverging
run ends FAILED with its reason and the next job starts; Ctrl-C marks the run KILLED, keeps its
checkpoint and stops.
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from tabulate import tabulate

from convnets import tracking
from convnets.names import DIVERGED, FAILURE_KIND, final_error
from convnets.tracking import Terminated
from convnets.train import fit, read_checkpoint_meta
from experiments.deadline import Deadline
from experiments.spec import Job


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"signal {signum}")


def stop_on_sigterm() -> None:
    """Treat SIGTERM as Ctrl-C in this process. Batch systems (Slurm, Kubernetes, preemptible
    VMs) stop a job with SIGTERM, whose default action ends Python at once, leaving its MLflow
    run RUNNING. Only the main thread may install a handler; elsewhere this does nothing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def checkpoint_dir() -> Path:
    return Path(os.environ.get("CONVNETS_CHECKPOINTS") or tracking.REPO_ROOT / "checkpoints")


def checkpoint_path(job: Job) -> Path:
    profile = job.tags.get("profile", "")
    return checkpoint_dir() / job.experiment / f"{job.config_hash}-{profile}-seed{job.seed}.pt"


def _open_run(cl, exp_id: str, job: Job, existing: list, ckpt: Path, force: bool):
    """(run, action) for a job to train: the unfinished run that wrote ``ckpt`` resumed, else a
    new run; or (None, run id) when an earlier run of it diverged (it would again)."""
    # A checkpoint resumes only the run that wrote it, and only if that run is unfinished.
    resumable = {r.info.run_id for r in existing
                 if r.info.status in ("RUNNING", "KILLED", "FAILED")
                 and r.data.tags.get(FAILURE_KIND) != DIVERGED}
    owner = read_checkpoint_meta(ckpt).get("run_id") if ckpt.exists() else None
    if ckpt.exists() and (force or owner not in resumable):
        ckpt.unlink()  # stale: its run finished, diverged, was deleted, or --force
    if owner in resumable and ckpt.exists():
        return tracking.TrackedRun.start(cl, exp_id, run_id=owner), "resumed"
    diverged = [r for r in existing if r.data.tags.get(FAILURE_KIND) == DIVERGED]
    if diverged and not force:  # deterministic: it would diverge again; --force retries
        return None, diverged[0].info.run_id
    profile = job.tags.get("profile", "")
    run = tracking.TrackedRun.start(
        cl, exp_id, run_name=tracking.run_name(job.variant, job.seed, job.config["model"], profile),
        tags=dict(job.tags, config_hash=job.config_hash), config=job.config)
    return run, "new"


def run_job(job: Job, *, force: bool = False, progress: bool = True, ddp: int = 0,
            deadline: Deadline | None = None) -> dict:
    """Run (or skip, or resume) one job; returns its summary row.

    With a ``deadline``, a job whose estimated time (the wall time of a finished run of the same
    config) does not fit is not started, and a started one stops at the deadline: checkpoint
    kept, MLflow run KILLED with the reason, and the next invocation resumes it.
    """
    cl = tracking.client()
    exp_id = tracking.experiment_id(cl, job.experiment, {"claim": job.tags.get("claim", "")})
    h = job.config_hash
    row = {"group": job.group, "variant": job.variant, "seed": job.seed, "config": h}
    ckpt = checkpoint_path(job)
    existing = tracking.find_runs(cl, exp_id, h, job.seed, job.tags.get("profile", ""))
    finished = [r for r in existing if r.info.status == "FINISHED"]
    err_key = final_error("val" if job.config["data"]["val_size"] else "test")
    if finished and not force:
        run = finished[0]
        return dict(row, status="FINISHED (skipped)", error=run.data.metrics.get(err_key),
                    run_id=run.info.run_id)
    if deadline is not None:
        why = deadline.refuse(cl, exp_id, h, ckpt)
        if why:
            return dict(row, status=f"not started ({why})", error=None, run_id="")
    run, action = _open_run(cl, exp_id, job, existing, ckpt, force)
    if run is None:
        return dict(row, status="FAILED (diverged earlier)", error=None, run_id=action)
    print(f"[{job.experiment}] {job.key} ({action}, run {run.run_id[:8]}, config {h})", flush=True)
    try:
        if ddp > 1:  # data-parallel over `ddp` processes; rank 0 logs and checkpoints
            from convnets.distributed import launch

            result = launch(job.config, ddp, run_id=run.run_id, checkpoint=ckpt,
                            progress=progress)
        else:
            result = fit(job.config, logger=run.logger, checkpoint=ckpt, progress=progress,
                         checkpoint_meta={"run_id": run.run_id},
                         deadline=deadline.at if deadline else None)
        run.finish(result, job.config)
    except BaseException as err:  # diverged, deadline, Ctrl-C/SIGTERM, or a crash: recorded
        status, kind = run.fail_with(err)
        if isinstance(err, KeyboardInterrupt):
            raise
        if kind == "error":  # in training or logging; the checkpoint is kept
            traceback.print_exc()
        print(f"  {status}: {err}" + ("; checkpoint kept" if status == "KILLED" else ""),
              flush=True)
        return dict(row, status=f"{status} ({kind if kind != 'error' else type(err).__name__})",
                    error=None, run_id=run.run_id)
    ckpt.unlink(missing_ok=True)
    return dict(row, status="FINISHED", error=result.final[err_key], run_id=run.run_id)


def run_jobs(jobs: list[Job], *, force: bool = False, parallel: int = 1,
             progress: bool = True, ddp: int = 0, deadline: Deadline | None = None) -> list[dict]:
    """Run every job (``parallel`` at a time, in separate processes); returns summary rows."""
    rows: list[dict] = []
    if parallel <= 1:
        try:
            for job in jobs:
                rows.append(run_job(job, force=force, progress=progress, ddp=ddp,
                                    deadline=deadline))
        except KeyboardInterrupt:
            print("\ninterrupted: the current run is marked KILLED and its checkpoint kept; "
                  "rerun the same command to resume.", flush=True)
            raise
        return rows
    # Create the store's schema and the experiments here, once: workers racing to initialise
    # a fresh SQLite store fail with "table already exists".
    cl = tracking.client()
    for name in dict.fromkeys(j.experiment for j in jobs):
        claim = next(j.tags.get("claim", "") for j in jobs if j.experiment == name)
        tracking.experiment_id(cl, name, {"claim": claim})
    # Separate processes share the GPU; each keeps its own batch size and CUDA context.
    pool = ProcessPoolExecutor(max_workers=parallel, mp_context=get_context("spawn"),
                               initializer=stop_on_sigterm)
    try:
        futures = {pool.submit(run_job, job, force=force, deadline=deadline): job
                   for job in jobs}
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                rows.append(fut.result())
            except Exception as err:  # the worker itself died
                rows.append({"group": job.group, "variant": job.variant, "seed": job.seed,
                             "config": job.config_hash, "status": f"FAILED ({err})",
                             "error": None, "run_id": ""})
    except KeyboardInterrupt as err:
        # queued jobs never start; running ones get the interrupt too, mark themselves KILLED
        # and keep their checkpoints (Ctrl-C reaches the whole process group; a SIGTERM sent
        # to this process alone is passed on to the workers)
        if isinstance(err, Terminated):
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        print("\ninterrupted: queued runs cancelled; rerun the same command to resume.",
              flush=True)
        raise
    pool.shutdown(wait=True)
    order = {j.key: i for i, j in enumerate(jobs)}
    rows.sort(key=lambda r: order[f"{r['group']}/{r['variant']}/seed{r['seed']}"])
    return rows


def summary_table(rows: list[dict], split: str = "test") -> str:
    table = [
        (r["group"], r["variant"], r["seed"], r["status"],
         "" if r.get("error") is None else f"{r['error']:.2f}")
        for r in rows
    ]
    return tabulate(table, headers=["group", "variant", "seed", "status", f"final {split} err %"])
