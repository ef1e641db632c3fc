"""`run --launcher slurm` against a real Slurm (tests/slurm/up.sh starts a single-node one).

Marked `slurm` (deselected by `make test`; `make test-slurm` and `.ci/run` start the cluster and
run them). They skip, saying why, where `sbatch` is absent or no controller answers.

1. a smoke spec submitted as a job array ends with the same MLflow runs as a local run of it
   (statuses, config hashes, seeds, final errors; fp32 on a CPU, so bitwise);
2. a task cancelled mid-run with `scancel --signal=TERM` ends KILLED with its checkpoint, and
   submitting again resumes it to the result of an uninterrupted run;
3. submitting a finished spec again submits nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from experiments.slurm_state import ACTIVE, RECORD, queue_states
from tests.test_experiments import TINY

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONF = Path(os.environ.get("CONVNETS_SLURM_DIR", "/tmp/convnets-slurm")) / "slurm.conf"
FP32 = ["--set", "runtime.precision=fp32", "--set", "runtime.compile=false"]
#: runs long enough to be cancelled after its first checkpoint
LONG = TINY.replace("length: 2, drops: [0.5]", "length: 40, drops: [0.5]")


def _cluster_reason() -> str | None:
    """Why the tests cannot run here (None: a controller answers and a node is up)."""
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH (Slurm is not installed; tests/slurm/up.sh installs it)"
    if not os.environ.get("SLURM_CONF") and DEFAULT_CONF.exists():
        os.environ["SLURM_CONF"] = str(DEFAULT_CONF)
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.SubprocessError) as err:
        return f"sinfo failed: {err}"
    if out.returncode != 0 or not re.search(r"idle|mix|alloc", out.stdout):
        return ("no Slurm controller with an available node answers (start one with "
                f"tests/slurm/up.sh): {(out.stderr or out.stdout).strip()[:200]}")
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _cluster_reason()
    if reason:
        pytest.skip(reason)


def _store(root: Path) -> dict:
    """The environment of one store (tracking, artifacts, checkpoints) under ``root``."""
    return dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
                CONVNETS_ARTIFACTS=(root / "artifacts").as_uri(),
                CONVNETS_CHECKPOINTS=str(root / "checkpoints"), CONVNETS_GIT_DIFF="off",
                OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true")


def _cli(env: dict, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "experiments", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _submit(env: dict, spec: str, *args: str) -> tuple[str, str | None]:
    """(output, array job id or None) of `run --launcher slurm`."""
    out = _cli(env, "run", spec, "--profile", "smoke", "--launcher", "slurm",
               "--time-limit", "15", *FP32, *args)
    m = re.search(r"submitted job (?:array )?(\d+)", out)
    return out, m.group(1) if m else None


def _wait_array(array: str, timeout: float = 1800.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not any(jid.split("_")[0] == array and s in ACTIVE for jid, s in
                   queue_states().items()):
            return
        time.sleep(1)
    pytest.fail(f"job array {array} still queued or running after {timeout:.0f} s")


def _runs(env: dict, name: str) -> dict:
    """(variant, seed) -> (status, config hash, final test error, run id) of a store."""
    cl = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = cl.get_experiment_by_name(name)
    out = {}
    for r in cl.search_runs([exp.experiment_id]):
        t = r.data.tags
        out[(t["variant"], t["seed"])] = (r.info.status, t["config_hash"],
                                          r.data.metrics.get("final_test_error"), r)
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][:3] == b[k][:3], k


@pytest.fixture(scope="module")
def smoke_array(cluster, tmp_path_factory):
    """The tiny spec, one seed per variant, run locally and as a job array."""
    root = tmp_path_factory.mktemp("slurm-smoke")
    spec = root / "slurmsmoke.yaml"
    spec.write_text(TINY.format(name="slurmsmoke"))
    local, remote = _store(root / "local"), _store(root / "slurm")
    _cli(local, "run", str(spec), "--profile", "smoke", "--seeds", "1", *FP32)
    t0 = time.monotonic()
    out, array = _submit(remote, str(spec), "--seeds", "1")
    assert array, out
    _wait_array(array)
    seconds = time.monotonic() - t0
    print(f"\nsmoke array of 3 tasks: submit to finished in {seconds:.1f} s")
    return {"spec": str(spec), "local": local, "slurm": remote, "array": array,
            "folder": root / "slurm" / "checkpoints" / "slurm" / "slurmsmoke"}


def test_a_job_array_trains_the_runs_a_local_run_trains(smoke_array):
    local = _runs(smoke_array["local"], "slurmsmoke")
    remote = _runs(smoke_array["slurm"], "slurmsmoke")
    assert {v: s[0] for v, s in remote.items()} == {
        ("base", "0"): "FINISHED", ("wide", "0"): "FINISHED", ("boom", "0"): "FAILED"}
    _same(local, remote)
    tasks = {r[3].data.tags.get("slurm_job") for r in remote.values()}
    assert tasks == {f"{smoke_array['array']}_{i}" for i in range(3)}
    status = _cli(smoke_array["slurm"], "status", smoke_array["spec"], "--seeds", "1", *FP32)
    assert re.search(r"base\s+0\s+finished\s+" + smoke_array["array"] + "_", status), status
    assert "slurmsmoke (profile smoke; --profile picks another): 2 finished, 1 failed" in status, \
        status


def test_submitting_a_finished_spec_again_submits_nothing(smoke_array):
    record = smoke_array["folder"] / RECORD
    before = record.read_text()
    queued = set(queue_states())
    out, array = _submit(smoke_array["slurm"], smoke_array["spec"], "--seeds", "1")
    assert array is None and "slurmsmoke: 0 of 3 runs to submit" in out, out
    assert record.read_text() == before
    assert set(queue_states()) <= queued


def test_a_cancelled_task_ends_killed_and_resubmitting_resumes_it(cluster, tmp_path):
    spec = tmp_path / "slurmlong.yaml"
    spec.write_text(LONG.format(name="slurmlong"))
    one = ["--variant", "base", "--seeds", "1"]
    local, remote = _store(tmp_path / "local"), _store(tmp_path / "slurm")
    out, array = _submit(remote, str(spec), *one)
    assert array, out
    ckpts = Path(remote["CONVNETS_CHECKPOINTS"])  # <hash>-<profile>-seed<S>.pt, one folder
    t0 = time.monotonic()
    while not any(ckpts.glob("*.pt")):
        assert time.monotonic() - t0 < 1800, "no checkpoint within 1800 s"
        assert any(j.startswith(array) for j in queue_states()), "the task ended early"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=TERM", array], check=True)  # one task: a plain job
    _wait_array(array)
    (run,) = [r[3] for r in _runs(remote, "slurmlong").values()]
    assert run.info.status == "KILLED", run.data.tags
    assert run.data.tags["failure_reason"] == "interrupted (SIGTERM); checkpoint kept"
    assert len(list(ckpts.glob("*.pt"))) == 1
    status = _cli(remote, "status", str(spec), *one, *FP32)
    assert re.search(r"base\s+0\s+killed", status), status

    _cli(local, "run", str(spec), "--profile", "smoke", *one, *FP32)  # uninterrupted
    out, again = _submit(remote, str(spec), *one)
    assert again and again != array, out
    _wait_array(again)
    after = _runs(remote, "slurmlong")
    _same(_runs(local, "slurmlong"), after)
    (resumed,) = [r[3] for r in after.values()]
    assert resumed.info.run_id == run.info.run_id  # the same MLflow run, resumed
    assert resumed.data.tags["slurm_job"] == again
    assert not any(ckpts.glob("*.pt"))
