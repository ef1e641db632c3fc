"""The options of ``run --launcher slurm`` and their checks (no torch, no submitit import).

Each option defaults to ``$CONVNETS_SLURM_<NAME>`` (``PARTITION``, ``TIME``, ``GPUS``, ``CPUS``,
``PARALLELISM``, ``SBATCH``, ``REQUEUES``, ``FOLDER``), so a cluster's settings can live in a
shell profile or a module file rather than on every command line.
"""

from __future__ import annotations

import os
import shlex
import shutil

from experiments.spec_check import SpecError


def _env(name: str, default=None):
    value = os.environ.get(f"CONVNETS_SLURM_{name}")
    return default if value in (None, "") else value


def add_slurm_arguments(p) -> None:
    """The ``run`` options of the Slurm launcher; each defaults to ``$CONVNETS_SLURM_<NAME>``."""
    g = p.add_argument_group("Slurm (--launcher slurm); each option defaults to "
                             "$CONVNETS_SLURM_<NAME>, e.g. $CONVNETS_SLURM_PARTITION")
    g.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="local: train here (default); slurm: submit one job array, a task per "
                        "run that is not FINISHED, and return")
    g.add_argument("--partition", default=_env("PARTITION"), help="Slurm partition")
    g.add_argument("--time-limit", default=_env("TIME", "4h"),
                   help="each task's wall time: minutes, 90m, 4h or H:MM:SS (default 4h); the "
                        "run stops a few minutes inside it and the task requeues itself")
    g.add_argument("--gpus-per-run", type=int, default=int(_env("GPUS", 0)),
                   help="GPUs per task (default 0)")
    g.add_argument("--cpus-per-run", type=int, default=int(_env("CPUS", 1)),
                   help="CPUs per task (default 1)")
    g.add_argument("--array-parallelism", type=int, default=int(_env("PARALLELISM", 64)),
                   help="tasks of the array running at once (default 64)")
    g.add_argument("--sbatch", action="append", default=shlex.split(_env("SBATCH", "")),
                   metavar="FLAG", help="extra sbatch flag, e.g. --sbatch=--account=proj "
                   "--sbatch=--qos=low; repeatable ($CONVNETS_SLURM_SBATCH: space-separated)")
    g.add_argument("--requeues", type=int, default=int(_env("REQUEUES", 20)),
                   help="times a task requeues itself after its time limit (default 20)")
    g.add_argument("--slurm-folder", default=_env("FOLDER"),
                   help="submitit's folder (pickles, logs, submission record; default "
                        "$CONVNETS_CHECKPOINTS/slurm): on the shared file system")


def time_limit_minutes(text: str) -> int:
    """``90``, ``90m``, ``4h``, ``1:30:00`` or ``2-00:00:00`` -> whole minutes (at least 1)."""
    t = str(text).strip()
    try:
        if t.endswith("h"):
            minutes = float(t[:-1]) * 60
        elif t.endswith("m"):
            minutes = float(t[:-1])
        elif ":" in t:
            days, _, hms = t.rpartition("-")
            h, m, s = ([0, 0] + [int(x) for x in hms.split(":")])[-3:]
            minutes = (int(days or 0) * 24 + h) * 60 + m + s / 60
        else:
            minutes = float(t)
    except ValueError:
        raise SpecError(f"--time-limit {text!r}: expected minutes (90), 90m, 4h or H:MM:SS") \
            from None
    if minutes < 1:
        raise SpecError(f"--time-limit {text!r}: at least one minute")
    return int(round(minutes))


def margin_s(limit_min: int) -> float:
    """How long before the time limit a task's run stops: 5 minutes, or a tenth of a short
    limit (a 10-minute test limit stops a minute early)."""
    return min(300.0, limit_min * 60 * 0.1)


def check_slurm_args(args) -> None:
    """Refuse what the Slurm launcher cannot do, before anything is submitted."""
    if args.ddp or args.parallel > 1 or args.batch_seeds > 1:
        raise SpecError("--launcher slurm runs one run per task: --parallel, --ddp and "
                        "--batch-seeds do not apply (use --array-parallelism)")
    for name in ("gpus_per_run", "array_parallelism", "requeues"):
        if getattr(args, name) < 0 or (name == "array_parallelism" and args.array_parallelism < 1):
            raise SpecError(f"--{name.replace('_', '-')} {getattr(args, name)}: out of range")
    values = [("partition", args.partition), ("time-limit", args.time_limit),
              *(("sbatch", f) for f in args.sbatch)]
    for name, value in values:
        if value is not None and (not str(value).strip() or any(
                c.isspace() or ord(c) < 32 for c in str(value))):
            raise SpecError(f"--{name} {value!r}: no spaces, newlines or control characters "
                            "(it becomes a line of the batch script)")
    if args.gpus_per_run > 1:  # one process per task: the other GPUs would sit idle
        raise SpecError(f"--gpus-per-run {args.gpus_per_run}: a task trains one run in one "
                        "process on one GPU; ask for 1 and let --array-parallelism run more "
                        "runs at once (data-parallel tasks are not launched by Slurm here)")
    if args.cpus_per_run < 1:
        raise SpecError(f"--cpus-per-run {args.cpus_per_run}: at least 1")
    time_limit_minutes(args.time_limit)
    if not args.dry_run:
        if shutil.which("sbatch") is None:
            raise SpecError("--launcher slurm: no `sbatch` on PATH (run this on a Slurm login "
                            "node, or use --launcher local)")
