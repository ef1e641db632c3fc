"""``make gpu-rehearsal``: a GPU shift rehearsed on this CPU under the device's limits.

Two leases of the smoke shift, each on a bare store, each through ``experiments/gpu_shift.sh``
in a fresh interpreter, as the device runs it:

1. the first is killed (SIGKILL to the whole process group, as the device's 600 s limit does)
   while its ``--kill-in``-th run trains; what it left in ``$OUT`` must meet the device's
   limits (``check_out``) and its ``shift.tgz`` must be accepted by ``add-part``;
2. the second carries the first's ``shift.tgz`` and ``checkpoint.tgz`` back (``SHIFT_CARRY``)
   and runs to the end: its finished runs are skipped, not trained again, and its part holds
   every run of the shift.

The device image (Python 3.12, torch 2.11, the kit's wheels) is not this machine's: the
rehearsal checks the flow and the files, not the versions (tests/test_gpu.py is for those).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from convnets.names import REPO_ROOT

#: what the device tool returns from $OUT (its README): files, size, depth, names; the shift
#: (experiments/shifts.py) keeps its archives under MAX_FILE_BYTES
MAX_FILES, MAX_FILE_BYTES, MAX_DEPTH = 8, 16 * 2**20, 2
NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_out(out: Path) -> list[str]:
    """What in ``out`` the device would not return (empty: all of it comes back)."""
    files = [p for p in sorted(out.rglob("*")) if p.is_file()]
    bad = [f"{len(files)} files (at most {MAX_FILES} come back)"] if len(files) > MAX_FILES else []
    for p in files:
        rel = p.relative_to(out)
        if p.stat().st_size > MAX_FILE_BYTES:
            bad.append(f"{rel}: {p.stat().st_size} bytes (over {MAX_FILE_BYTES})")
        if len(rel.parts) - 1 > MAX_DEPTH:
            bad.append(f"{rel}: {len(rel.parts) - 1} folders deep (at most {MAX_DEPTH})")
        if not all(NAME.fullmatch(part) for part in rel.parts):
            bad.append(f"{rel}: a name outside [A-Za-z0-9._-]")
    return bad


def lease(out: Path, store: Path, data: Path, *, carry: Path | None = None,
          kill_in: int = 0, kill_after_s: float = 1.0, timeout_s: float = 900) -> tuple[int, str]:
    """One device call of ``gpu_shift.sh`` (smoke profile) on a bare ``store``; with
    ``kill_in`` N, SIGKILL ``kill_after_s`` after the N-th run starts. Returns (exit code, log)."""
    env = dict(os.environ, PYTHON=sys.executable, CONVNETS_DEADLINE="", DATA_ROOT=str(data),
               CONVNETS_SHIFT_STORE=str(store), PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    if carry is not None:
        env["SHIFT_CARRY"] = str(carry)
    proc = subprocess.Popen(["bash", "experiments/gpu_shift.sh", str(out), "--profile",
                             "smoke", "--deadline", "10m"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    log, t0 = out / "shift.log", time.time()
    while proc.poll() is None and time.time() - t0 < timeout_s:
        text = log.read_text() if log.exists() else ""
        if kill_in and text.count(", run ") >= kill_in:  # "(new, run abcd1234, config ...)"
            time.sleep(kill_after_s)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -9, log.read_text()
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(), log.read_text() if log.exists() else ""


def rehearse(root: Path, kill_in: int = 2) -> dict:
    """Both leases under ``root``; raises ``AssertionError`` naming what failed. Returns what
    came back from each lease (file -> bytes) and the part of each."""
    from analysis import ledger

    data = root / "data"
    out1, out2, carry = root / "lease1" / "OUT", root / "lease2" / "OUT", root / "carry"
    rc, log1 = lease(out1, root / "lease1" / "store", data, kill_in=kill_in)
    assert rc == -9, f"the first lease was to be killed mid-run, it ended with {rc}:\n{log1}"
    bad = check_out(out1)
    assert not bad, f"lease 1 leaves what the device would not return: {bad}"
    assert (out1 / "shift.tgz").exists(), f"lease 1 returned no shift.tgz:\n{log1}"
    part1 = ledger.add_part(out1 / "shift.tgz", root / "ledger1")
    n1 = ledger.validate_part(part1)["n_runs"]
    carry.mkdir(parents=True)
    for name in ("shift.tgz", "checkpoint.tgz"):
        if (out1 / name).exists():
            shutil.copy2(out1 / name, carry / name)
    rc, log2 = lease(out2, root / "lease2" / "store", data, carry=carry)
    assert rc == 0, f"the second lease failed ({rc}):\n{log2}"
    bad = check_out(out2)
    assert not bad, f"lease 2 leaves what the device would not return: {bad}"
    part2 = ledger.add_part(out2 / "shift.tgz", root / "ledger2")
    m2 = ledger.validate_part(part2)
    skipped = log2.count("FINISHED (skipped")
    assert skipped >= n1, f"lease 2 trained again runs lease 1 had finished:\n{log2}"
    return {"lease1": {p.name: p.stat().st_size for p in out1.iterdir()},
            "lease2": {p.name: p.stat().st_size for p in out2.iterdir()},
            "runs_after_lease1": n1, "runs_after_lease2": m2["n_runs"],
            "skipped_in_lease2": skipped, "resumed": "resumed from" in log2}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.rehearsal", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kill-in", type=int, default=2,
                    help="kill the first lease while its N-th run trains (default 2)")
    ap.add_argument("--keep", default=None, help="work in this folder and keep it")
    args = ap.parse_args(argv)
    root = Path(args.keep or tempfile.mkdtemp(prefix="gpu-rehearsal-"))
    try:
        t0 = time.time()
        got = rehearse(root, kill_in=args.kill_in)
    except AssertionError as err:
        print(f"gpu rehearsal FAILED: {err}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    for k, v in got.items():
        print(f"{k}: {v}")
    print(f"gpu rehearsal passed in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
