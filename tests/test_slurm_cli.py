"""`run --launcher slurm` without a cluster: refusals, the dry run, the submit filter.

No Slurm needed (the end-to-end tests are tests/test_slurm.py, marker `slurm`)."""

from __future__ import annotations

import pytest

from experiments import slurm_state
from experiments.__main__ import main
from experiments.slurm import to_submit
from experiments.slurm_options import time_limit_minutes
from experiments.spec import Job, SpecError
from tests.test_experiments import _write


@pytest.fixture
def no_sbatch(mlflow_store, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no sbatch, no squeue
    return mlflow_store


def test_without_sbatch_nothing_is_submitted(no_sbatch, tmp_path, capsys):
    spec = _write(tmp_path)
    assert main(["run", spec, "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --launcher slurm: no `sbatch` on PATH (run this on a Slurm login "
                   "node, or use --launcher local)"]
    assert not (no_sbatch / "checkpoints" / "slurm").exists()


@pytest.mark.parametrize("flag", [["--parallel", "2"], ["--ddp", "2"], ["--batch-seeds", "2"]])
def test_slurm_refuses_local_ways_to_share_devices(no_sbatch, tmp_path, capsys, flag):
    spec = _write(tmp_path)
    assert main(["run", spec, "--launcher", "slurm", *flag]) == 2
    assert "--launcher slurm runs one run per task" in capsys.readouterr().err


def test_more_than_one_gpu_per_task_is_refused(no_sbatch, tmp_path, capsys):
    """Failed on the main of 2026-12-07: --gpus-per-run 4 asked Slurm for 4 GPUs and trained
    one process on one of them."""
    spec = _write(tmp_path)
    assert main(["run", spec, "--launcher", "slurm", "--gpus-per-run", "4", "--dry-run"]) == 2
    assert "--gpus-per-run 4: a task trains one run in one process" in capsys.readouterr().err


def test_a_bad_time_limit_is_refused(no_sbatch, tmp_path, capsys):
    spec = _write(tmp_path)
    assert main(["run", spec, "--launcher", "slurm", "--time-limit", "soon"]) == 2
    assert "--time-limit 'soon'" in capsys.readouterr().err


def test_dry_run_prints_the_array_and_submits_nothing(no_sbatch, tmp_path, capsys):
    spec = _write(tmp_path)
    assert main(["run", spec, "--launcher", "slurm", "--dry-run", "--partition", "gpu",
                 "--gpus-per-run", "1", "--time-limit", "2h", "--array-parallelism", "4",
                 "--sbatch=--account=proj"]) == 0
    out = capsys.readouterr().out
    for line in ("#SBATCH --array=0-5%4", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --time=120", "#SBATCH --account=proj", "#SBATCH --requeue",
                 "export CONVNETS_CHECKPOINTS=", "task 5: G/boom/seed1"):
        assert line in out, line
    assert "tiny: 6 of 6 runs to submit" in out
    assert not (no_sbatch / "checkpoints" / "slurm").exists()


@pytest.mark.parametrize("text,minutes", [("90", 90), ("90m", 90), ("4h", 240),
                                          ("1:30:00", 90), ("2-00:00:00", 2880), ("5:00", 5)])
def test_time_limit_forms(text, minutes):
    assert time_limit_minutes(text) == minutes


def test_time_limit_below_a_minute_is_refused():
    with pytest.raises(SpecError):
        time_limit_minutes("0.2")


def test_submit_filter_leaves_out_finished_queued_running_and_diverged():
    jobs = [Job("e", "G", v, 0, {"data": {"val_size": 0}}) for v in "abcdefg"]
    states = [slurm_state.RunState(jobs[0], "finished"),
              slurm_state.RunState(jobs[1], "pending"),
              slurm_state.RunState(jobs[2], "running"),
              slurm_state.RunState(jobs[3], "failed", note="diverged: non-finite loss"),
              slurm_state.RunState(jobs[4], "failed", note="RuntimeError: boom"),
              slurm_state.RunState(jobs[5], "killed"),
              slurm_state.RunState(jobs[6], "not submitted")]
    assert [j.variant for j in to_submit(states, force=False)] == ["e", "f", "g"]
    assert [j.variant for j in to_submit(states, force=True)] == ["a", "d", "e", "f", "g"]
