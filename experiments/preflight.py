"""Checks before any run opens: the data every job reads, and the keys whose valid range needs
the data (a schedule in epochs is a number of iterations only once the training split's size
is known).

A bad data set (a truncated IDX file, a bad magic number, labels out of range, a missing or
empty image folder, a test split missing a class) or a missing data folder is reported here in
one line, naming the job and the file: no MLflow run is opened, no folder is created.
"""

from __future__ import annotations

import json
from pathlib import Path

from convnets.config import ConfigError
from convnets.data import DatasetError, load_dataset
from convnets.optim import plan_iterations
from experiments.spec import Job, SpecError


def check_jobs_data(jobs: list[Job]) -> None:
    """Load each distinct data set of ``jobs`` once (the loaders verify files and caches) and
    check every job's schedule against its training split; ``SpecError`` on the first fault."""
    sizes: dict[str, int] = {}
    for job in jobs:
        d = job.config["data"]
        where = f"{job.experiment} {job.key}"
        if d["data_dir"] not in (None, "") and not Path(d["data_dir"]).expanduser().is_dir():
            raise SpecError(f"{where}: the data folder {d['data_dir']} (--data-dir or "
                            "data.data_dir) does not exist; nothing was created")
        key = json.dumps([d["name"], d["data_dir"], d["options"]], sort_keys=True, default=str)
        if key not in sizes:
            try:
                sizes[key] = len(load_dataset(d["name"], d["data_dir"], **d["options"]).train)
            except DatasetError as err:
                raise SpecError(f"{where}: data set {d['name']!r}: {err}") from None
        check_length(job, sizes[key])


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
