"""Run claims: one process trains a run; a run no process owns is closed by the next start."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from convnets import tracking
from convnets.names import tracking_uri
from experiments.__main__ import main
from experiments.locks import claim
from experiments.runner import claim_path
from experiments.spec import expand, load_spec
from tests.test_experiments import _write

REPO = Path(__file__).resolve().parents[1]


def test_a_claim_is_exclusive_and_released(tmp_path):
    path = tmp_path / "a" / "run.claim"
    with claim(path) as first:
        assert first is None and path.exists()
        with claim(path) as second:  # another open file description: refused
            assert second is not None and f"pid {os.getpid()}" in second
    assert not path.exists()  # removed by its owner on release
    with claim(path) as again:
        assert again is None


def test_the_claim_of_a_killed_process_is_free_at_once(tmp_path):
    """kill -9 gives the process no chance to release its claim: the kernel does."""
    path = tmp_path / "run.claim"
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from experiments.locks import claim
        with claim(Path({str(path)!r})) as holder:
            assert holder is None
            print("held", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with claim(path) as holder:
            assert holder is not None  # alive: held
        proc.kill()
        proc.wait(30)
        with claim(path) as holder:
            assert holder is None  # the file is still there, its lock is not
    finally:
        proc.kill()


@pytest.mark.slow  # two runner processes on one store: about 30-60 s
def test_two_runners_on_one_fresh_store_train_each_run_once(tmp_path):
    """Failed on the main of 2026-12-02: two identical `experiments run` commands trained every
    run twice on an initialised store (or one crashed in MLflow's schema creation on a fresh
    one). Now each run is trained by the runner that claimed it, and the total is exact."""
    spec = _write(tmp_path)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               CONVNETS_CHECKPOINTS=str(tmp_path / "ckpt"),
               CONVNETS_ARTIFACTS=(tmp_path / "art").as_uri(), CONVNETS_GIT_DIFF="off",
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "experiments", "run", spec, "--profile", "smoke"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(outs)
    cl = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = cl.get_experiment_by_name("tiny")
    runs = cl.search_runs([exp.experiment_id])
    keys = [(r.data.tags["variant"], r.data.tags["seed"]) for r in runs]
    assert len(keys) == 6 and len(set(keys)) == 6, keys  # 3 variants x 2 seeds, once each
    assert sorted(r.info.status for r in runs) == ["FAILED"] * 2 + ["FINISHED"] * 4


def _left_running(cl, exp_id, job, name):
    """A RUNNING run of ``job`` as a process killed with -9 leaves it."""
    return tracking.TrackedRun.start(cl, exp_id, run_name=name,
                                     tags=dict(job.tags, config_hash=job.config_hash),
                                     config=job.config)


def test_an_orphaned_running_run_is_closed_by_the_next_start(mlflow_store, tmp_path):
    """Failed on the main of 2026-12-02: a run killed before its first checkpoint stayed
    RUNNING for ever and the rerun opened a new run beside it."""
    spec = _write(tmp_path, "orphan")
    job = next(j for j in expand(load_spec(spec), "smoke") if j.variant == "base")
    cl = MlflowClient(tracking_uri())
    exp_id = tracking.experiment_id(cl, "orphan")
    orphan = _left_running(cl, exp_id, job, "killed early")
    assert not claim_path(job).exists()
    assert main(["run", spec, "--profile", "smoke", "--variant", "base", "--seeds", "1"]) == 0
    runs = cl.search_runs([exp_id])
    by_id = {r.info.run_id: r for r in runs}
    closed = by_id[orphan.run_id]
    assert closed.info.status == "KILLED"
    assert closed.data.tags["failure_kind"] == "orphaned"
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    assert not any(r.info.status == "RUNNING" for r in runs)


def test_a_running_rerun_killed_beside_a_finished_run_is_closed_by_the_next_start(
        mlflow_store, tmp_path):
    """Failed on the main of 2026-12-07: kill -9 during a --force rerun left its run RUNNING;
    the next start skipped the job (its earlier run FINISHED) and never closed it."""
    spec = _write(tmp_path, "forced", own=True)
    assert main(["run", spec, "--profile", "smoke", "--variant", "base", "--seeds", "1"]) == 0
    job = next(j for j in expand(load_spec(spec), "smoke") if j.variant == "base")
    cl = MlflowClient(tracking_uri())
    exp_id = tracking.experiment_id(cl, "forced")
    forced = _left_running(cl, exp_id, job, "--force rerun, killed -9")
    assert main(["run", spec, "--profile", "smoke", "--variant", "base", "--seeds", "1"]) == 0
    closed = cl.get_run(forced.run_id)
    assert closed.info.status == "KILLED" and closed.data.tags["failure_kind"] == "orphaned"
    assert sorted(r.info.status for r in cl.search_runs([exp_id])) == ["FINISHED", "KILLED"]


class _RacingClient:
    """A client whose first ``log_inputs`` calls fail the way the SQL store's do when another
    runner inserted the same data set between its lookup and its insert."""

    def __init__(self, errors):
        self.errors, self.calls = list(errors), 0

    def log_inputs(self, run_id, datasets):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


def test_a_data_set_inserted_by_another_runner_meanwhile_is_linked_not_a_crash():
    """Failed on the main of 2026-12-04 (seen as a flaky two-runner test under load): two
    runners finishing at once both inserted the data set and the second crashed its finished
    run on the store's unique key. The insert is retried, so the second links the first's row;
    any other store error still raises, and a key that keeps clashing raises in the end."""
    clash = "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, " \
            "datasets.name, datasets.digest"
    info = {"dataset_label": "MNIST", "dataset_checksum": "abc"}
    cl = _RacingClient([MlflowException(clash)])
    tracking.RunLogger(cl, "r").log_dataset(info, {"data": {"name": "mnist"}}, "test")
    assert cl.calls == 2
    for errors, calls in (([MlflowException("database is locked")], 1),
                          ([MlflowException(clash)] * 3, 3)):
        cl = _RacingClient(errors)
        with pytest.raises(MlflowException):
            tracking.RunLogger(cl, "r").log_dataset(info, {"data": {}}, "test")
        assert cl.calls == calls
