"""`python -m experiments run NAME --profile P [--seeds N] [--set key=value ...]`, `list`, `validate`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from convnets import tracking
from convnets.config import eval_split
from convnets.names import tracking_uri
from experiments.deadline import ENV, parse_deadline
from experiments.locks import StoreBroken, first_use_lock, ready_store
from experiments.lr_search import add_lr_search_parser, run_lr_search
from experiments.preflight import check_jobs_data, check_stored_results
from experiments.rekey import write_rekey
from experiments.runner import Terminated, report, run_jobs, stop_on_sigterm, summary_table
from experiments.shifts import add_shifts_parser, run_shifts_command
from experiments.slurm import status, submit
from experiments.slurm_options import add_slurm_arguments, check_slurm_args
from experiments.spec import (
    PROFILES,
    SpecError,
    expand,
    list_specs,
    load_spec,
    parse_set,
    require_devices,
)
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
    if not args.seed:
        return spec, jobs
    have = sorted({job.seed for job in jobs})
    wrong = [s for s in args.seed if s not in have]
    if wrong or len(set(args.seed)) < len(args.seed):
        what = (f"seed {wrong[0]} is not among the run's seeds {have[0]}-{have[-1]} (raise "
                "--seeds to reach it)" if wrong else "a seed is given twice")
        raise SpecError(f"--seed: {what}")
    return spec, [job for job in jobs if job.seed in args.seed]


def _add_plan_arguments(p) -> None:
    """The options that choose a spec's runs (``run`` and ``status``)."""
    p.add_argument("name", help="spec name (see `list`), e.g. resnetv2-orderings, or the "
                   "path of a spec file whose stem equals its `name:`")
    p.add_argument("--profile", choices=PROFILES, default="smoke",
                   help="the spec's schedule and seeds: paper (the paper's), quick (shortened, "
                        "for one GPU), cpu (sized for a 2-core CPU, where a spec has it), "
                        "smoke (synthetic data, tiny nets, seconds; the default)")
    p.add_argument("--seeds", type=int, default=None, help="override the profile's seeds")
    p.add_argument("--seed", type=int, action="append", default=[], metavar="S",
                   help="only seed S of those (0-based; repeatable), e.g. the seeds that no "
                        "ledger part holds yet")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run, e.g. --set optim.lr=0.05")
    p.add_argument("--variant", action="append", default=[],
                   help="only this variant ('group/variant' or 'variant'); repeatable")
    p.add_argument("--dataset", default=None,
                   help="e.g. imagefolder:/data/cifar10-jpeg-q75; drops the spec's and "
                        "profile's data options (smoke's synthetic sizes) unless it names "
                        "the same data set")
    p.add_argument("--horizon", type=int, default=None, metavar="H",
                   help="train the profile's recipe up to iteration H of its schedule (its "
                        "config hash unchanged), measure and checkpoint it there; a later call "
                        "with a larger H extends the same runs, a smaller one is answered by "
                        "them")
    p.add_argument("--data-dir", default=None,
                   help="folder holding the data sets (default $CONVNETS_DATA, else "
                        "~/.cache/convnets/data)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: the spec's runtime.device, auto)")
    p.add_argument("--lr", choices=["spec", "tuned"], default="spec",
                   help="tuned: use experiments/tuned/NAME.yaml from lr-search")
    p.add_argument("--allow-tuned-mismatch", action="store_true",
                   help="with --lr tuned: accept lrs searched for another profile or data")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the claim specs")
    p_val = sub.add_parser("validate", help="validate specs (all, or the named ones)")
    p_val.add_argument("names", nargs="*")
    p_run = sub.add_parser("run", help="run a claim's grid x seeds into MLflow (here, or as "
                           "a Slurm job array with --launcher slurm)")
    _add_plan_arguments(p_run)
    p_run.add_argument("--force", action="store_true", help="rerun FINISHED runs too")
    p_run.add_argument("--parallel", type=int, default=1, help="K runs at once (processes)")
    p_run.add_argument("--ddp", type=int, default=0, metavar="K",
                       help="train each run data-parallel over K processes (torch DDP)")
    p_run.add_argument("--batch-seeds", type=int, default=1, metavar="K",
                       help="train K seeds of a config at once as one batched network, each "
                            "with its own MLflow run and checkpoint (configs it cannot batch "
                            "run one seed at a time, saying why)")
    p_run.add_argument("--dry-run", action="store_true", help="list the jobs, run nothing")
    p_run.add_argument("--deadline", default=os.environ.get(ENV),
                       help="stop by then: seconds (480, 8m, 2h), a UTC clock time (21:30) or "
                            f"ISO 8601; default ${ENV}. Runs that cannot finish are not "
                            "started; the running one is checkpointed and marked KILLED; "
                            "rerunning resumes. Exit 0.")
    add_slurm_arguments(p_run)
    p_status = sub.add_parser("status", help="where each run of a spec stands: pending, running, "
                              "finished, failed, killed, with its Slurm job and MLflow run")
    _add_plan_arguments(p_status)
    p_status.add_argument("--slurm-folder", default=os.environ.get("CONVNETS_SLURM_FOLDER"),
                          help="the submission folder given to `run --launcher slurm`")
    add_shifts_parser(sub)
    sub.add_parser("rekey", help="recompute paper_tables/data/rekey.csv: the ledger parts' "
                   "config keys under today's hash rule (from the specs at their commits)")
    add_lr_search_parser(sub)
    return parser


def _listing(args) -> int:
    """``list`` and ``validate``."""
    if args.cmd == "list":
        for name in list_specs():
            spec = load_spec(name)
            print(f"{name:22s} {spec['citation']}")
        return 0
    for name in args.names or list_specs():
        spec = load_spec(name)
        n = {p: len(expand(spec, p)) for p in spec["profiles"]}
        print(f"{name}: ok ({', '.join(f'{p} {k} runs' for p, k in n.items())})")
    return 0


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
    spec, jobs = _jobs(args)
    require_devices(jobs)
    if args.lr == "tuned":
        check_tuned(args.name, jobs, allow_mismatch=args.allow_tuned_mismatch)
    return spec, jobs, deadline


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "lr-search":
        return run_lr_search(args)
    if args.cmd in ("shifts", "shift"):
        return run_shifts_command(args)
    if args.cmd == "rekey":
        path = write_rekey()
        print(f"wrote {path}")
        return 0
    try:
        if args.cmd in ("list", "validate"):
            return _listing(args)
        if args.cmd == "status":
            return _status(args)
        spec, jobs, deadline = _checked_jobs(args)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    at = f", to horizon {args.horizon}" if args.horizon else ""
    print(f"{spec['name']}: {len(jobs)} runs, profile {args.profile}{at}", flush=True)
    if args.launcher == "slurm" and args.dry_run:
        return submit(args, spec, jobs)
    if args.dry_run:
        for job in jobs:
            print(f"  {job.key} config {job.config_hash}")
        return 0
    try:
        tracking.check_store()
        ready_store(tracking_uri())  # whole, or created aside and moved into place
        checksums = check_jobs_data(jobs)  # every data set read and checked before any run
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


def _status(args) -> int:
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


if __name__ == "__main__":
    stop_on_sigterm()  # the command line only: a process that imports main() keeps its own
    sys.exit(main())
