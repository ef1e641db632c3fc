"""Time-boxed runs, data identity in the config hash, and the GPU shift's CPU dry run."""

from __future__ import annotations

import shutil
import time
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from convnets.config import config_hash
from convnets.names import Outcome, tracking_uri
from experiments.__main__ import main
from experiments.deadline import Deadline, parse_deadline
from tests.data_formats import write_imagefolder
from tests.test_experiments import _write


def test_imagefolder_hash_is_its_content_not_its_path(tmp_path):
    write_imagefolder(tmp_path / "a" / "cifar")
    shutil.copytree(tmp_path / "a" / "cifar", tmp_path / "elsewhere" / "copy")
    write_imagefolder(tmp_path / "b" / "cifar", size=9)  # other images

    def h(path, precision="fp32"):
        return config_hash({"model": {"name": "resnet20"},
                            "data": {"name": f"imagefolder:{path}", "options": {"cache": False}},
                            "runtime": {"precision": precision}})

    a = h(tmp_path / "a" / "cifar")
    assert a == h(tmp_path / "elsewhere" / "copy")
    assert a != h(tmp_path / "b" / "cifar")
    # precision is how a run executes: both precisions are one cell (issue 25)
    assert a == h(tmp_path / "a" / "cifar", precision="bf16")


def test_parse_deadline_forms():
    now = 1_000_000.0
    assert parse_deadline("480", now).at == now + 480
    assert parse_deadline("8m", now).at == now + 480
    assert parse_deadline("2h", now).at == now + 7200
    assert parse_deadline("1970-01-12T13:46:40Z", now).at == 1_000_000.0
    assert parse_deadline(None) is None and parse_deadline("") is None
    at = parse_deadline("00:00", now).at  # next midnight UTC after 'now'
    assert now < at <= now + 86400 and at % 86400 == 0
    with pytest.raises(ValueError, match="'soon'"):
        parse_deadline("soon")


class _StoreWithOneFinishedRun:
    """What ``Deadline.refuse`` asks the MLflow client: a finished run of the config that took
    100 s."""

    def search_runs(self, *args, **kwargs):
        return [SimpleNamespace(data=SimpleNamespace(metrics={"wall_time_s": 100.0}, tags={}))]


def test_partial_starts_a_run_that_cannot_finish_and_only_with_a_deadline(tmp_path, capsys):
    store, ckpt = _StoreWithOneFinishedRun(), tmp_path / "none.pt"
    soon = time.time() + 60
    assert Deadline(soon).refuse(store, "1", "cfg", ckpt).startswith("needs about 115 s")
    assert Deadline(soon, partial=True).refuse(store, "1", "cfg", ckpt) == ""
    assert Deadline(time.time() - 1, partial=True).refuse(store, "1", "cfg", ckpt) == \
        "deadline passed"
    assert main(["run", "degradation", "--partial", "--dry-run"]) == 2
    assert "--partial: needs --deadline" in capsys.readouterr().err


def test_deadline_stops_resumes_and_skips(mlflow_store, tmp_path, monkeypatch, capsys):
    mlflow.set_tracking_uri(tracking_uri())
    only = ["--variant", "base", "--seeds", "1"]
    # the uninterrupted run, in a store of its own (in this one it would serve the next spec:
    # the same network and recipe is one run)
    ref_spec, ref = _write(tmp_path, "timebox-ref"), tmp_path / "ref"
    with monkeypatch.context() as m:
        m.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ref / 'mlflow.db'}")
        m.setenv("CONVNETS_CHECKPOINTS", str(ref / "ckpt"))
        m.setenv("CONVNETS_ARTIFACTS", (ref / "art").as_uri())
        assert main(["run", ref_spec, "--profile", "smoke", *only, "--deadline", "1h"]) == 0
        cl = MlflowClient(tracking_uri())
        (run,) = cl.search_runs([cl.get_experiment_by_name("timebox-ref").experiment_id])
    ref_err = run.data.metrics["final_test_error"]
    # the same config, stopped by the deadline after 3 iterations
    spec = _write(tmp_path, "timebox")
    calls = iter(range(10**6))
    monkeypatch.setattr(Deadline, "passed", lambda self: next(calls) >= 3)
    args = ["run", spec, "--profile", "smoke", *only, "--deadline", "3600"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "KILLED (deadline)" in out and "1 left for the next invocation" in out
    runs = mlflow.search_runs(experiment_names=["timebox"])
    killed = runs[runs["status"] == "KILLED"].iloc[0]
    assert killed["tags.failure_kind"] == "deadline"
    assert "deadline reached at iteration 3 of 8" in killed["tags.failure_reason"]
    # the next invocation resumes the same MLflow run to the uninterrupted result
    monkeypatch.setattr(Deadline, "passed", lambda self: False)
    assert main(["run", spec, "--profile", "smoke", *only, "--deadline", "1h"]) == 0
    runs = mlflow.search_runs(experiment_names=["timebox"])
    resumed = runs[runs["run_id"] == killed["run_id"]].iloc[0]
    assert resumed["status"] == "FINISHED"
    assert resumed["metrics.final_test_error"] == ref_err
    # a run that the estimate says cannot finish is not started
    monkeypatch.setattr(time, "time", lambda: 0.0)
    assert main(["run", spec, "--profile", "smoke", "--variant", "base", "--seeds", "2",
                 "--deadline", "1970-01-01T00:00:05Z"]) == 0
    assert "not started (needs about" in capsys.readouterr().out


@pytest.mark.slow
def test_shift_dry_run_on_cpu_end_to_end(tmp_path):
    """The device command of the first pending shift, run on CPU with the smoke profile:
    part produced, added to a ledger, tables rebuilt from it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from analysis.__main__ import main as analysis_main
    from experiments import shifts

    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "OUT"
    env = dict(os.environ, PYTHON=sys.executable, CONVNETS_DEADLINE="",
               DATA_ROOT=str(tmp_path / "data"))
    proc = subprocess.run(["bash", "experiments/gpu_shift.sh", str(out), "--profile", "smoke",
                           "--deadline", "10m"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "shakedown ok" in (out / "shift.log").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["shift.log", "shift.tgz"]
    ledger_dir = tmp_path / "ledger"
    analysis_main(["add-part", str(out / "shift.tgz"), "--ledger", str(ledger_dir)])
    (part,) = [p for p in ledger_dir.iterdir() if p.is_dir()]
    analysis_main(["tables", "--ledger", str(ledger_dir), "--out", str(tmp_path / "tables")])
    md = (tmp_path / "tables" / "degradation.md").read_text()
    assert f"Parts: {part.name}" in md and "Runs: 4 (4 finished" in md
    assert shifts.done_keys(ledger_dir) and not any(
        k[4] == "quick" for k in shifts.done_keys(ledger_dir))  # smoke never completes a shift


def test_a_shift_whose_runs_crash_exports_what_finished_and_fails(tmp_path, monkeypatch):
    """Failed on the main of 2026-12-02: the shift discarded the run report's status, so a GPU
    shift whose runs crashed exited 0."""
    import argparse

    import experiments.runner as runner
    from experiments import shifts
    from experiments.spec import expand, load_spec

    spec = _write(tmp_path, "crashy")
    jobs = expand(load_spec(spec), "smoke", seeds=1, only=["base"])
    real = runner.run_jobs

    def one_crashes(js, **kw):
        rows = real(js, **kw)
        return rows + [dict(rows[0], variant="wide", outcome=Outcome.CRASHED,
                            status="FAILED (RuntimeError)", error=None)]

    monkeypatch.setattr(shifts, "shift_jobs", lambda *a, **k: jobs)
    monkeypatch.setattr(shifts, "shakedown", lambda js: js)
    monkeypatch.setattr(shifts, "run_jobs", one_crashes)  # the runner's, as the shift calls it
    for key in ("MLFLOW_TRACKING_URI", "CONVNETS_ARTIFACTS", "CONVNETS_CHECKPOINTS"):
        monkeypatch.delenv(key, raising=False)  # run_shift sets them under --out
    queue, raw = shifts.load_queue()
    args = argparse.Namespace(out=tmp_path / "OUT", id=queue[0].id, profile="smoke",
                              data_dir=None, deadline="10m", store=tmp_path / "store",
                              resume=None)
    assert shifts.run_shift(args, queue, raw) == 1
    from analysis import ledger

    part = ledger.add_part(tmp_path / "OUT" / "shift.tgz", tmp_path / "ledger")
    assert ledger.validate_part(part)["n_runs"] == 1  # the finished run exported


class _StopAfter(Deadline):
    """A deadline that passes after ``n`` of fit's per-step checks (the lease's clock made
    deterministic); far away for the runner's start check."""

    def __init__(self, n: int):
        super().__init__(time.time() + 3600)
        object.__setattr__(self, "calls", [n])

    def passed(self) -> bool:
        self.calls[0] -= 1
        return self.calls[0] < 0


@pytest.mark.slow  # three smoke runs through two shifts: about 12 s idle, 25 s loaded
def test_a_deadline_stop_brings_its_checkpoint_back_and_the_next_lease_finishes_it(
        tmp_path, monkeypatch):
    """Issue 42: a shift stopped by its deadline returns the stopped run's checkpoint
    (checkpoint.tgz beside shift.tgz, within the device's limits); the next lease, on a bare
    machine, carries both back, resumes that MLflow run from its checkpoint and ends with the
    uninterrupted run's numbers (fp32, CPU: bitwise)."""
    import argparse

    from analysis import ledger
    from experiments import shifts
    from experiments.rehearsal import check_out
    from experiments.spec import expand, load_spec

    spec = _write(tmp_path, "leased", own=True)
    jobs = expand(load_spec(spec), "smoke", seeds=1, only=["base"],
                  sets=[("runtime.precision", "fp32")])
    real = shifts.run_jobs
    monkeypatch.setattr(shifts, "shift_jobs", lambda *a, **k: jobs)
    monkeypatch.setattr(shifts, "shakedown", lambda js: js)
    for key in ("MLFLOW_TRACKING_URI", "CONVNETS_ARTIFACTS", "CONVNETS_CHECKPOINTS"):
        monkeypatch.delenv(key, raising=False)  # run_shift sets them under --store
    queue, raw = shifts.load_queue()

    def lease(out, carry, stop_after):  # a bare store each time (the device keeps nothing)
        store = tmp_path / f"store-{out.name}"
        monkeypatch.setattr(shifts, "run_jobs", lambda js, **kw: real(
            js, **dict(kw, deadline=_StopAfter(stop_after) if stop_after else None)))
        args = argparse.Namespace(out=out, id=queue[0].id, profile="smoke", data_dir=None,
                                  deadline="10m", store=store, resume=carry)
        shifts.run_shift(args, queue, raw)
        return ledger.add_part(out / "shift.tgz", tmp_path / f"ledger-{out.name}")

    part1 = lease(tmp_path / "OUT1", None, stop_after=3)  # 4 steps an epoch: inside epoch 1
    assert sorted(p.name for p in (tmp_path / "OUT1").iterdir()) == ["checkpoint.tgz",
                                                                     "shift.tgz"]
    assert check_out(tmp_path / "OUT1") == []
    (stopped,) = ledger.load_ledger(part1.parent).runs.itertuples()
    assert stopped.status == "KILLED" and stopped.failure_kind == "deadline"
    part2 = lease(tmp_path / "OUT2", tmp_path / "OUT1" / "shift.tgz", stop_after=0)
    assert not (tmp_path / "OUT2" / "checkpoint.tgz").exists()
    (done,) = ledger.load_ledger(part2.parent).runs.itertuples()
    assert done.status == "FINISHED" and done.run_id == stopped.run_id

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'straight.db'}")
    monkeypatch.setenv("CONVNETS_CHECKPOINTS", str(tmp_path / "straight-ckpt"))
    (straight,) = real(jobs)
    assert straight["error"] == done.final_error
