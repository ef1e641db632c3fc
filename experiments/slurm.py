"""``run --launcher slurm``: one Slurm job array per spec, through submitit, a task per run.

The submitting process plans the same jobs as a local run, leaves out those that are FINISHED
(or diverged earlier), queued or being trained (``experiments.slurm_state``), and submits the
rest as one ``map_array``. Each task is ``train_task``: the runner's own single-run path
(``experiments.runner.run_job``: claim, skip, resume, SIGTERM -> KILLED with its checkpoint)
for one pickled ``Job``, with a deadline a few minutes inside the task's time limit.

* Time limit: the run stops at the deadline with an exact checkpoint (KILLED, ``deadline``) and
  the task requeues itself (``scontrol requeue``, at most ``--requeues`` times); the requeued
  task resumes it. ``SIGUSR2`` (submitit's ``--signal``, sent ``signal_delay_s`` before the
  limit) stops it the same way if the deadline was not reached first.
* Preemption: Slurm sends SIGTERM; the run ends KILLED with its checkpoint, and with
  ``--requeue`` (always set) Slurm puts the task back in the queue, where it resumes.
* ``scancel`` (SIGTERM as well): KILLED with its checkpoint; submitting again resumes it.

Tasks find MLflow and the checkpoints through ``MLFLOW_TRACKING_URI``, ``CONVNETS_ARTIFACTS``
and ``CONVNETS_CHECKPOINTS``, exported in the batch script as the submitting process resolved
them, and import this checkout (``PYTHONPATH``) with the submitting ``sys.executable``.
"""

from __future__ import annotations

import datetime
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from convnets import tracking
from convnets.names import DEADLINE, INTERRUPTED, REPO_ROOT, Outcome, tracking_uri
from convnets.tracking import Terminated
from experiments import slurm_state
from experiments.deadline import Deadline, parse_deadline
from experiments.runner import checkpoint_dir, claim_path, run_job, stop_on_sigterm
from experiments.runner import row as runner_row
from experiments.slurm_options import margin_s, time_limit_minutes
from experiments.spec import Job, SpecError

#: environment read by the tasks, exported in the batch script as resolved at submission
TASK_ENV = ("CONVNETS_ARTIFACTS", "CONVNETS_DATA", "CONVNETS_GIT_DIFF", "OMP_NUM_THREADS",
            "MLFLOW_DISABLE_TELEMETRY")


@dataclass(frozen=True)
class Launch:
    """What every task of one submission shares (pickled with it)."""

    force: bool
    limit_min: int
    requeues: int
    deadline_at: float | None  # the user's --deadline, if any (an absolute time)


def submission_folder(args, spec_name: str) -> Path:
    base = Path(args.slurm_folder) if args.slurm_folder else checkpoint_dir() / "slurm"
    return base.resolve() / spec_name


def _sbatch_flags(flags: list[str]) -> dict:
    """``["--account=x", "--exclusive"]`` -> submitit's ``additional_parameters``."""
    out: dict = {}
    for flag in flags:
        key, eq, value = flag.lstrip("-").partition("=")
        if not flag.startswith("--") or not key:
            raise SpecError(f"--sbatch {flag!r}: expected --name=value or --name")
        out[key.replace("-", "_")] = value if eq else True
    return out


def _setup_lines() -> list[str]:
    """Batch-script lines: the store, checkpoints and this checkout, as resolved here."""
    env = {"MLFLOW_TRACKING_URI": tracking_uri(),
           "CONVNETS_CHECKPOINTS": str(checkpoint_dir().resolve())}
    env.update({k: os.environ[k] for k in TASK_ENV if os.environ.get(k)})
    path = os.pathsep.join([str(REPO_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env["PYTHONPATH"] = path
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def sbatch_parameters(args, spec_name: str) -> dict:
    """submitit's parameters of one submission (its ``update_parameters`` keywords)."""
    limit = time_limit_minutes(args.time_limit)
    params = dict(time=limit, job_name=f"convnets-{spec_name}", nodes=1, ntasks_per_node=1,
                  cpus_per_task=args.cpus_per_run, array_parallelism=args.array_parallelism,
                  stderr_to_stdout=True, setup=_setup_lines(),
                  # SIGUSR2 after the run's own deadline (margin_s before the limit)
                  signal_delay_s=max(5, int(margin_s(limit) / 2)),
                  additional_parameters={"requeue": True, **_sbatch_flags(args.sbatch)})
    if args.partition:
        params["partition"] = args.partition
    if args.gpus_per_run:
        params["gpus_per_node"] = args.gpus_per_run
    return params


def executor(args, spec_name: str, folder: Path):
    """The submitit executor of one submission (nothing is submitted yet)."""
    ex = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=args.requeues)
    ex.update_parameters(**sbatch_parameters(args, spec_name))
    return ex


def to_submit(states: list[slurm_state.RunState], force: bool) -> list[Job]:
    """The jobs a submission trains: not finished (unless ``force``), not diverged earlier,
    not queued or being trained."""
    out = []
    for s in states:
        diverged = s.state == "failed" and s.note.startswith("diverged")
        if s.busy or (not force and (s.state == "finished" or diverged)):
            continue
        out.append(s.job)
    return out


def submit(args, spec: dict, jobs: list[Job]) -> int:
    """``run --launcher slurm``: print what stands where, submit the missing runs as one
    array (``--dry-run``: print the array's batch script instead)."""
    folder = submission_folder(args, spec["name"])
    states = slurm_state.run_states(jobs, folder, claim_path)
    todo = to_submit(states, args.force)
    skipped = [s for s in states if s.job not in todo]
    if skipped:
        print(slurm_state.status_table(skipped))
    print(f"{spec['name']}: {len(todo)} of {len(jobs)} runs to submit"
          + (f" ({len(skipped)} finished, queued, running or diverged)" if skipped else ""),
          flush=True)
    if not todo:
        return 0
    deadline = parse_deadline(args.deadline)
    launch = Launch(force=args.force, limit_min=time_limit_minutes(args.time_limit),
                    requeues=args.requeues, deadline_at=deadline.at if deadline else None)
    if args.dry_run:
        return _print_array(args, spec["name"], folder, todo)
    ex = executor(args, spec["name"], folder)
    submitted = ex.map_array(train_task, todo, [launch] * len(todo))
    ids = [j.job_id for j in submitted]
    slurm_state.append_records(folder, todo, ids)
    what = (f"job {ids[0]} (1 task)" if len(ids) == 1 else
            f"job array {ids[0].split('_')[0]} ({len(ids)} tasks, {ids[0]} .. {ids[-1]})")
    print(f"submitted {what}; logs in {folder}/; follow with "
          f"`python -m experiments status {args.name}`", flush=True)
    return 0


def _print_array(args, spec_name: str, folder: Path, todo: list[Job]) -> int:
    """The batch script ``submit`` would hand to sbatch, and the task of each array index."""
    cmd = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {folder}/%j"
    print(_make_sbatch_string(command=cmd, folder=str(folder / "%j"), map_count=len(todo),
                              **sbatch_parameters(args, spec_name)))
    for i, job in enumerate(todo):
        print(f"  task {i}: {job.key} config {job.config_hash}")
    return 0


def _time_up(signum, frame) -> None:
    raise Terminated("time limit (SIGUSR2)")


def _task_id() -> str:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return env.get("SLURM_JOB_ID", "")


def _job_end(task: str, fallback: float) -> float:
    """When Slurm ends this job (its start plus the time limit, from ``squeue``), else
    ``fallback``: the task's own start plus the limit, a little later than the job's."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", task, "-o", "%e"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
        return datetime.datetime.fromisoformat(out[0]).timestamp()  # local time, as printed
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return fallback


def _tag_runs(job: Job, since_ms: int, task: str) -> None:
    """Tag the run this task trained with its Slurm job id (tag ``slurm_job``)."""
    cl = tracking.client()
    if not task:
        return
    runs = tracking.find_runs(cl, job.keys, job.seed,
                              job.tags.get("profile", ""))
    for r in runs:
        if r.info.end_time is None or r.info.end_time >= since_ms:
            cl.set_tag(r.info.run_id, "slurm_job", task)
            return


def train_task(job: Job, launch: Launch) -> dict:
    """One array task: ``run_job`` for one job; requeues the task when its time limit, not a
    cancel or a preemption, stopped the run."""
    start = time.time()
    stop_on_sigterm()  # submitit ignores SIGTERM; the runner records it (KILLED, checkpoint)
    signal.signal(signal.SIGUSR2, _time_up)
    task = _task_id()
    at = _job_end(task, start + launch.limit_min * 60) - margin_s(launch.limit_min)
    deadline = Deadline(min(at, launch.deadline_at or at))
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    print(f"task {task}: {job.experiment} {job.key} config {job.config_hash}", flush=True)
    timed_out = False
    try:  # --force applies to the first start only: a requeued task resumes its run
        row = run_job(job, force=launch.force and restarts == 0, progress=False,
                      deadline=deadline)
    except Terminated as err:
        timed_out = "SIGUSR2" in str(err)
        row = runner_row(job, Outcome.LEFT, f"KILLED (interrupted: {err})",
                         reason=INTERRUPTED)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # from here on the run is closed
    _tag_runs(job, int(start * 1000), task)
    limit_first = launch.deadline_at is None or at < launch.deadline_at
    timed_out = timed_out or (row["reason"] == DEADLINE and limit_first)
    print(f"task {task}: {row['status']}", flush=True)
    if timed_out and restarts < launch.requeues and task:
        print(f"task {task}: time limit; requeued ({restarts + 1} of {launch.requeues})",
              flush=True)
        subprocess.run(["scontrol", "requeue", task], check=False, timeout=60)
    return row


def status(args, spec: dict, jobs: list[Job]) -> int:
    """``status SPEC``: per run pending / running / finished / failed / killed, with its Slurm
    job and MLflow run, then the counts."""
    states = slurm_state.run_states(jobs, submission_folder(args, spec["name"]), claim_path)
    print(slurm_state.status_table(states))
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    print(f"{spec['name']} (profile {args.profile}; --profile picks another): "
          + ", ".join(f"{n} {k}" for k, n in counts.items()), flush=True)
    return 0
