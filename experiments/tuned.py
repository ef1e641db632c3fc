"""The tuned-learning-rate files ``<NAME>.yaml``: written by ``lr-search``, read by ``run NAME
--lr tuned``.

The best lr per variant goes to the user's ``tuned/<NAME>.yaml`` at the repository root, beside
the default stores (``mlflow.db``, ``optuna.db``) and like them git-ignored;
``$CONVNETS_TUNED_DIR`` names another folder. A search never writes into the source tree:
``experiments/tuned/<NAME>.yaml`` holds values committed on purpose (copied there), read when the
user has none of their own. The file records the study and its storage without a machine path.
Entries are merged with those already there. An entry from a bigger profile
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

from convnets.names import REPO_ROOT
from experiments.search_settings import public_storage
from experiments.spec_check import SpecError

#: tuned values committed on purpose (read when the user has no file of their own)
COMMITTED_DIR = Path(__file__).resolve().parent / "tuned"
PROFILE_RANK = {"smoke": 0, "cpu": 1, "quick": 2, "paper": 3}


def tuned_dir() -> Path:
    """Where ``lr-search`` records best learning rates: ``$CONVNETS_TUNED_DIR``, else ``tuned/``
    at the repository root (git-ignored, with the default stores)."""
    return Path(os.environ.get("CONVNETS_TUNED_DIR") or REPO_ROOT / "tuned")


def tuned_file(name: str) -> Path:
    """The file ``--lr tuned`` reads: the user's own, else one committed on purpose, else
    (neither exists) the user's path, for the message."""
    stem = f"{Path(name).stem}.yaml"
    own, committed = tuned_dir() / stem, COMMITTED_DIR / stem
    return committed if committed.exists() and not own.exists() else own


def shown(path: Path) -> str:
    """A path as a message or a record shows it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def portable_storage(url: str) -> str:
    """The storage URL as a tuned file records it: no password, and no machine path (a local
    SQLite file or journal is named relative to the repository, or by its file name with the
    folder elided), so a committed file does not carry the searcher's home folder."""
    url = public_storage(url)
    for prefix in ("sqlite:///", "journal:"):
        if url.startswith(prefix) and url[len(prefix):] not in ("", ":memory:"):
            path = Path(url[len(prefix):])
            if not path.is_absolute():
                return url
            try:
                return prefix + str(path.resolve().relative_to(REPO_ROOT))
            except ValueError:
                return f"{prefix}.../{path.name}"
    return url


def tuned_lrs(name: str) -> dict[str, float]:
    """The recorded best lr per ``group/variant`` of claim ``name``."""
    path = tuned_file(name)
    if not path.exists():
        raise SpecError(f"--lr tuned: no {shown(path)} (nor a committed "
                        f"{shown(COMMITTED_DIR / path.name)}); run `python -m experiments "
                        f"lr-search {Path(name).stem}` first")
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
    an allowed mismatch is tagged on the run (``tuned_from``). Every job records which file
    and study its lr came from (``tuned_file``: a file outside git leaves ``git_dirty`` false)."""
    path = tuned_file(name)
    best = (yaml.safe_load(path.read_text()) or {}).get("best") or {}
    bad = []
    for job in jobs:
        entry = best.get(f"{job.group}/{job.variant}") or {}
        job.tags["tuned_file"] = f"{shown(path)} (study {entry.get('study')})"
        have = (entry.get("profile"), entry.get("dataset"))
        want = (job.tags.get("profile"), dataset_id(job.config))
        if have != want:
            job.tags["tuned_from"] = f"profile {have[0]}, dataset {have[1]}"
            bad.append(f"{job.group}/{job.variant}: tuned for profile {have[0]!r} on "
                       f"{have[1]!r}, this run is profile {want[0]!r} on {want[1]!r}")
    if bad and not allow_mismatch:
        lines = "\n  ".join(dict.fromkeys(bad))
        raise SpecError(f"--lr tuned: {shown(path)} was searched for other runs:\n  {lines}\n"
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
            "storage": portable_storage(storage),
        }
    head = (f"# Best learning rates found by `python -m experiments lr-search {experiment}`\n"
            f"# (validation error after a short budget); `run {experiment} --lr tuned` uses them.\n")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(head + yaml.safe_dump(data, sort_keys=True))
    os.replace(tmp, path)
    return path
