"""Names shared by training, tracking and analysis: one place, no torch.

``analysis`` may import this module (and only this one from ``convnets``): it is the written
contract between what the runner records and what the tables read, not training code, so the
layering "analysis imports nothing of training" still holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

#: run profiles, most faithful first (tables prefer the first one present)
PROFILES = ("paper", "quick", "cpu", "smoke")
#: profiles whose runs are never evidence (their tables carry a SMOKE banner)
SMOKE_PROFILES = ("smoke",)

# --- the store ---------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parents[1]
#: the ledger: one folder per part (``analysis.ledger``), the evidence the tables are built from
LEDGER_DIR = REPO_ROOT / "paper_tables" / "data"
#: environment variable naming the MLflow store; unset: SQLite ``mlflow.db`` at the repo root
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_STORE = "mlflow.db"


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI if set, else the repository's SQLite store (absolute path)."""
    return os.environ.get(TRACKING_URI_ENV) or f"sqlite:///{REPO_ROOT / DEFAULT_STORE}"


# --- tags a run carries (besides the spec's job tags) -------------------------------------------
#: where the code came from and what ran it (``tracking.environment_tags``)
ENVIRONMENT_TAGS = ("git_commit", "git_dirty", "torch_version", "cuda_version")
#: the tag of the iteration a run reached (its horizon; the schedule's length when it ran to
#: the end; runs made before horizons existed have none and ran to the end)
HORIZON = "horizon"
#: the tag on a run that other specs' variants are too (the same network and recipe): JSON,
#: 'experiment/group/variant' -> that variant's spec tags; the tables count the run in each
#: (one network, one run)
SERVES = "serves"
#: ``RunResult.info`` keys that are tags only; every other info key is a ``resolved.*`` param
DATASET_TAGS = ("dataset", "dataset_label", "dataset_checksum")
RESOLVED_PREFIX = "resolved."
#: why a run ended FAILED or KILLED
FAILURE_REASON, FAILURE_KIND = "failure_reason", "failure_kind"
#: failure kinds: a run that diverged is a result (the paper reports some as failing), a crash
#: is not; deadline and interrupted runs are KILLED (checkpoint kept: the next call resumes), as
#: are orphans (left RUNNING by a process that died; closed by the next start of their job)
DIVERGED, ERROR, DEADLINE, INTERRUPTED = "diverged", "error", "deadline", "interrupted"
ORPHANED = "orphaned"
KILLED_KINDS = (DEADLINE, INTERRUPTED, ORPHANED)



class RunStatus(StrEnum):
    """An MLflow run's status, in MLflow's own words; compares equal to the plain string, so
    ``runs["status"] == RunStatus.FINISHED`` reads a ledger's ``runs.csv`` too."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"  # diverged (a result) or crashed (not one): its FAILURE_KIND says which
    KILLED = "KILLED"  # a planned stop (KILLED_KINDS): the checkpoint is kept


def ended_status(kind: str) -> RunStatus:
    """The status a run ends with for failure kind ``kind``."""
    return RunStatus.KILLED if kind in KILLED_KINDS else RunStatus.FAILED


class Outcome(StrEnum):
    """What one invocation of the runner did with a job (a summary row's ``outcome``)."""

    FINISHED = "finished"  # trained to its end now
    SKIPPED = "skipped"  # finished earlier: nothing to do
    DIVERGED = "diverged"  # FAILED, diverged now or earlier: a result
    CRASHED = "crashed"  # FAILED with an error: not a result, and the command fails
    LEFT = "left"  # not started or stopped (deadline, SIGTERM): the next invocation resumes
    CLAIMED = "claimed"  # another process holds its claim and trains it


def outcome_of(status: RunStatus, kind: str) -> Outcome:
    """The outcome of a run that ended ``status`` with failure kind ``kind``."""
    if status is RunStatus.KILLED:
        return Outcome.LEFT
    return Outcome.DIVERGED if kind == DIVERGED else Outcome.CRASHED


# --- the run record: one row of a ledger part's runs.csv ----------------------------------------
@dataclass(frozen=True)
class RunField:
    """One column of the run record: what a run states about itself from spec to table.

    ``kind``: the column's type in ``runs.csv`` (``str``, ``float``, ``int``, ``bool``);
    ``origin``: who states it: ``spec`` (the job's tags, from its spec and command line),
    ``result`` (the trainer, about the run that trained: tags on the finished run),
    ``environment`` (the code and machine: tags at start), ``store`` (MLflow's own run
    attributes, metrics and artifacts), ``failure`` (tags on a run that did not finish).
    Tags are written under the field's name; the tag lists below derive from this table."""

    name: str
    kind: str = "str"
    origin: str = "spec"


#: the columns of ``runs.csv``, in its order. A field added here reaches the ledger and the
#: tables (``analysis.runs`` derives its column lists from it); one stated by the trainer is
#: also a tag of every finished run
RUN_RECORD = (
    RunField("experiment"), RunField("group"), RunField("variant"), RunField("baseline"),
    RunField("seed", "int"), RunField("status", origin="store"),
    RunField("final_error", "float", "store"), RunField("eval_split", origin="result"),
    RunField("final_train_error", "float", "store"), RunField("final_train_loss", "float", "store"),
    RunField("wall_time_s", "float", "store"), RunField("horizon", origin="result"),
    RunField("total_iterations", origin="store"),
    RunField("final_clean_train_error", "float", "store"),
    RunField("paper_error"), RunField("expected"), RunField("claim"), RunField("citation"),
    RunField("profile"), RunField("dataset", origin="result"),
    RunField("dataset_label", origin="result"), RunField("config_hash"),
    RunField("git_commit", origin="environment"), RunField("git_dirty", "bool", "environment"),
    RunField("device", origin="result"), RunField("failure_reason", origin="failure"),
    RunField("failure_kind", origin="failure"), RunField("run_id", origin="store"),
    RunField("run_name", origin="store"), RunField("start_time", origin="store"),
    RunField("curve_uri", origin="store"), RunField("predictions_uri", origin="store"),
    RunField("dataset_checksum", origin="result"), RunField("precision", origin="result"),
    RunField("torch_version", origin="environment"),
    RunField("cuda_version", origin="environment"), RunField("differences"),
    RunField("serves"), RunField("overrides"), RunField("lr_source"),
)
#: the record's fields that runs carry as MLflow tags (every origin but the store's)
RECORD_TAGS = tuple(f.name for f in RUN_RECORD if f.origin != "store")
#: what the trainer reports about the finished run (``RunResult.info``), set as tags
RESULT_TAGS = tuple(f.name for f in RUN_RECORD if f.origin == "result")


# --- metrics and artifacts ---------------------------------------------------------------------
#: the curve, in ``curve.csv`` order; ``eval_error`` is ``test_error`` or ``val_error``. A row
#: per epoch (``train_loss`` / ``train_error``: running means over the epoch's augmented
#: batches, in train mode), and a row per horizon mark (``horizon`` = its iteration; ``epoch``
#: fractional): the evaluation error, ``clean_train_error`` (eval mode, no augmentation, the
#: whole training split) and the running loss and error over the last ``train_window``
#: iterations (the last whole epoch and the part of the current one before the mark)
CURVE_COLUMNS = ("epoch", "iteration", "train_loss", "train_error", "eval_error", "lr",
                 "images_per_sec", "epoch_time_s", "clean_train_error", "train_window",
                 "horizon")
EVAL_ERROR = "eval_error"
CLEAN_TRAIN_ERROR = "clean_train_error"
#: final metrics besides ``final_<split>_error`` (``final_clean_train_error``: runs that
#: stopped at a horizon)
FINAL_METRICS = ("final_train_error", "final_train_loss", "wall_time_s",
                 "final_clean_train_error")
CURVE_ARTIFACT, PREDICTIONS_ARTIFACT, CONFIG_ARTIFACT = "curve.csv", "predictions.npz", "config.yaml"


IMAGEFOLDER = "imagefolder:"


def data_identity_of(name: str, checksum: str) -> str:
    """What identifies a run's data wherever a machine path may not appear (config hash,
    ledger, tables): a named data set's name (``cifar10``), an image folder's content checksum
    (``imagefolder:<checksum>``: the same images under another path or on another machine
    identify alike). The one place the rule is written."""
    name = str(name).strip()
    return IMAGEFOLDER + str(checksum) if name.lower().startswith(IMAGEFOLDER) else name


def eval_error(split: str) -> str:
    """The per-epoch error metric of evaluation split ``split`` (``test_error``)."""
    return f"{split}_error"


def final_error(split: str) -> str:
    """The final error metric of evaluation split ``split`` (``final_test_error``)."""
    return f"final_{split}_error"


def curve_columns(split: str) -> list[str]:
    """``curve.csv``'s header for a run evaluated on ``split``."""
    return [eval_error(split) if c == EVAL_ERROR else c for c in CURVE_COLUMNS]
