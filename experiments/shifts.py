"""GPU shifts: the queue in ``experiments/shifts.yaml``, its state from the ledger, and the
device side of one shift (``python -m experiments shift --out DIR``).

A shift is sized to one device lease. ``shifts`` lists the queue with each shift's state (done,
partly done with the runs missing, pending) computed from the ledger and its estimated device
time; ``shift`` runs the first shift that is not done: a shakedown of the fast path (one step
per setting, falling back to eager if a setting fails), the bench if the shift asks for it,
the shift's runs with a deadline, then the export of a ledger part and the packed store into
``--out``. Estimates use measured images/s where a bench has measured them (none yet on a GPU),
else the stated assumption in the queue file.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from analysis import ledger
from analysis import runs as run_store
from analysis.ledger import local_device
from analysis.sections import reached_end, results
from convnets.complexity import registered_complexity
from convnets.models import get_entry
from convnets.names import RunStatus, tracking_uri
from convnets.optim import plan_iterations
from convnets.runtime import Runtime, resolve_runtime
from convnets.train import fit
from experiments.deadline import Deadline, parse_deadline
from experiments.rehearsal import MAX_FILE_BYTES
from experiments.runner import report, run_jobs, summary_table
from experiments.spec import expand, load_spec, set_dotted

QUEUE = Path(__file__).resolve().parent / "shifts.yaml"
SHIFT_KEYS = {"id", "runs", "dataset", "data", "bench_minutes"}
RUN_KEYS = {"spec", "profile", "seeds", "variants"}
#: time kept back from the deadline for the export and packing
EXPORT_RESERVE_S = 45.0


@dataclass
class Shift:
    id: str
    runs: list[dict]
    dataset: str = "-"
    data: list[str] = field(default_factory=list)
    bench_minutes: float = 0.0


def load_queue(path: Path = QUEUE) -> tuple[list[Shift], dict]:
    """The queue and its header (budget_minutes, assumed); errors name the file and the key."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    shifts, seen = [], set()
    for i, s in enumerate(raw.get("shifts") or []):
        where = f"{path}: shifts[{i}]"
        if not isinstance(s, dict) or set(s) - SHIFT_KEYS or "id" not in s or not s.get("runs"):
            raise ValueError(f"{where}: a shift is a mapping with id and runs (keys: "
                             f"{', '.join(sorted(SHIFT_KEYS))})")
        if s["id"] in seen:
            raise ValueError(f"{where}.id: duplicate shift id {s['id']!r}")
        seen.add(s["id"])
        for j, r in enumerate(s["runs"]):
            if not isinstance(r, dict) or set(r) - RUN_KEYS or not {"spec", "profile"} <= set(r):
                raise ValueError(f"{where}.runs[{j}]: needs spec and profile (keys: "
                                 f"{', '.join(sorted(RUN_KEYS))})")
        shifts.append(Shift(s["id"], s["runs"], s.get("dataset", "-"), s.get("data") or [],
                            float(s.get("bench_minutes") or 0)))
    return shifts, raw


def shift_jobs(shift: Shift, profile: str | None = None, data_dir: str | None = None,
               specs: dict | None = None):
    """The jobs of a shift (``profile`` replaces every run's profile: the CPU dry run);
    ``specs``: the specs already loaded, by name (filled in here)."""
    specs = {} if specs is None else specs
    jobs = []
    for r in shift.runs:
        if r["spec"] not in specs:
            specs[r["spec"]] = load_spec(r["spec"])
        spec = specs[r["spec"]]
        prof = profile or r["profile"]
        seeds = r.get("seeds")
        n = max(seeds) + 1 if isinstance(seeds, list) else seeds
        dataset = None if shift.dataset in ("-", None) or prof == "smoke" else shift.dataset
        js = expand(spec, prof, seeds=n, only=r.get("variants"), dataset=dataset,
                    data_dir=data_dir)
        if isinstance(seeds, list):
            js = [j for j in js if j.seed in seeds]
        jobs += js
    return jobs


def _key(experiment, group, variant, seed, profile) -> tuple:
    return (str(experiment), str(group), str(variant), int(seed), str(profile))


def done_keys(ledger_dir: Path | None = None) -> set[tuple]:
    """(experiment, group, variant, seed, profile) of every result in the ledger that a shift's
    run (to its schedule's end) would give: a run stopped at a horizon is not one."""
    try:
        data = ledger.load_ledger(ledger_dir or ledger.LEDGER_DIR, validate=False)
    except FileNotFoundError:
        return set()
    r = data.runs
    ok = results(r) & ((r["status"] != RunStatus.FINISHED) | reached_end(r))
    return {_key(x.experiment, x.group, x.variant, x.seed, x.profile)
            for x in r[ok].itertuples()}


def estimate_seconds(jobs, assumed: dict) -> float:
    """Device seconds for ``jobs`` under the queue's stated assumption (see shifts.yaml)."""
    total = 0.0
    for job in jobs:
        c = job.config
        per_image_flops, layers = _step_cost(c["model"]["name"], c["model"]["options"],
                                             c["data"]["resize"])
        step = max(per_image_flops * c["batch_size"] / (assumed["tflops"] * 1e12),
                   layers * assumed["seconds_per_layer_step"])
        total += _iterations(c) * step + assumed["overhead_per_run_s"]
    return total


def _step_cost(name: str, opts: dict, resize: int | None) -> tuple[float, int]:
    """(training FLOPs per image, layers) of a model; MACs are counted once per model config
    (``registered_complexity``)."""
    shape = tuple(get_entry(name).input_size)
    if resize:
        shape = (shape[0], resize, resize)
    c = registered_complexity(name, opts, shape)
    return 6.0 * c["macs"], c["layers"]  # training: forward + 2x backward, 2 FLOPs per MAC


_TRAIN_SIZES = {"cifar10": 50000, "cifar100": 50000, "mnist": 60000, "fashion_mnist": 60000}


def _iterations(cfg: dict) -> int:
    s = cfg["schedule"]
    if s["unit"] == "iterations":
        return int(s["length"])
    name = str(cfg["data"]["name"]).lower()
    n = _TRAIN_SIZES.get(name, 50000 if name.startswith("imagefolder") else
                         cfg["data"]["options"].get("n_train", 50000))
    return plan_iterations(cfg, n - cfg["data"]["val_size"], cfg["batch_size"])[1].total


def shift_states(shifts, assumed, ledger_dir=None, estimate: bool = True) -> list[dict]:
    """Per shift: state, runs, the jobs missing and (``estimate``) the estimated seconds."""
    done = done_keys(ledger_dir)
    out, specs = [], {}
    for s in shifts:
        jobs = shift_jobs(s, specs=specs)
        missing = [j for j in jobs if _key(j.experiment, j.group, j.variant, j.seed,
                                           j.tags["profile"]) not in done]
        state = ("done" if not missing else "pending" if len(missing) == len(jobs)
                 else f"partly done ({len(missing)} of {len(jobs)} runs missing)")
        est = (estimate_seconds(missing or jobs, assumed) + 60 * s.bench_minutes
               if estimate else float("nan"))
        out.append(dict(shift=s, state=state, runs=len(jobs), missing=missing, estimate_s=est))
    return out


def run_shifts_command(args) -> int:
    args.queue = args.queue or QUEUE
    shifts, raw = load_queue(args.queue)
    if args.cmd == "shifts":
        states = shift_states(shifts, raw["assumed"], estimate=not args.next_data)
        if args.next_data:
            nxt = next((s for s in states if s["state"] != "done"), None)
            print(" ".join(nxt["shift"].data) if nxt else "")
            return 0
        budget = 60 * raw.get("budget_minutes", 8)
        for s in states:
            over = "  OVER BUDGET: split it" if s["estimate_s"] > budget else ""
            print(f"{s['shift'].id:40s} {s['state']:34s} {s['runs']:3d} runs  "
                  f"~{s['estimate_s'] / 60:4.1f} min{over}")
        print(f"estimates: {raw['assumed']} (assumed; no GPU bench has measured images/s yet)")
        return 0
    return run_shift(args, shifts, raw)


def run_shift(args, shifts, raw) -> int:
    """Run the next pending shift. The store lives outside ``$OUT`` (``--store``); after every
    run that ends, ``$OUT/shift.tgz`` (the ledger part and the store) and
    ``$OUT/checkpoint.tgz`` (the unfinished run's checkpoint, when under the device's file
    size) are written anew and moved into place whole, so a kill at any second loses at most
    the run in progress. ``--resume ARCHIVE`` (a carried shift.tgz, its checkpoint.tgz beside
    it) restores the store and checkpoint of an earlier lease first: its runs are skipped or
    resumed, not trained again."""
    t_start = time.time()
    deadline = parse_deadline(args.deadline)
    states = shift_states(shifts, raw["assumed"], estimate=False)
    pick = [s for s in states if (s["shift"].id == args.id if args.id else s["state"] != "done")]
    if not pick:
        print("no pending shift: the queue is done" if not args.id else f"no shift {args.id!r}")
        return 0 if not args.id else 2
    shift = pick[0]["shift"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = Path(args.store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    if args.resume:
        _unpack(Path(args.resume), store)
    os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{store}/mlflow.db",
                      CONVNETS_ARTIFACTS=(store / "artifacts").as_uri(),
                      CONVNETS_CHECKPOINTS=str(store / "checkpoints"))
    day = dt.datetime.fromtimestamp(t_start, dt.UTC).date().isoformat()
    part_id = f"{day}_{shift.id}" + (f"_{args.profile}" if args.profile else "")
    jobs = shift_jobs(shift, args.profile, args.data_dir)
    print(f"shift {shift.id}: {len(jobs)} runs, deadline in {deadline.left():.0f} s", flush=True)
    jobs = shakedown(jobs)
    if shift.bench_minutes and args.profile != "smoke":
        _bench(out, min(60 * shift.bench_minutes, deadline.left() / 2))
    work = Deadline(deadline.at - EXPORT_RESERVE_S)
    rows = []
    for job in jobs:  # one at a time: the archive is rewritten after each run that ends
        rows += run_jobs([job], progress=True, deadline=work)
        _pack(out, store, part_id, t_start)
    print(summary_table(rows))
    status = report(rows)  # 1 if a run crashed: the shift exports what finished, then fails
    if not (out / "shift.tgz").exists():
        print("no finished runs to export", flush=True)
        return 1
    print(f"results: {out / 'shift.tgz'} (ledger part {part_id}, store)\nnext, on your "
          f"machine: python -m analysis add-part <the part extracted from shift.tgz> && make "
          "tables", flush=True)
    if status:
        print("shift FAILED: some runs crashed (see the table above); the part holds the runs "
              "that finished", flush=True)
    return status


def _pack(out: Path, store: Path, part_id: str, t_start: float) -> None:
    """Write ``out/shift.tgz`` (the part of every ended run, the store) and, when a run was
    stopped, ``out/checkpoint.tgz``; each built beside its place and moved in whole."""
    data = run_store.load_mlflow(tracking_uri())
    if data.runs.empty:
        return
    ended = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    with tempfile.TemporaryDirectory(prefix="shift-part-") as tmp:
        part = ledger.write_part(
            data, Path(tmp), device=_device(), ended=ended,
            device_seconds=time.time() - t_start, part_id=part_id,
            started=dt.datetime.fromtimestamp(t_start, dt.UTC).replace(microsecond=0)
            .isoformat())
        _write_tar(out / "shift.tgz", [(part, f"part/{part_id}"),
                                       (store / "mlflow.db", "store/mlflow.db"),
                                       (store / "artifacts", "store/artifacts")])
    ckpts = sorted((store / "checkpoints").glob("*.pt"))
    target = out / "checkpoint.tgz"
    if not ckpts:
        target.unlink(missing_ok=True)
        return
    _write_tar(target, [(c, f"store/checkpoints/{c.name}") for c in ckpts])
    if target.stat().st_size > MAX_FILE_BYTES:
        target.unlink()
        print(f"checkpoint of the unfinished run not returned: over {MAX_FILE_BYTES >> 20} MiB "
              "(the device returns no larger file); the next lease starts that run again",
              flush=True)


def _write_tar(target: Path, members: list[tuple[Path, str]]) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for path, name in members:
            if path.exists():
                tar.add(path, arcname=name)
    os.replace(tmp, target)


def _unpack(archive: Path, store: Path) -> None:
    """Restore an earlier lease's store (``shift.tgz``) and checkpoint (``checkpoint.tgz``
    beside it) into ``store``; the part inside is left out (it is already in the ledger or
    will be replaced by this shift's)."""
    for path in (archive, archive.with_name("checkpoint.tgz")):
        if not path.exists():
            continue
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("store/")]
            for m in members:
                m.name = m.name[len("store/"):]
            tar.extractall(store, members=members, filter="data")
        print(f"resumed from {path}: {len(members)} files of the earlier lease's store",
              flush=True)


def _device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return local_device()


def shakedown(jobs):
    """One training step per fast-path setting the jobs use, on a tiny batch; a setting that
    fails falls back to eager fp32-layout defaults (and says so) rather than losing the lease."""
    settings = {json.dumps(j.config["runtime"], sort_keys=True): j for j in jobs}
    fallback = set()
    for key, job in settings.items():
        t0 = time.time()
        try:
            rt = _one_step(job.config)
            print(f"shakedown ok ({time.time() - t0:.1f} s): {rt}", flush=True)
        except Exception as err:  # any failure of the fast path: keep the lease, run eager
            print(f"shakedown FAILED for runtime {key}: {type(err).__name__}: {err}; "
                  "falling back to eager (compile off, channels_last off)", flush=True)
            fallback.add(key)
    out = []
    for job in jobs:
        if json.dumps(job.config["runtime"], sort_keys=True) in fallback:
            job = copy.deepcopy(job)
            set_dotted(job.config, "runtime.compile", False)
            set_dotted(job.config, "runtime.channels_last", False)
        out.append(job)
    return out


def _one_step(cfg: dict) -> Runtime:
    """One training step of ``cfg``'s run through ``fit``, on synthetic images of its input
    shape, with the runtime its real run resolves to here (``compile: auto`` decided by the
    real run's length, then requested outright, so a failure to compile surfaces instead of
    falling back). Returns that runtime."""
    name = cfg["model"]["name"]
    real = resolve_runtime(cfg["runtime"], model=name, iterations=_iterations(cfg),
                           family=get_entry(name).family)
    channels, size, _ = get_entry(name).input_size
    tiny = copy.deepcopy(cfg)
    tiny["data"].update(name="synthetic", data_dir=None, val_size=0, resize=None, options={
        "n_train": cfg["batch_size"], "n_test": 8, "channels": channels,
        "image_size": cfg["data"]["resize"] or size})
    tiny["schedule"].update(unit="iterations", length=1, drops=[], warmup_iterations=0,
                            warmup_until_error=None)
    tiny["runtime"].update(compile=real.compile or False, channels_last=real.channels_last,
                           fused_sgd=real.fused_sgd)
    fit(tiny, progress=False)  # a non-finite loss raises DivergedError
    return real


def _bench(out: Path, seconds: float) -> None:
    cmd = [sys.executable, "-m", "convnets.bench", "--out", str(out / "bench.md")]
    print(f"bench (at most {seconds:.0f} s): {' '.join(cmd)}", flush=True)
    try:
        subprocess.run(cmd, timeout=seconds, check=False)
    except subprocess.TimeoutExpired:
        print("bench stopped at its cap", flush=True)
