"""Run a list of jobs: skip finished ones, resume interrupted ones, go on past failed ones.

A job is identified by (experiment, config hash, seed). Before training, the runner looks the
job up in MLflow: a FINISHED run is skipped (``force`` reruns it), an unfinished run with a
checkpoint is resumed into the same MLflow run, anything else starts a new run. A diverging
run ends FAILED with its reason and the next job starts; Ctrl-C marks the run KILLED, keeps its
checkpoint and stops. Every run is opened and closed by ``convnets.tracking.TrackedRun``.

``batch_seeds=K`` (``run --batch-seeds K``) trains the jobs that differ only in seed K at a time
as one batched network (``convnets.multiseed.fit_seeds``); each seed keeps its own run,
checkpoint, resume and failure, as if it ran alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import threading
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from urllib.parse import urlparse

import torch
from tabulate import tabulate

from convnets import multiseed, tracking
from convnets.checkpoint import CheckpointError, read_checkpoint_meta, set_aside
from convnets.config import eval_split
from convnets.distributed import launch
from convnets.multiseed import MixedProgressError, fit_seeds
from convnets.names import (
    DIVERGED,
    FAILURE_KIND,
    HORIZON,
    ORPHANED,
    REPO_ROOT,
    SERVES,
    Outcome,
    RunStatus,
    final_error,
    outcome_of,
    tracking_uri,
)
from convnets.runtime import thread_share
from convnets.tracking import Terminated
from convnets.train import fit
from experiments.deadline import Deadline
from experiments.locks import claim, first_use_lock
from experiments.spec import Job

#: set by SIGTERM in this process: a --parallel worker then starts no further job (the pool
#: hands each worker its next job before the current one ends, and a worker survives the
#: exception it reports back)
_terminated = False


def _raise_terminated(signum, frame) -> None:
    global _terminated
    _terminated = True
    raise Terminated(f"signal {signum}")


def stop_on_sigterm() -> None:
    """Treat SIGTERM as Ctrl-C in this process. Batch systems (Slurm, Kubernetes, preemptible
    VMs) stop a job with SIGTERM, whose default action ends Python at once, leaving its MLflow
    run RUNNING. Only the main thread may install a handler; elsewhere this does nothing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def worker_threads(parallel: int) -> int | None:
    """torch threads for each of ``parallel`` CPU worker processes: the cores shared out
    (at least 1), unless ``$OMP_NUM_THREADS`` says otherwise (None: leave torch's default).
    Each worker otherwise takes every core, and oversubscribed workers crawl
    (docs/measurements.md)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return thread_share(parallel)


def worker_init(threads: int | None) -> None:
    """A --parallel worker: SIGTERM as Ctrl-C, SIGTERM when its runner dies, and its share of
    the CPU threads."""
    stop_on_sigterm()
    _die_with_parent()
    if threads:
        torch.set_num_threads(threads)


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when the runner that spawned this worker dies (kill -9 gives it no
    chance to stop its workers, which then trained on for nobody, 1.1 GB each): the worker's
    run ends KILLED with its checkpoint kept, as on Ctrl-C. Elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the runner died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def checkpoint_dir() -> Path:
    return Path(os.environ.get("CONVNETS_CHECKPOINTS") or REPO_ROOT / "checkpoints")


def checkpoint_path(job: Job) -> Path:
    """The job's checkpoint, named by what it trains (config key, profile, seed), not by the
    spec that asked: one network two specs name has one checkpoint."""
    profile = job.tags.get("profile", "")
    return checkpoint_dir() / f"{job.config_hash}-{profile}-seed{job.seed}.pt"


def claims_dir() -> Path:
    """Where the runners' claims lie: with the store the results go to, so two runners on one
    store see each other's claims whatever their checkpoint folders: beside a SQLite file
    (``<db>.claims/``) or a file store (``<folder>.claims/``). A store served over the network
    (http, a database server) has no folder its runners share; their claims lie in the
    checkpoint folder, which such runners must then share (the README says so)."""
    uri = tracking_uri()
    m = re.match(r"^sqlite:///(.+)$", uri)
    if m and m.group(1) not in ("", ":memory:"):
        db = Path(m.group(1))
        return db.with_name(db.name + ".claims")
    if uri.startswith("file:") or "://" not in uri:
        folder = Path(urlparse(uri).path if uri.startswith("file:") else uri).resolve()
        return folder.with_name(folder.name + ".claims")
    return checkpoint_dir() / "claims"


def claim_path(job: Job) -> Path:
    """The job's claim file (``experiments.locks.claim``), with the store, by config key."""
    profile = job.tags.get("profile", "")
    return claims_dir() / f"{job.config_hash}-{profile}-seed{job.seed}.claim"


def _adopt_legacy(cl, job: Job, existing: list) -> None:
    """Runs and checkpoints of this job made before the hash rule changed take today's key:
    a run tagged with a ``legacy_hashes`` key is re-tagged (``config_hash_recorded`` keeps
    the old one), and a checkpoint at the earlier place (``<experiment>/<old key>-...``) moves
    to ``checkpoint_path``, so nothing finished is trained again and nothing stopped restarts."""
    for r in existing:
        old = r.data.tags.get("config_hash")
        if old != job.config_hash:
            cl.set_tag(r.info.run_id, "config_hash_recorded", old)
            cl.set_tag(r.info.run_id, "config_hash", job.config_hash)
            print(f"  run {r.info.run_id[:8]}: config key {old} -> {job.config_hash} "
                  "(today's hash rule)", flush=True)
    ckpt = checkpoint_path(job)
    if ckpt.exists():
        return
    homes = dict.fromkeys([job.experiment] + [cl.get_experiment(r.info.experiment_id).name
                                               for r in existing])
    profile = job.tags.get("profile", "")
    for exp in homes:
        for key in job.keys:
            old = checkpoint_dir() / exp / f"{key}-{profile}-seed{job.seed}.pt"
            if old.exists():
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                os.replace(old, ckpt)
                print(f"  checkpoint {old} moved to {ckpt}", flush=True)
                return


#: the job tags a served run takes in the other spec's table (``_serve``)
SERVED_TAGS = ("experiment", "claim", "citation", "group", "variant", "baseline", "paper_error",
               "expected", "differences")


def _serve(cl, job: Job, existing: list, home: str) -> None:
    """Record on the runs of another experiment that they are also this job's variant (tag
    ``serves``: JSON, 'experiment/group/variant' -> that variant's spec tags); the tables
    count each such run in this spec's table as this variant."""
    me = f"{job.experiment}/{job.group}/{job.variant}"
    mine = {k: str(job.tags.get(k, "")) for k in SERVED_TAGS}
    for r in existing:
        if r.info.experiment_id != home:
            continue
        have = json.loads(r.data.tags.get(SERVES) or "{}")
        if have.get(me) != mine:
            cl.set_tag(r.info.run_id, SERVES, json.dumps({**have, me: mine}, sort_keys=True))


def _close_orphans(cl, existing: list, keep: str | None) -> None:
    """Runs of this job left RUNNING by a process that died (kill -9, a lost node) before it
    could end them: the caller holds the job's claim, so no process owns them. They end KILLED
    with the reason; ``keep`` (the run about to resume) is adopted instead."""
    for r in existing:
        if r.info.status == RunStatus.RUNNING and r.info.run_id != keep:
            tracking.TrackedRun(cl, r.info.run_id).fail(
                ORPHANED, "left RUNNING by a process that ended without closing it; closed by "
                "the next start of this job")


def _checkpoint_owner(ckpt: Path) -> str | None:
    """The run id a checkpoint was written for (None: no checkpoint). A checkpoint that fails
    verification is kept aside under another name, never resumed: the run starts afresh."""
    if not ckpt.exists():
        return None
    try:
        return read_checkpoint_meta(ckpt).get("run_id")
    except CheckpointError as err:
        kept = set_aside(ckpt)
        print(f"  {err}. Kept aside as {kept}; this run starts again from scratch.", flush=True)
        return None


def reaches(run, horizon: int | None) -> bool:
    """Whether a FINISHED run answers a job that trains to ``horizon`` (None: the schedule's
    end): the iteration it reached (its ``horizon`` tag) is that far. Runs made before horizons
    existed carry no tag and ran to the end."""
    tag = run.data.tags.get(HORIZON)
    if not tag:
        return True
    end = int(run.data.params.get("resolved.total_iterations") or tag)
    return int(tag) >= (end if horizon is None else min(horizon, end))


def _open_run(cl, exp_id: str, job: Job, existing: list, ckpt: Path, force: bool):
    """(run, action) for a job to train: the unfinished run that wrote ``ckpt`` resumed (or a
    run FINISHED at an earlier horizon, extended), else a new run; or (None, run id) when an
    earlier run of it diverged (it would again)."""
    # A checkpoint resumes only the run that wrote it, and only if that run is unfinished, or
    # finished at a horizon short of this job's (``_start`` skips a run that reaches it).
    resumable = {r.info.run_id for r in existing
                 if r.info.status in (RunStatus.RUNNING, RunStatus.KILLED, RunStatus.FAILED,
                                      RunStatus.FINISHED)
                 and r.data.tags.get(FAILURE_KIND) != DIVERGED}
    owner = _checkpoint_owner(ckpt)
    if ckpt.exists() and (force or owner not in resumable):
        ckpt.unlink()  # stale: its run finished, diverged, was deleted, or --force
    _close_orphans(cl, existing, owner if ckpt.exists() else None)
    if owner in resumable and ckpt.exists():
        was = next(r for r in existing if r.info.run_id == owner)
        action = (f"extended from horizon {was.data.tags.get(HORIZON)}"
                  if was.info.status == RunStatus.FINISHED else "resumed")
        return tracking.TrackedRun.start(cl, exp_id, run_id=owner), action
    diverged = [r for r in existing if r.data.tags.get(FAILURE_KIND) == DIVERGED]
    if diverged and not force:  # deterministic: it would diverge again; --force retries
        return None, diverged[0].info.run_id
    profile = job.tags.get("profile", "")
    run = tracking.TrackedRun.start(
        cl, exp_id, run_name=tracking.run_name(job.variant, job.seed, job.config["model"], profile),
        tags=dict(job.tags, config_hash=job.config_hash), config=job.config)
    return run, "new"


@dataclass
class _Opened:
    """A job whose MLflow run is open: what training it and closing its run need."""

    job: Job
    run: tracking.TrackedRun
    ckpt: Path
    err_key: str


def row(job: Job, outcome: Outcome, status: str, *, error: float | None = None,
        run_id: str = "", reason: str = "") -> dict:
    """A job's summary row: what this invocation did (``outcome``, which ``report`` counts),
    the ``status`` text the summary table shows, the final error if any, and the failure
    kind (``reason``) when it ended without finishing."""
    return {"group": job.group, "variant": job.variant, "seed": job.seed,
            "network": tracking.model_label(job.config["model"]),
            "profile": job.tags.get("profile", ""),
            "config": job.config_hash, "outcome": outcome, "status": str(status),
            "error": error, "run_id": run_id, "reason": reason}


def _start(job: Job, *, force: bool, deadline: Deadline | None) -> dict | _Opened:
    """The job's summary row when there is nothing to train (finished, not started, diverged
    earlier); else its run, opened (new or resumed)."""
    cl = tracking.client()
    exp_id = tracking.experiment_id(cl, job.experiment, {"claim": job.tags.get("claim", "")})
    h = job.config_hash
    existing = tracking.find_runs(cl, job.keys, job.seed, job.tags.get("profile", ""))
    _adopt_legacy(cl, job, existing)
    ckpt = checkpoint_path(job)
    # one network, one run: a run of this config in another experiment (another spec naming
    # the same network) is this job's run; it stays where it is and serves both tables
    home = existing[0].info.experiment_id if existing else exp_id
    if home != exp_id:
        _serve(cl, job, existing, home)
        owner = cl.get_experiment(home).name
        print(f"[{job.experiment}] {job.key}: the same network as {owner}'s run "
              f"{existing[0].info.run_id[:8]} (config {h}): one run serves both", flush=True)
        # a RUNNING run of it elsewhere is no process's (the claim is ours): closed
        _close_orphans(cl, [r for r in existing if r.info.experiment_id != home], None)
        exp_id, existing = home, [r for r in existing if r.info.experiment_id == home]
    horizon = job.config["horizon"]
    finished = [r for r in existing if r.info.status == RunStatus.FINISHED
                and reaches(r, horizon)]
    err_key = final_error(eval_split(job.config))
    if finished and not force:
        # a RUNNING run of this job is no process's (we hold its claim): a --force rerun
        # killed with -9, say; closed here, since no resume will ever reach it
        _close_orphans(cl, existing, None)
        run = finished[0]
        at = run.data.tags.get(HORIZON)
        short = at and at != run.data.params.get("resolved.total_iterations")
        return row(job, Outcome.SKIPPED, "FINISHED (skipped" + (f", at {at})" if short else ")"),
                   error=run.data.metrics.get(err_key), run_id=run.info.run_id)
    if deadline is not None:
        why = deadline.refuse(cl, exp_id, h, ckpt, horizon)
        if why:
            return row(job, Outcome.LEFT, f"not started ({why})")
    run, action = _open_run(cl, exp_id, job, existing, ckpt, force)
    if run is None:
        return row(job, Outcome.DIVERGED, "FAILED (diverged earlier)", run_id=action)
    print(f"[{job.experiment}] {job.key}: {tracking.model_label(job.config['model'])} "
          f"({action}, run {run.run_id[:8]}, config {h})", flush=True)
    return _Opened(job, run, ckpt, err_key)


def _finished(o: _Opened, result) -> dict:
    """Record the result; drop the checkpoint of a run that reached its schedule's end (one
    stopped at a horizon keeps it: a later horizon extends the run from it); the FINISHED
    row."""
    o.run.finish(result, o.job.config)
    reached, end = result.info[HORIZON], result.info["total_iterations"]
    if reached >= end:
        o.ckpt.unlink(missing_ok=True)
    status = RunStatus.FINISHED if reached >= end else f"FINISHED at {reached}"
    return row(o.job, Outcome.FINISHED, status, error=result.final[o.err_key],
               run_id=o.run.run_id)


def _failed(o: _Opened, err: BaseException) -> dict:
    """Record why the run ended (diverged, deadline, a crash; the checkpoint is kept); the row.
    Ctrl-C and SIGTERM are re-raised once recorded."""
    status, kind = o.run.fail_with(err)
    if isinstance(err, KeyboardInterrupt):
        raise err
    if kind == "error":  # in training or logging
        traceback.print_exception(err)
    kept = status is RunStatus.KILLED
    print(f"  {status}: {err}" + ("; checkpoint kept" if kept else ""), flush=True)
    return row(o.job, outcome_of(status, kind),
               f"{status} ({kind if kind != 'error' else type(err).__name__})",
               run_id=o.run.run_id, reason=kind)


def _train(o: _Opened, *, progress: bool, ddp: int, deadline: Deadline | None) -> dict:
    """Train one opened job and close its run; returns its row."""
    try:
        if ddp > 1:  # data-parallel over `ddp` processes; rank 0 logs and checkpoints
            result = launch(o.job.config, ddp, run_id=o.run.run_id, checkpoint=o.ckpt,
                            progress=progress, resolved=True)
        else:
            result = fit(o.job.config, logger=o.run.logger, checkpoint=o.ckpt,
                         progress=progress, checkpoint_meta={"run_id": o.run.run_id},
                         deadline=deadline.passed if deadline else None, resolved=True)
        return _finished(o, result)
    except BaseException as err:  # diverged, deadline, Ctrl-C/SIGTERM, or a crash: recorded
        return _failed(o, err)


def run_job(job: Job, *, force: bool = False, progress: bool = True, ddp: int = 0,
            deadline: Deadline | None = None) -> dict:
    """Run (or skip, or resume) one job; returns its summary row.

    With a ``deadline``, a job whose estimated time (the wall time of a finished run of the same
    config) does not fit is not started, and a started one stops at the deadline: checkpoint
    kept, MLflow run KILLED with the reason, and the next invocation resumes it.
    """
    if _terminated:
        return row(job, Outcome.LEFT, "not started (terminated)")
    with claim(claim_path(job)) as holder:
        if holder is not None:
            return _claimed_row(job, holder)
        opened = _start(job, force=force, deadline=deadline)
        if isinstance(opened, dict):
            return opened
        return _train(opened, progress=progress, ddp=ddp, deadline=deadline)


def _claimed_row(job: Job, holder: str) -> dict:
    """The row of a job another process is training (its claim is held)."""
    print(f"[{job.experiment}] {job.key}: skipped, being trained by {holder}", flush=True)
    return row(job, Outcome.CLAIMED, f"claimed ({holder})")


def seed_groups(jobs: list[Job], k: int) -> list[list[Job]]:
    """The jobs that differ only in seed, ``k`` at a time, in the jobs' order."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        cfg = {key: v for key, v in job.config.items() if key != "seed"}
        key = json.dumps([job.experiment, job.group, job.variant, job.tags.get("profile"), cfg],
                         sort_keys=True, default=str)
        groups.setdefault(key, []).append(job)
    return [g[i : i + k] for g in groups.values() for i in range(0, len(g), k)]


def run_seed_batch(jobs: list[Job], *, force: bool = False, progress: bool = True) -> list[dict]:
    """Seeds of one config trained as one batched network (``convnets.multiseed.fit_seeds``):
    each seed keeps its own MLflow run, checkpoint and resume (a finished seed is skipped), and
    ends on its own (one diverging seed is FAILED, the others go on). Returns their rows."""
    with contextlib.ExitStack() as claims:
        rows, opened = [], []
        for job in jobs:
            holder = claims.enter_context(claim(claim_path(job)))
            o = _claimed_row(job, holder) if holder else _start(job, force=force, deadline=None)
            (rows if isinstance(o, dict) else opened).append(o)
        return _train_seed_batch(rows, opened, progress=progress)


def _train_seed_batch(rows: list[dict], opened: list[_Opened], *, progress: bool) -> list[dict]:
    """``run_seed_batch`` once its jobs are claimed and their runs opened."""
    if len(opened) <= 1:
        return rows + [_train(o, progress=progress, ddp=0, deadline=None) for o in opened]
    try:
        outcomes = fit_seeds(opened[0].job.config, [o.job.seed for o in opened],
                             loggers=[o.run.logger for o in opened],
                             checkpoints=[o.ckpt for o in opened],
                             checkpoint_metas=[{"run_id": o.run.run_id} for o in opened],
                             progress=progress, resolved=True)
    except MixedProgressError as err:  # e.g. one seed went on alone earlier
        print(f"  {err}: these seeds train one at a time", flush=True)
        return rows + [_train(o, progress=progress, ddp=0, deadline=None) for o in opened]
    except BaseException as err:  # Ctrl-C, SIGTERM or a crash ends every seed's run
        if isinstance(err, KeyboardInterrupt):
            for o in opened:
                o.run.fail_with(err)
            raise
        return rows + [_failed(o, err) for o in opened]
    for o, out in zip(opened, outcomes, strict=True):
        try:
            rows.append(_failed(o, out) if isinstance(out, BaseException) else _finished(o, out))
        except Exception as err:  # logging the result failed
            rows.append(_failed(o, err))
    return rows


def _run_batched(jobs: list[Job], k: int, *, force: bool, progress: bool,
                 deadline: Deadline | None) -> list[dict]:
    """``run --batch-seeds K``: seed groups through ``run_seed_batch``; configs it refuses
    (and runs under a deadline) one seed at a time, saying why."""
    rows: list[dict] = []
    for chunk in seed_groups(jobs, k):
        job = chunk[0]
        why = None
        if len(chunk) > 1:
            why = ("--deadline stops single runs only" if deadline is not None
                   else multiseed.unsupported(job.config, resolved=True))
        if why:
            print(f"[{job.experiment}] {job.group}/{job.variant}: seeds one at a time ({why})",
                  flush=True)
        if why or len(chunk) == 1:
            rows += [run_job(j, force=force, progress=progress, deadline=deadline)
                     for j in chunk]
        else:
            rows += run_seed_batch(chunk, force=force, progress=progress)
    return rows


def run_jobs(jobs: list[Job], *, force: bool = False, parallel: int = 1,
             progress: bool = True, ddp: int = 0, deadline: Deadline | None = None,
             batch_seeds: int = 1) -> list[dict]:
    """Run every job (``parallel`` at a time, in separate processes; or ``batch_seeds`` seeds
    of one config at a time as one batched network); returns summary rows."""
    rows: list[dict] = []
    _create_experiments(jobs)
    if parallel <= 1:
        try:
            if batch_seeds > 1:
                return _run_batched(jobs, batch_seeds, force=force, progress=progress,
                                    deadline=deadline)
            for job in jobs:
                rows.append(run_job(job, force=force, progress=progress, ddp=ddp,
                                    deadline=deadline))
        except KeyboardInterrupt:
            print("\ninterrupted: the current run is marked KILLED and its checkpoint kept; "
                  "rerun the same command to resume.", flush=True)
            raise
        return rows
    # Separate processes share the GPU; each keeps its own batch size and CUDA context.
    pool = ProcessPoolExecutor(max_workers=parallel, mp_context=get_context("spawn"),
                               initializer=worker_init, initargs=(worker_threads(parallel),))
    try:
        futures = {pool.submit(run_job, job, force=force, deadline=deadline): job
                   for job in jobs}
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                rows.append(fut.result())
            except Exception as err:  # the worker itself died
                rows.append(row(job, Outcome.CRASHED, f"FAILED ({err})"))
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


def _create_experiments(jobs: list[Job]) -> None:
    """Create the store's schema and the jobs' experiments once, before any job: processes
    racing to initialise a fresh SQLite store (this runner's workers, or a second runner) fail
    with "table already exists"; the lock beside the file lets one of them do it."""
    with first_use_lock(tracking_uri()):
        cl = tracking.client()
        for name in dict.fromkeys(j.experiment for j in jobs):
            text = next(j.tags.get("claim", "") for j in jobs if j.experiment == name)
            tracking.experiment_id(cl, name, {"claim": text})


def summary_table(rows: list[dict], split: str = "test") -> str:
    """The closing table: each job, the network that trained it (a smoke profile swaps
    ResNet-110 for a depth-8 net), its profile, status and final error."""
    table = [
        (r["group"], r["variant"], r["seed"], r.get("network", ""), r.get("profile", ""),
         r["status"], "" if r.get("error") is None else f"{r['error']:.2f}")
        for r in rows
    ]
    return tabulate(table, headers=["group", "variant", "seed", "network", "profile", "status",
                                    f"final {split} err %"])


def report(rows: list[dict]) -> int:
    """Print done versus left; exit status 1 only if a run crashed."""
    n = {outcome: sum(r["outcome"] is outcome for r in rows) for outcome in Outcome}
    crashed, left, claimed = n[Outcome.CRASHED], n[Outcome.LEFT], n[Outcome.CLAIMED]
    failed = crashed + n[Outcome.DIVERGED]
    done = n[Outcome.FINISHED] + n[Outcome.SKIPPED]
    print(f"{done} finished or skipped, {failed} failed ({crashed} crashed, "
          f"{failed - crashed} diverged)"
          + (f", {left} left for the next invocation (deadline)" if left else "")
          + (f", {claimed} being trained by other processes" if claimed else ""), flush=True)
    # a diverged run is a result (the paper reports some variants as failing); a crash is not;
    # a deadline is a planned stop
    return 1 if crashed else 0
