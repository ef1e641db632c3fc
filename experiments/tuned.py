"""The tuned-learning-rate files ``experiments/tuned/<NAME>.yaml``: written by ``lr-search``,
read by ``run NAME --lr tuned``.

The best lr per variant goes to ``experiments/tuned/<NAME>.yaml`` (``$CONVNETS_TUNED_DIR``
overrides the folder), merged with the entries already there. An entry from a bigger profile
(paper > quick > smoke) is not replaced by a smaller one unless ``--overwrite``. Each entry
records its profile, data set (``dataset_id``: name and content options, plus the data's
checksum) and budget; ``run --lr tuned`` refuses an entry searched for another profile or data
set (smoke values come from synthetic data) unless ``--allow-tuned-mismatch``.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path

import yaml

from experiments.search_settings import public_storage
from experiments.spec_check import SpecError

TUNED_DIR = Path(__file__).resolve().parent / "tuned"
PROFILE_RANK = {"smoke": 0, "cpu": 1, "quick": 2, "paper": 3}


def tuned_dir() -> Path:
    """Where best learning rates are recorded ($CONVNETS_TUNED_DIR overrides)."""
    return Path(os.environ.get("CONVNETS_TUNED_DIR") or TUNED_DIR)


def tuned_file(name: str) -> Path:
    return tuned_dir() / f"{Path(name).stem}.yaml"


def tuned_lrs(name: str) -> dict[str, float]:
    """The recorded best lr per ``group/variant`` of claim ``name``."""
    path = tuned_file(name)
    if not path.exists():
        raise SpecError(f"--lr tuned: no {path}; run `python -m experiments lr-search {name}` first")
    data = yaml.safe_load(path.read_text()) or {}
    return {k: float(v["lr"]) for k, v in data.get("best", {}).items()}


def dataset_id(cfg: dict) -> str:
    """What a tuned lr was searched on: the data set's name and the options that change its
    content (``label`` and ``cache`` do not), e.g. ``synthetic {"image_size": 16, ...}``."""
    d = cfg["data"]
    opts = {k: v for k, v in sorted((d.get("options") or {}).items())
            if k not in ("label", "cache") and v is not None}
    return f"{d['name']} {json.dumps(opts, sort_keys=True)}" if opts else str(d["name"])


def check_tuned(name: str, jobs: list, *, allow_mismatch: bool = False) -> None:
    """Refuse tuned learning rates searched for another profile or data set than the job's
    (a smoke search on synthetic data says nothing about CIFAR-10), unless ``allow_mismatch``;
    an allowed mismatch is tagged on the run (``tuned_from``)."""
    path = tuned_dir() / f"{Path(name).stem}.yaml"
    best = (yaml.safe_load(path.read_text()) or {}).get("best") or {}
    bad = []
    for job in jobs:
        entry = best.get(f"{job.group}/{job.variant}") or {}
        have = (entry.get("profile"), entry.get("dataset"))
        want = (job.tags.get("profile"), dataset_id(job.config))
        if have != want:
            job.tags["tuned_from"] = f"profile {have[0]}, dataset {have[1]}"
            bad.append(f"{job.group}/{job.variant}: tuned for profile {have[0]!r} on "
                       f"{have[1]!r}, this run is profile {want[0]!r} on {want[1]!r}")
    if bad and not allow_mismatch:
        lines = "\n  ".join(dict.fromkeys(bad))
        raise SpecError(f"--lr tuned: {path} was searched for other runs:\n  {lines}\n"
                        f"run `lr-search {Path(name).stem} --profile {jobs[0].tags['profile']}`"
                        " first, or pass --allow-tuned-mismatch to use these values anyway")


def record_best(experiment: str, rows: list[dict], *, profile: str, budget_epochs: int,
                storage: str, overwrite: bool = False) -> Path:
    """Merge the best lr per variant into ``tuned_dir()/<experiment>.yaml``: read, merge and
    write under an exclusive lock beside the file (two searches recording at once would
    otherwise lose one's variants or interleave one temp file), the new file written under a
    unique name and moved into place."""
    path = tuned_dir() / f"{experiment}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _merge_best(path, experiment, rows, profile=profile,
                               budget_epochs=budget_epochs, storage=storage,
                               overwrite=overwrite)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _merge_best(path: Path, experiment: str, rows: list[dict], *, profile: str,
                budget_epochs: int, storage: str, overwrite: bool) -> Path:
    data = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    best = data.setdefault("best", {}) or {}
    data["best"] = best
    for r in rows:
        if r["best_lr"] is None:
            continue
        old = best.get(r["variant"]) or {}
        old_rank = PROFILE_RANK.get(str(old.get("profile")), -1)
        if old and old_rank > PROFILE_RANK[profile] and not overwrite:
            print(f"  {r['variant']}: keeping the {old['profile']} profile's lr {old['lr']:g} in "
                  f"{path} (this is {profile}; --overwrite replaces it)", flush=True)
            continue
        best[r["variant"]] = {
            "dataset": r["dataset"],
            "dataset_checksum": r["dataset_checksum"],
            "lr": float(f"{r['best_lr']:.6g}"),
            "val_error": round(float(r["best_val_error"]), 4),
            "trials": int(r["trials"]),
            "study": r["study"],
            "profile": profile,
            "budget_epochs": int(budget_epochs),
            "storage": public_storage(storage),
        }
    head = (f"# Best learning rates found by `python -m experiments lr-search {experiment}`\n"
            f"# (validation error after a short budget); `run {experiment} --lr tuned` uses them.\n")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(head + yaml.safe_dump(data, sort_keys=True))
    os.replace(tmp, path)
    return path
