"""Checks before any run opens: the data every job reads, and the keys whose valid range needs
the data (a schedule in epochs is a number of iterations only once the training split's size
is known).

A bad data set (a truncated IDX file, a bad magic number, labels out of range, a missing or
empty image folder, a test split missing a class) or a missing data folder is reported here in
one line, naming the job and the file: no MLflow run is opened, no folder is created.

A result already in the store is checked against the data it would stand for: a finished (or
diverged) run records the checksum of the data it trained on, and a named data set (``mnist``,
``cifar10``: the name, not the content, enters the config hash) whose files have changed since
would otherwise be answered with that old result.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from convnets import tracking
from convnets.checkpoint import CheckpointError, load_checkpoint
from convnets.config import ConfigError
from convnets.data import DatasetError, load_dataset
from convnets.models import build_on_meta
from convnets.names import DIVERGED, FAILURE_KIND
from convnets.optim import plan_iterations
from experiments.runner import checkpoint_dir, checkpoint_path, claims_dir
from experiments.spec import Job, SpecError


def check_jobs_data(jobs: list[Job]) -> dict[str, str]:
    """Load each distinct data set of ``jobs`` once (the loaders verify files and caches) and
    check every job's schedule against its training split; ``SpecError`` on the first fault.
    Returns each job's data checksum, by job key."""
    loaded: dict[str, tuple[int, str, int]] = {}  # data key -> (images, checksum, channels)
    checksums: dict[str, str] = {}
    for job in jobs:
        d = job.config["data"]
        where = f"{job.experiment} {job.key}"
        if d["data_dir"] not in (None, "") and not Path(d["data_dir"]).expanduser().is_dir():
            raise SpecError(f"{where}: the data folder {d['data_dir']} (--data-dir or "
                            "data.data_dir) does not exist; nothing was created")
        key = json.dumps([d["name"], d["data_dir"], d["options"]], sort_keys=True, default=str)
        if key not in loaded:
            try:
                ds = load_dataset(d["name"], d["data_dir"], **d["options"])
            except DatasetError as err:
                raise SpecError(f"{where}: data set {d['name']!r}: {err}") from None
            loaded[key] = len(ds.train), ds.checksum, ds.in_channels
        check_length(job, loaded[key][0])
        _check_channels(job, loaded[key][2], where)
        checksums[job.key] = loaded[key][1]
    return checksums


def _check_channels(job: Job, channels: int, where: str) -> None:
    """The data's image channels against the model's first convolution (a greyscale folder into
    a 3-channel net ended as a crashed run with a shape traceback)."""
    m = job.config["model"]
    net = build_on_meta(m["name"], json.dumps(m["options"], sort_keys=True))
    conv = next((x for x in net.modules() if isinstance(x, torch.nn.Conv2d)), None)
    if conv is not None and conv.in_channels != channels:
        raise SpecError(f"{where}: the data set {job.config['data']['name']!r} has "
                        f"{channels}-channel images, the model {m['name']!r} takes "
                        f"{conv.in_channels} channels; convert the images or pick a model for "
                        f"{channels}")


def check_stored_results(cl, jobs: list[Job], checksums: dict[str, str]) -> None:
    """``SpecError`` if a job's finished or diverged run in the store (the runner would skip the
    job, or refuse it, on that run's word), or the checkpoint of its unfinished run (the runner
    would resume it), was trained on data with another checksum than the job's data set has
    now. ``--force`` retrains from scratch instead and skips this check."""
    for job in jobs:
        _check_checkpoint(job, checksums[job.key])
        runs = tracking.find_runs(cl, job.keys, job.seed,
                                  job.tags.get("profile", ""))
        for run in runs:
            if run.info.status != "FINISHED" and run.data.tags.get(FAILURE_KIND) != DIVERGED:
                continue
            was = run.data.tags.get("dataset_checksum")
            if was and was != checksums[job.key]:
                raise SpecError(
                    f"{job.experiment} {job.key}: run {run.info.run_id[:8]} "
                    f"({run.info.status.lower()}) was trained on {job.config['data']['name']} "
                    f"data with checksum {was[:12]}, but that data set now has checksum "
                    f"{checksums[job.key][:12]}: its files changed since. Point --data-dir at "
                    "the data it was trained on, or use --force to train it again on these")


def check_length(job: Job, n_train: int) -> None:
    """The keys whose range depends on the run's length in iterations: the validation split,
    the batch, the warm-up (``SpecError`` naming the key)."""
    cfg, where = job.config, f"{job.experiment} {job.key}"
    n = n_train - cfg["data"]["val_size"]
    if n <= 0:
        raise SpecError(f"{where}: 'data.val_size' ({cfg['data']['val_size']}) leaves no "
                        f"training images of the {n_train}")
    try:
        steps, sched, _ = plan_iterations(cfg, n, cfg["batch_size"])
    except ConfigError as err:
        raise SpecError(f"{where}: {err}") from None
    s = cfg["schedule"]
    length = (f"{s['length']} epochs of {steps} steps" if s["unit"] == "epochs"
              else f"{s['length']} iterations")
    if sched.total < 1:
        raise SpecError(f"{where}: 'schedule.length' ({length}) is less than one iteration")
    if s["warmup_iterations"] >= sched.total:
        raise SpecError(f"{where}: 'schedule.warmup_iterations' ({s['warmup_iterations']}) must "
                        f"be shorter than the run ({sched.total} iterations: {length})")


def _check_checkpoint(job: Job, checksum: str) -> None:
    ckpt = checkpoint_path(job)
    if not ckpt.exists():
        return
    try:
        was = load_checkpoint(ckpt).get("dataset_checksum")
    except CheckpointError:
        return  # the runner keeps it aside and starts the run afresh, saying so
    if was and was != checksum:
        raise SpecError(
            f"{job.experiment} {job.key}: its checkpoint {ckpt} was written training on "
            f"{job.config['data']['name']} data with checksum {was[:12]}, but that data set now "
            f"has checksum {checksum[:12]}: resuming would train one run on two data sets. Point "
            "--data-dir at the data it started on, or use --force to start it again on these")


def check_writable_folders() -> None:
    """The checkpoint folder and the runners' claims folder exist (created here if missing) and
    take a file: a read-only or misplaced ``CONVNETS_CHECKPOINTS`` is one line before any run
    opens, not a FAILED run with a traceback at its first checkpoint."""
    for what, folder in (("checkpoint folder", checkpoint_dir()), ("claims folder", claims_dir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            hint = ("set CONVNETS_CHECKPOINTS to a folder this user can write"
                    if what.startswith("checkpoint") else "the store's folder must be writable")
            raise SpecError(f"the {what} {folder} cannot be written "
                            f"({err.strerror or err}); {hint}") from None
