"""The ledger: ``paper_tables/data/<part-id>/``, one folder per campaign part.

A part is what one campaign (one GPU shift, one CPU session, one Slurm job) exported: its
``runs.csv``, ``curves.csv`` and ``predictions.npz`` (the snapshot format of ``analysis.runs``)
plus a ``MANIFEST.json`` saying where and how the runs were made (device, versions, commit,
profiles, datasets with checksums, specs, start/end, device seconds) and the sha256 of every
file. ``load_ledger`` reads every part into one ``RunData``; a run that appears in two parts
(same experiment, config hash, seed and profile) is counted once: the part that ended last
wins, and a warning says so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from convnets.names import SMOKE_PROFILES, RunStatus, data_identity_of

from .runs import SNAPSHOT_DIR, RunData, export_snapshot, load_snapshot
from .sections import reached_end, results

LEDGER_DIR = SNAPSHOT_DIR  # paper_tables/data
MANIFEST = "MANIFEST.json"
REKEY = "rekey.csv"  # old part keys -> today's (experiments.rekey)
PART_FILES = ("runs.csv", "curves.csv", "predictions.npz")
#: in parts exported since 2026-12-03: config hash -> resolved config (analysis.runs)
OPTIONAL_FILES = ("configs.json",)
MANIFEST_KEYS = {
    "part_id": "folder name under paper_tables/data/",
    "created": "UTC time the part was exported (ISO 8601)",
    "device": "what trained, e.g. 'NVIDIA H200' or 'AMD EPYC 9B14 (2 cores)'",
    "versions": "python / torch / cuda / driver as the runs recorded them",
    "git_commit": "commit(s) the runs were made from",
    "git_dirty": "true if any run came from a tree with uncommitted changes",
    "profiles": "run profiles in this part",
    "smoke": "true if every run is a smoke run (never evidence)",
    "datasets": "dataset name, label and checksum per dataset",
    "specs": "experiment -> variants in this part",
    "started": "first run's start (ISO 8601)",
    "ended": "end of the campaign (ISO 8601)",
    "device_seconds": "seconds the device was used: the campaign's wall time when known, "
                      "else the sum of the runs' wall times",
    "n_runs": "rows of runs.csv",
    "files": "sha256 of runs.csv, curves.csv, predictions.npz (and configs.json if present)",
}
#: one run: a seed rerun in the other precision (outside the config hash) is another run, kept
#: beside it in the ledger (the tables count one run per seed: the newer)
DUP_KEY = ["experiment", "config_hash", "seed", "profile", "precision"]


class PartError(ValueError):
    """A part is malformed; the message names the part and the file."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def local_device() -> str:
    """This machine's CPU model and core count (read without torch), e.g. 'AMD EPYC (2 cores)'."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model or 'CPU'} ({os.cpu_count()} cores)"


def _driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


def _uniq(values) -> list[str]:
    return sorted({str(v) for v in values if str(v) not in ("", "nan", "None")})


def part_id_for(runs: pd.DataFrame, device: str, created: str) -> str:
    """``<date>_<profile>_<device>_<experiment>[+N]``: readable and sortable by date."""
    def word(text: str) -> str:
        return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")

    dev = re.sub(r"\((r|tm)\)|\(\d+ cores\)", " ", device, flags=re.I)
    dev = "-".join(w for w in word(dev).split("-")
                   if w not in ("amd", "intel", "nvidia", "processor", "cpu"))[:24]
    exps = [word(e) for e in _uniq(runs["experiment"])] or ["empty"]
    exp = exps[0] + (f"+{len(exps) - 1}" if len(exps) > 1 else "")
    prof = "+".join(_uniq(runs["profile"])) or "none"
    return f"{created[:10]}_{prof}_{dev or 'device'}_{exp}"


def build_manifest(data: RunData, *, device: str | None = None, started: str | None = None,
                   ended: str | None = None, device_seconds: float | None = None,
                   part_id: str | None = None) -> dict:
    r = data.runs
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    devices = _uniq(r["device"])
    if device is None:  # runs on a CPU record "cpu": name the CPU this export runs on
        device = ", ".join(local_device() if d == "cpu" else d for d in devices) or local_device()
    datasets = (r[["dataset", "dataset_label", "dataset_checksum"]].drop_duplicates()
                .sort_values(["dataset", "dataset_checksum"]))
    specs = {e: _uniq(g["group"] + "/" + g["variant"]) for e, g in r.groupby("experiment")}
    wall = float(pd.to_numeric(r["wall_time_s"], errors="coerce").fillna(0).sum())
    profiles = _uniq(r["profile"])
    return {
        "part_id": part_id or part_id_for(r, device, started or created),
        "created": created,
        "device": device,
        "versions": {"python": sys.version.split()[0], "torch": ", ".join(_uniq(r["torch_version"])),
                     "cuda": ", ".join(_uniq(r["cuda_version"])), "driver": _driver()},
        "git_commit": ", ".join(_uniq(r["git_commit"])),
        "git_dirty": bool(r["git_dirty"].any()),
        "profiles": profiles,
        "smoke": bool(profiles) and all(p in SMOKE_PROFILES for p in profiles),
        "datasets": [dict(name=a, label=b, checksum=c) for a, b, c in datasets.itertuples(False)],
        "specs": specs,
        "started": started or (min(r["start_time"]) if len(r) else created),
        "ended": ended or created,
        "device_seconds": round(device_seconds if device_seconds is not None else wall, 1),
        "n_runs": int(len(r)),
    }


def _portable_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs as a committed part keeps them, naming nothing of the machine that ran: no
    artifact paths (the part holds the curves and predictions; the store's ``file://`` URIs
    would name one machine) and an image folder by its content checksum, not its path (as the
    config hash already does)."""
    runs = runs.assign(curve_uri="", predictions_uri="")
    return runs.assign(dataset=[data_identity_of(n, c) if isinstance(n, str) else n for n, c in
                                zip(runs["dataset"], runs["dataset_checksum"], strict=True)])


def write_part(data: RunData, ledger: Path = LEDGER_DIR, **manifest_args) -> Path:
    """Export ``data`` as a new part under ``ledger`` (files + MANIFEST.json); returns its path."""
    portable = RunData(_portable_runs(data.runs), data.curves, data.preds, data.targets,
                       configs=data.configs)
    manifest = build_manifest(portable, **manifest_args)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", manifest["part_id"]):
        raise PartError(f"part id {manifest['part_id']!r}: letters, digits, '.', '_' and '-' "
                        "only, starting with a letter or digit (it names a folder of the ledger)")
    out = Path(ledger) / manifest["part_id"]
    if out.exists():
        raise PartError(f"{out}: a part with this id exists already; pass another part_id")
    # written aside and moved into place whole: an export killed half-way leaves no folder
    # that blocks the next one (a hidden temp folder, which list_parts never reads)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        files = export_snapshot(portable, tmp)
        manifest["files"] = {p.name: sha256(p) for p in files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def validate_part(path: Path) -> dict:
    """Check a part folder: manifest keys, file checksums, and runs that agree with the manifest.

    Returns the manifest. Raises ``PartError`` naming the folder and the file that is wrong.
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise PartError(f"{path}: not a folder")
    if not mpath.exists():
        raise PartError(f"{mpath}: missing (a part needs a {MANIFEST}; "
                        "export with `python -m analysis export --part`)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as err:
        raise PartError(f"{mpath}: not valid JSON: {err}") from None
    if not isinstance(manifest, dict):
        raise PartError(f"{mpath}: expected a JSON object")
    missing = [k for k in list(MANIFEST_KEYS) if k not in manifest]
    if missing:
        raise PartError(f"{mpath}: missing key(s) {', '.join(missing)}")
    if manifest["part_id"] != path.name:
        raise PartError(f"{mpath}: part_id {manifest['part_id']!r} differs from the folder "
                        f"name {path.name!r}")
    listed = manifest["files"] if isinstance(manifest["files"], dict) else {}
    for name in (*PART_FILES, *(n for n in OPTIONAL_FILES if n in listed or (path / n).exists())):
        f = path / name
        if not f.exists():
            raise PartError(f"{f}: missing (listed in every part)" if name in PART_FILES
                            else f"{f}: missing ({MANIFEST} lists it)")
        want = listed.get(name)
        if want != sha256(f):
            raise PartError(f"{f}: sha256 does not match {MANIFEST} (file changed or truncated)")
    try:
        data = load_snapshot(path)
    except Exception as err:  # a CSV or NPZ that does not parse
        raise PartError(f"{path}: cannot be read: {type(err).__name__}: {err}") from None
    _check_runs(path, manifest, data)
    _cross_check(path, data)
    return manifest


#: a final error and the error its stored predictions give agree to 2**-22 relative: they
#: are one number logged in float32 (about 2**-24 relative rounding) and recomputed in float64;
#: one image of a 10,000-image test set moves it by 0.01 points, 10^4 times more at 50%
PRED_RTOL = 2.0 ** -22
#: a curve's last evaluation is written with 6 significant digits (``%.6g``)
CURVE_RTOL = 1e-5


def _cross_check(path: Path, data: RunData) -> None:
    """What a part states twice must agree: each finished run's final test error with the
    error of its stored predictions and with the last evaluation of its curve, and every curve
    with a run of the part. A part whose files disagree (one of them edited, and the manifest's
    checksums recomputed to match) is refused, naming the run and both numbers."""
    r = data.runs
    stray = sorted(set(data.curves["run_id"].astype(str)) - set(r["run_id"].astype(str)))
    if stray:
        raise PartError(f"{path / 'curves.csv'}: curve(s) of run(s) not in runs.csv: "
                        f"{stray[:3]}")
    last = data.curves.groupby("run_id")["eval_error"].last()
    for run in r[(r["status"] == RunStatus.FINISHED) & (r["eval_split"] == "test")].itertuples():
        said = run.final_error
        if run.run_id in data.preds and run.run_id in data.targets:
            got = float((data.preds[run.run_id] != data.targets[run.run_id]).mean() * 100)
            if not np.isclose(got, said, rtol=PRED_RTOL, atol=0):
                raise PartError(f"{path}: run {run.run_id}: runs.csv says final error {said}, "
                                f"its predictions in predictions.npz give {got:.6f}")
        if run.run_id in last.index and not np.isclose(float(last[run.run_id]), said,
                                                       rtol=CURVE_RTOL, atol=0):
            raise PartError(f"{path}: run {run.run_id}: runs.csv says final error {said}, the "
                            f"last evaluation of its curve in curves.csv {last[run.run_id]}")


def _check_runs(path: Path, manifest: dict, data: RunData) -> None:
    r = data.runs
    where = path / "runs.csv"
    if len(r) != manifest["n_runs"]:
        raise PartError(f"{where}: {len(r)} runs, {MANIFEST} says n_runs={manifest['n_runs']}")
    if r["run_id"].duplicated().any() or (r["run_id"] == "").any():
        raise PartError(f"{where}: run_id must be unique and non-empty")
    extra = set(_uniq(r["profile"])) - set(manifest["profiles"])
    if extra:
        raise PartError(f"{where}: profile(s) {sorted(extra)} not in {MANIFEST} 'profiles'")
    exps = set(_uniq(r["experiment"])) - set(manifest["specs"])
    if exps:
        raise PartError(f"{where}: experiment(s) {sorted(exps)} not in {MANIFEST} 'specs'")
    sums = {d.get("checksum", "") for d in manifest["datasets"]}
    unknown = set(_uniq(r["dataset_checksum"])) - sums
    if unknown:
        raise PartError(f"{where}: dataset checksum(s) {sorted(unknown)} not in {MANIFEST}")
    bad = [i for i in r["run_id"] if i in data.preds and i not in data.targets]
    if bad:
        raise PartError(f"{path / 'predictions.npz'}: no targets for run(s) {bad[:3]}")


def add_part(src: Path, ledger: Path = LEDGER_DIR) -> Path:
    """Validate the part at ``src`` (a part folder, a folder holding one, or a GPU shift's
    ``shift.tgz``, whose ``part/`` is the part) and copy it into the ledger; returns the new
    folder."""
    src = Path(src)
    if src.is_file() and tarfile.is_tarfile(src):
        with tempfile.TemporaryDirectory(prefix="part-") as tmp:
            with tarfile.open(src) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith("part/")]
                if not members:
                    raise PartError(f"{src}: no part/ inside (not a shift archive)")
                tar.extractall(tmp, members=members, filter="data")
            return add_part(Path(tmp) / "part", ledger)
    if not (src / MANIFEST).exists():  # a campaign's output folder holding one part
        inner = list(src.glob(f"*/{MANIFEST}"))
        if len(inner) == 1:
            src = inner[0].parent
    manifest = validate_part(src)
    dst = Path(ledger) / manifest["part_id"]
    if dst.resolve() == src.resolve():
        return dst
    if dst.exists():
        if all((dst / n).exists() and sha256(dst / n) == sha256(src / n)
               for n in (*PART_FILES, MANIFEST)):
            return dst  # the same part added twice
        raise PartError(f"{dst}: a different part with id {manifest['part_id']!r} is already "
                        "in the ledger")
    dst.mkdir(parents=True)
    for name in (*PART_FILES, *(n for n in OPTIONAL_FILES if (src / n).exists()), MANIFEST):
        shutil.copy2(src / name, dst / name)
    try:  # a run it shares with a part already in the ledger must agree with it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_ledger(ledger)
    except PartError:
        shutil.rmtree(dst)
        raise
    return dst


def list_parts(ledger: Path = LEDGER_DIR) -> list[Path]:
    return sorted(p.parent for p in Path(ledger).glob(f"*/{MANIFEST}")
                  if not p.parent.name.startswith("."))  # an export still being written


def load_ledger(ledger: Path = LEDGER_DIR, *, validate: bool = True) -> RunData:
    """Every part's runs, curves and predictions as one ``RunData`` with a ``part`` column.

    ``data.parts`` maps part id -> manifest. Duplicates (same experiment, config hash, seed and
    profile in two parts) keep the run of the part that ended last (ties: the later part id),
    with a warning; ``data.duplicates`` lists what was dropped.
    """
    frames, curves, preds, targets, parts, configs = [], [], {}, {}, {}, {}
    for path in list_parts(ledger):
        manifest = validate_part(path) if validate else json.loads((path / MANIFEST).read_text())
        d = load_snapshot(path)
        parts[path.name] = manifest
        frames.append(d.runs.assign(part=path.name, part_ended=manifest["ended"]))
        curves.append(d.curves.assign(part=path.name))
        preds.update(d.preds)
        configs[path.name] = d.configs
        targets.update(d.targets)
    if not frames:
        raise FileNotFoundError(f"no parts in {ledger} (folders with a {MANIFEST})")
    runs = rekeyed(pd.concat(frames, ignore_index=True), Path(ledger))
    # each part's resolved configs under the keys its runs now carry
    keyed = runs[["part", "config_hash_recorded", "config_hash"]].drop_duplicates()
    configs = {new: configs[part][old] for part, old, new in keyed.itertuples(index=False)
               if old in configs[part]}
    runs, dropped = _dedupe(runs)
    keep = set(runs["run_id"])
    # a run extended to a later horizon is in two parts under one run id: the winner's curve
    won = pd.MultiIndex.from_frame(runs[["part", "run_id"]])
    data = RunData(runs.drop(columns=["part_ended"]).reset_index(drop=True),
                   pd.concat([c[pd.MultiIndex.from_frame(c[["part", "run_id"]]).isin(won)]
                              .drop(columns="part") for c in curves], ignore_index=True),
                   {k: v for k, v in preds.items() if k in keep},
                   {k: v for k, v in targets.items() if k in keep})
    data.parts = parts
    data.duplicates = dropped
    data.configs = configs
    return data


def rekeyed(runs: pd.DataFrame, ledger: Path) -> pd.DataFrame:
    """``runs`` with the config keys of earlier hash rules mapped to today's by the ledger's
    ``rekey.csv`` (``python -m experiments rekey``: precision left the hash on 2026-12-03, the
    model entered it by what it is on 2026-12-07); the old key stays in
    ``config_hash_recorded``."""
    runs = runs.assign(config_hash_recorded=runs["config_hash"])
    path = ledger / REKEY
    if not path.exists():
        return runs
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    mapping = {(p, o): n for p, o, n in table[["part", "old_hash", "new_hash"]].itertuples(False)}
    runs["config_hash"] = [mapping.get((p, h), h) for p, h in zip(runs["part"],
                                                                   runs["config_hash"],
                                                                   strict=True)]
    return runs


def _quiet_runs(ledger: Path) -> pd.DataFrame | None:
    """The validated ledger's runs without the duplicate warnings (the tables report those);
    None when it has no part."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_ledger(ledger).runs
    except FileNotFoundError:
        return None


def reach(ledger: Path = LEDGER_DIR) -> dict[tuple[str, int], float]:
    """How far the ledger answers each (config key, seed): the horizon of its furthest
    finished run, ``inf`` for one that ran to its schedule's end or diverged (a diverged run
    is a result at every later horizon too). Killed and crashed runs answer nothing. Every
    part is validated first (a corrupt part is a ``PartError``, never a silent answer);
    empty when the ledger has no part."""
    runs = _quiet_runs(ledger)
    if runs is None:
        return {}
    ok = results(runs)  # finished, or diverged
    stopped = (runs["status"] == RunStatus.FINISHED) & ~reached_end(runs)  # at a horizon
    far = pd.to_numeric(runs["horizon"], errors="coerce").where(stopped).fillna(math.inf)
    out: dict[tuple[str, int], float] = {}
    for key, seed, h in zip(runs["config_hash"][ok], runs["seed"][ok], far[ok], strict=True):
        k = (str(key), int(seed))
        out[k] = max(out.get(k, -math.inf), float(h))
    return out


def new_to(runs: pd.DataFrame, ledger: Path = LEDGER_DIR) -> pd.Series:
    """Which of ``runs`` (a store's) no part of ``ledger`` holds as they are now: a run id no
    part has, or one a part holds as it was before it finished or went to a later horizon.
    Every part is validated first."""
    r = _quiet_runs(ledger)  # a run held twice: the further, finished copy is the one kept
    have = set() if r is None else set(zip(r["run_id"].astype(str), r["status"].astype(str),
                                           r["horizon"].astype(str), strict=True))
    return pd.Series([k not in have for k in zip(runs["run_id"].astype(str),
                                                 runs["status"].astype(str),
                                                 runs["horizon"].astype(str), strict=True)],
                     index=runs.index, dtype=bool)


def holds(reached: dict[tuple[str, int], float], key: str, seed: int,
          horizon: int | None) -> bool:
    """Whether ``reached`` (``reach``) answers config ``key``, ``seed`` at ``horizon`` (None:
    the schedule's end): a run that got at least that far."""
    return reached.get((key, int(seed)), -math.inf) >= (math.inf if horizon is None else horizon)


def _same_result(a, b) -> bool:
    """Two copies of one run agree: status and final errors equal (both missing counts)."""
    def eq(x, y) -> bool:
        return (pd.isna(x) and pd.isna(y)) or x == y
    return a.status == b.status and all(eq(getattr(a, c), getattr(b, c))
                                        for c in ("final_error", "final_train_error"))


def _dedupe(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per run key: a run held by two parts with the same result is counted once (the
    part that ended last); with different results it is a ``PartError`` naming both parts and
    both values, since picking either would silently hide the other."""
    # a FINISHED run wins over an unfinished or failed attempt of it (a KILLED run a later
    # part finished; a crash the rerun finished), then the part that ended last
    # (a run extended to a later horizon: the further one)
    rank = (runs["status"] == RunStatus.FINISHED).astype(int)
    reached = pd.to_numeric(runs["horizon"], errors="coerce").fillna(float("inf"))
    ordered = runs.assign(z_rank=rank, z_reached=reached).sort_values(
        ["z_rank", "z_reached", "part_ended", "part"], kind="stable")
    dup = ordered.duplicated(DUP_KEY, keep="last")
    winners = {tuple(getattr(r, k) for k in DUP_KEY): r for r in ordered[~dup].itertuples()}
    dropped = []
    for r in ordered[dup].itertuples():
        won = winners[tuple(getattr(r, k) for k in DUP_KEY)]
        what = (f"run {r.experiment}/{r.group}/{r.variant}/seed{r.seed} (config {r.config_hash}, "
                f"{r.profile})")
        extended = r.z_reached < won.z_reached  # the same run, stopped at an earlier horizon
        if r.status == RunStatus.FINISHED and not extended and not _same_result(r, won):
            raise PartError(
                f"{what} is in parts {r.part} ({r.status}, error {r.final_error}) and "
                f"{won.part} ({won.status}, error {won.final_error}) with different results: "
                "remove one of the parts (or the run from it) to say which one counts")
        msg = f"{what} is in parts {r.part} and {won.part}: counted once, from {won.part}"
        dropped.append(msg)
        warnings.warn(msg, stacklevel=3)
    out = ordered[~dup].drop(columns=["z_rank", "z_reached"])
    return out.sort_values(["experiment", "start_time", "run_id"], ignore_index=True), dropped


def parts_table(parts: dict[str, dict], ids) -> list[str]:
    """'id (device, date, n runs)' for each part id in ``ids``, in ledger order."""
    out = []
    for pid in sorted(set(ids)):
        m = parts.get(pid, {})
        out.append(f"{pid} ({m.get('device', '?')}, {str(m.get('ended', '?'))[:10]})")
    return out
