"""The commands of ``python -m experiments`` that train or read runs: ``run``, ``status`` and
``validate`` (``experiments.__main__`` parses the command line and imports this module only
for them: it imports torch)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from analysis import ledger
from convnets import tracking
from convnets.config import eval_split
from convnets.data import DatasetError
from convnets.names import tracking_uri
from experiments.deadline import parse_deadline
from experiments.locks import StoreBroken, first_use_lock, ready_store
from experiments.preflight import check_jobs_data, check_stored_results, check_writable_folders
from experiments.runner import Terminated, report, run_jobs, summary_table
from experiments.slurm import status, submit
from experiments.slurm_options import check_slurm_args
from experiments.spec import SpecError, expand, load_spec, parse_set, require_devices
from experiments.spec_check import list_specs
from experiments.tuned import check_tuned, tuned_lrs


def _jobs(args):
    spec = load_spec(args.name)
    jobs = expand(
        spec,
        args.profile,
        seeds=args.seeds,
        sets=parse_set(args.set),
        only=args.variant or None,
        dataset=args.dataset,
        data_dir=args.data_dir,
        device=args.device,
        horizon=args.horizon,
        tuned_lr=tuned_lrs(args.name) if args.lr == "tuned" else None,
    )
    if args.seed:
        have = sorted({job.seed for job in jobs})
        wrong = [s for s in args.seed if s not in have]
        if wrong or len(set(args.seed)) < len(args.seed):
            what = (f"seed {wrong[0]} is not among the run's seeds {have[0]}-{have[-1]} (raise "
                    "--seeds to reach it)" if wrong else "a seed is given twice")
            raise SpecError(f"--seed: {what}")
        jobs = [job for job in jobs if job.seed in args.seed]
    return spec, _missing(jobs, args.horizon) if args.missing else jobs


def _missing(jobs, horizon):
    """``--missing``: the jobs no ledger part answers at ``horizon``; says which it drops."""
    try:
        reached = ledger.reach()
        answered = [ledger.holds(reached, j.config_hash, j.seed, horizon) for j in jobs]
    except (ledger.PartError, DatasetError) as err:  # the keys of an image folder read it
        raise SpecError(f"--missing: {err}") from None
    held = [j for j, a in zip(jobs, answered, strict=True) if a]
    seeds: dict[str, list[int]] = {}
    for j in held:
        seeds.setdefault(f"{j.group}/{j.variant}", []).append(j.seed)
    where = f"at horizon {horizon}" if horizon else "to the schedule's end"
    print(f"--missing: the ledger holds {len(held)} of {len(jobs)} runs {where}"
          + "".join(f"\n  held: {v} seed{'s' * (len(s) > 1)} {', '.join(map(str, s))}"
                    for v, s in seeds.items()), flush=True)
    return [j for j, a in zip(jobs, answered, strict=True) if not a]


def _checked_jobs(args):
    """(spec, jobs, deadline) of ``run``, every option checked; raises ``SpecError``."""
    if args.launcher == "slurm":
        check_slurm_args(args)
    if sum([bool(args.ddp), args.parallel > 1, args.batch_seeds > 1]) > 1:
        raise SpecError("--ddp, --parallel and --batch-seeds do not combine: pick one way to "
                        "use devices")
    if args.parallel < 1:
        raise SpecError(f"--parallel {args.parallel}: must be a positive number of processes")
    if args.ddp < 0:
        raise SpecError(f"--ddp {args.ddp}: must be a number of processes >= 2 (or 0: none)")
    if args.batch_seeds < 1:
        raise SpecError(f"--batch-seeds {args.batch_seeds}: must be a positive number")
    if args.seeds is not None and args.seeds < 1:
        raise SpecError(f"--seeds {args.seeds}: must be a positive number of seeds "
                        "(omit it for the profile's count)")
    try:
        deadline = parse_deadline(args.deadline)
    except ValueError as err:
        raise SpecError(f"--deadline: {err}") from None
    if args.partial:
        if deadline is None or args.launcher == "slurm":
            raise SpecError("--partial: needs --deadline (and a local run: a Slurm task's "
                            "deadline is its time limit, where it requeues itself)")
        deadline = dataclasses.replace(deadline, partial=True)
    spec, jobs = _jobs(args)
    require_devices(jobs)
    if args.lr == "tuned":
        check_tuned(args.name, jobs, allow_mismatch=args.allow_tuned_mismatch)
    return spec, jobs, deadline


def status_command(args) -> int:
    """``status SPEC``: one line per run (the launcher's view; local runs show too)."""
    spec, jobs = _jobs(args)
    try:  # an existing store half-created long ago is repaired (status never creates one)
        if (db := _sqlite_file(tracking_uri())) is not None and db.exists():
            ready_store(tracking_uri())
    except StoreBroken as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return status(args, spec, jobs)


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def validate_command(args) -> int:
    """``validate [NAME ...]``: every spec read, checked and expanded for each profile."""
    for name in args.names or list_specs():
        spec = load_spec(name)
        n = {p: len(expand(spec, p)) for p in spec["profiles"]}
        print(f"{name}: ok ({', '.join(f'{p} {k} runs' for p, k in n.items())})")
    return 0


def run_command(args) -> int:
    """``run NAME ...``: check everything, then train (or submit) the jobs. Ctrl-C (or
    SIGTERM) before the first run opens ends in one line: nothing was changed."""
    try:
        return _run(args)
    except KeyboardInterrupt as err:  # training catches its own: this is before any run
        what = ("; a submission under way may have been made (see `status`)"
                if args.launcher == "slurm" else "; nothing was changed")
        print(f"interrupted before any run started{what}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130


def _run(args) -> int:
    try:
        spec, jobs, deadline = _checked_jobs(args)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    at = f", to horizon {args.horizon}" if args.horizon else ""
    print(f"{spec['name']}: {len(jobs)} runs, profile {args.profile}{at}", flush=True)
    if args.dry_run:
        try:  # an image folder's config key is its content: the folder is read to plan
            if args.launcher == "slurm":
                return submit(args, spec, jobs)
            for job in jobs:
                print(f"  {job.key} config {job.config_hash}")
        except DatasetError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        tracking.check_store()
        checksums = check_jobs_data(jobs)  # every data set read and checked before any run
        check_writable_folders()  # where checkpoints and claims go, before a run needs them
        ready_store(tracking_uri())  # whole, or created aside and moved into place
    except (tracking.StoreUnreachable, StoreBroken, SpecError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    with first_use_lock(tracking_uri()):  # a fresh store: one process creates it
        cl = tracking.client()  # the experiment, its kind tag and description, before any run
        try:
            if not args.force:  # a stored result of data that has changed since is no answer
                check_stored_results(cl, jobs, checksums)
        except SpecError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        tracking.describe_experiment(
            cl, tracking.experiment_id(cl, spec["name"], {"claim": spec["claim"].strip()}), spec)
    if args.launcher == "slurm":
        return submit(args, spec, jobs)
    try:
        rows = run_jobs(jobs, force=args.force, parallel=args.parallel, ddp=args.ddp,
                        deadline=deadline, batch_seeds=args.batch_seeds)
    except KeyboardInterrupt as err:
        return 143 if isinstance(err, Terminated) else 130
    split = eval_split(jobs[0].config) if jobs else "test"
    print(summary_table(rows, split))
    return report(rows)
