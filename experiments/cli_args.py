"""The command line of ``python -m experiments``: its parser and options, and nothing heavy.

This module imports neither torch nor optuna nor submitit, so ``--help`` and ``list`` answer
at once; each command imports what it uses when it runs (``experiments.__main__``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from convnets.names import PROFILES
from experiments.deadline import ENV
from experiments.slurm_options import add_slurm_arguments


def add_plan_arguments(p) -> None:
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
                        "ledger part holds yet (or --missing)")
    p.add_argument("--missing", action="store_true",
                   help="only the runs the committed ledger (paper_tables/data) does not hold "
                        "yet at this horizon: a campaign goes on from its parts on any machine")
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
                   help="tuned: the lrs lr-search recorded (tuned/NAME.yaml, else a committed "
                   "experiments/tuned/NAME.yaml)")
    p.add_argument("--allow-tuned-mismatch", action="store_true",
                   help="with --lr tuned: accept lrs searched for another profile or data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the claim specs")
    p_val = sub.add_parser("validate", help="validate specs (all, or the named ones)")
    p_val.add_argument("names", nargs="*")
    p_run = sub.add_parser("run", help="run a claim's grid x seeds into MLflow (here, or as "
                           "a Slurm job array with --launcher slurm)")
    add_plan_arguments(p_run)
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
    p_run.add_argument("--partial", action="store_true",
                       help="with --deadline: start runs that cannot finish by then too; they "
                            "stop there with an exact checkpoint and the next call resumes "
                            "them (for a machine whose disk outlives the deadline)")
    add_slurm_arguments(p_run)
    p_status = sub.add_parser("status", help="where each run of a spec stands: pending, running, "
                              "finished, failed, killed, with its Slurm job and MLflow run")
    add_plan_arguments(p_status)
    p_status.add_argument("--slurm-folder", default=os.environ.get("CONVNETS_SLURM_FOLDER"),
                          help="the submission folder given to `run --launcher slurm`")
    add_shifts_parser(sub)
    sub.add_parser("rekey", help="recompute paper_tables/data/rekey.csv: the ledger parts' "
                   "config keys under today's hash rule (from the specs at their commits)")
    add_lr_search_parser(sub)
    return parser


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
                   help="do not write tuned/NAME.yaml")
    p.add_argument("--overwrite", action="store_true",
                   help="replace tuned entries recorded by a bigger profile")
    return p



def add_shifts_parser(sub) -> None:
    p = sub.add_parser("shifts", help="the GPU shift queue with states from the ledger")
    p.add_argument("--queue", type=Path, default=None,
                   help="the queue file (default experiments/shifts.yaml)")
    p.add_argument("--next-data", action="store_true",
                   help="print only the data archives the next pending shift needs")
    r = sub.add_parser("shift", help="run the next pending shift and export its ledger part")
    r.add_argument("--out", type=Path, required=True, help="folder for the part, store and log")
    r.add_argument("--queue", type=Path, default=None,
                   help="the queue file (default experiments/shifts.yaml)")
    r.add_argument("--id", default=None, help="this shift instead of the next pending one")
    r.add_argument("--profile", default=None, help="replace the shift's profile (smoke: the "
                   "CPU dry run of the same command)")
    r.add_argument("--data-dir", default=None)
    r.add_argument("--deadline", default=os.environ.get("CONVNETS_DEADLINE") or "9m",
                   help="the whole shift ends by then (default 9m: a 10-minute device call)")
    r.add_argument("--store", default=os.environ.get("CONVNETS_SHIFT_STORE")
                   or "/tmp/convnets-shift-store",
                   help="the shift's MLflow store and checkpoints (outside --out: only the "
                        "archives come back)")
    r.add_argument("--resume", default=None, metavar="SHIFT_TGZ",
                   help="an earlier lease's shift.tgz (checkpoint.tgz beside it): its runs "
                        "are skipped or resumed")
