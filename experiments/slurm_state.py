"""Where each run of a spec stands on a Slurm cluster: MLflow, the run's claim, the queue.

Three sources, none of which needs Slurm's accounting database (``slurmdbd``):

* the MLflow run (FINISHED, FAILED, KILLED, RUNNING), found by config hash, seed and profile;
* the submission record, ``submissions.jsonl`` in the spec's submission folder: one line per
  submitted task (run key, config hash, seed, profile, Slurm job id ``ARRAY_TASK``);
* ``squeue``: whether that task is still pending or running. A finished task leaves the queue,
  and its outcome is then read from MLflow alone.

The claim file beside the checkpoint (``experiments.locks.claim``) is read, never locked here:
locking it, even for a moment, could make a task that starts at that moment skip its run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from convnets import tracking
from convnets.config import eval_split
from convnets.names import (
    DIVERGED,
    FAILURE_KIND,
    FAILURE_REASON,
    RunStatus,
    final_error,
    tracking_uri,
)
from experiments.spec import Job

RECORD = "submissions.jsonl"
#: squeue states of a task that has not started training yet
PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESV_DEL_HOLD",
           "SUSPENDED", "RESIZING"}
ACTIVE = PENDING | {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


def run_id_key(job: Job) -> str:
    """What identifies a run across launchers: experiment, config hash, seed, profile."""
    return f"{job.experiment}/{job.config_hash}/seed{job.seed}/{job.tags.get('profile', '')}"


def read_records(folder: Path) -> dict[str, dict]:
    """The latest submission of each run (by ``run_id_key``) in ``folder``'s record."""
    path = folder / RECORD
    out: dict[str, dict] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[rec["run"]] = rec
    return out


def append_records(folder: Path, jobs: list[Job], job_ids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(folder / RECORD, "a") as fh:
        for job, jid in zip(jobs, job_ids, strict=True):
            fh.write(json.dumps({"run": run_id_key(job), "key": job.key, "slurm_job": jid,
                                 "submitted": now}) + "\n")


def queue_states() -> dict[str, str]:
    """Slurm job id -> state, for every job in the queue, under both of an array task's ids
    (``ARRAY_TASK`` and its own numeric ``SLURM_JOB_ID``); empty when ``squeue`` fails."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%A|%T"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = states[parts[1]] = parts[2]
    return states


def _claim_holder(path: Path, queue: dict[str, str]) -> str | None:
    """Who holds the claim file at ``path``, if it looks alive: a Slurm job still in the queue,
    a live process on this host, or (unknowable from here) a process on another host."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return None
    if info.get("slurm_job"):
        job = str(info["slurm_job"])
        return f"Slurm job {job}" if queue.get(job) in ACTIVE else None
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info.get("pid", -1)), 0)
        except (OSError, ValueError):
            return None
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}"


@dataclass
class RunState:
    """One run of the spec: what the status view prints and the launcher decides on."""

    job: Job
    state: str  # not submitted | pending | running | finished | failed | killed
    slurm_job: str = ""
    run_id: str = ""
    error: float | None = None
    note: str = ""

    @property
    def busy(self) -> bool:
        """Queued or being trained: submitting it again would only make a task that skips."""
        return self.state in ("pending", "running")


def _store_key(config_hash: str, seed, profile: str) -> str:
    return f"{config_hash}/seed{seed}/{profile}"


def _runs_by_key(jobs: list[Job]) -> dict[str, list]:
    """MLflow runs of these jobs' profiles, newest first, by config key, seed and profile, from
    every experiment (a network two specs name is one run; one search per profile)."""
    out: dict[str, list] = {}
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return out  # no store yet: nothing ran (and looking would create it)
    cl = tracking.client()
    ids = [e.experiment_id for e in cl.search_experiments(max_results=50000)]
    for profile in dict.fromkeys(j.tags.get("profile", "") for j in jobs):
        for r in cl.search_runs(ids, f"tags.profile = '{profile}'", max_results=50000,
                                order_by=["attributes.start_time DESC"]):
            tags = r.data.tags
            out.setdefault(_store_key(tags.get("config_hash"), tags.get("seed"), profile),
                           []).append(r)
    return out


def _job_runs(job: Job, runs: dict[str, list]) -> list:
    """The job's runs under today's key or the previous rule's (``Job.keys``), newest first."""
    found = [r for k in job.keys
             for r in runs.get(_store_key(k, job.seed, job.tags.get("profile", "")), [])]
    return sorted(found, key=lambda r: r.info.start_time or 0, reverse=True)


def run_states(jobs: list[Job], folder: Path, claim_path) -> list[RunState]:
    """Where each job stands (``claim_path``: the runner's claim file of a job)."""
    records, queue, runs = read_records(folder), queue_states(), _runs_by_key(jobs)
    return [_state(j, records.get(run_id_key(j), {}), queue, _job_runs(j, runs),
                   claim_path(j)) for j in jobs]


def _state(job: Job, rec: dict, queue: dict[str, str], runs: list, claim: Path) -> RunState:
    jid = rec.get("slurm_job", "")
    in_queue = queue.get(jid, "")
    finished = [r for r in runs if r.info.status == RunStatus.FINISHED]
    latest = finished[0] if finished else (runs[0] if runs else None)
    out = RunState(job, "not submitted", slurm_job=jid,
                   run_id=latest.info.run_id if latest else "")
    if latest is not None:
        jid = latest.data.tags.get("slurm_job", "") if not jid else jid
        out.slurm_job = jid
    if finished:
        err_key = final_error(eval_split(job.config))
        out.state, out.error = "finished", latest.data.metrics.get(err_key)
        return out
    holder = _claim_holder(claim, queue) if claim.exists() else None
    if in_queue in PENDING and not holder:
        out.state, out.note = "pending", in_queue.lower()
    elif in_queue in ACTIVE or holder:
        out.state, out.note = "running", f"claimed by {holder}" if holder else ""
    elif latest is not None:
        status = latest.info.status
        out.state = "failed" if status == RunStatus.FAILED else "killed"
        out.note = latest.data.tags.get(FAILURE_REASON, "")
        if status == RunStatus.RUNNING:
            out.note = "left RUNNING by a task that ended; resumes on the next submission"
        if latest.data.tags.get(FAILURE_KIND) == DIVERGED:
            out.note = "diverged: " + out.note
    elif jid:
        out.state, out.note = "failed", f"task {jid} ended without opening a run; see its log"
    return out


def status_table(states: list[RunState]) -> str:
    rows = [(s.job.group, s.job.variant, s.job.seed, s.state, s.slurm_job, s.run_id,
             "" if s.error is None else f"{s.error:.2f}", s.note[:70]) for s in states]
    return tabulate(rows, headers=["group", "variant", "seed", "state", "slurm job",
                                   "mlflow run", "final err %", "note"])
