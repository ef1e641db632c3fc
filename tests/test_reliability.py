"""Command line refuses bad counts and absent devices up front; SIGTERM stops a run as Ctrl-C
does; the scaling guide never exposes an unauthenticated tracking server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

import experiments.commands as commands
import experiments.runner as runner
from convnets.config import resolve_config
from experiments.__main__ import main
from experiments.spec import Job
from tests.test_experiments import TINY, _write

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_store(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("CONVNETS_CHECKPOINTS", str(tmp_path / "ckpt"))
    monkeypatch.setattr(commands, "run_jobs", lambda *a, **k: pytest.fail("a run started"))
    return db


@pytest.mark.parametrize("seeds", ["0", "-1"])
def test_seed_counts_below_one_are_refused(fresh_store, tmp_path, capsys, seeds):
    spec = _write(tmp_path)
    assert main(["run", spec, "--profile", "smoke", "--seeds", seeds]) == 2
    assert f"--seeds {seeds}: must be a positive number" in capsys.readouterr().err
    assert not fresh_store.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_refused_before_mlflow(fresh_store, tmp_path, capsys, device):
    spec = _write(tmp_path)
    assert main(["run", spec, "--profile", "smoke", "--device", device]) == 2
    err = capsys.readouterr().err
    assert f"runtime.device {device!r}" in err and "no CUDA device" in err
    assert not fresh_store.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_lr_search_on_cuda_without_cuda_is_refused(fresh_store, tmp_path, capsys):
    from experiments.lr_search import main as search_main

    spec = _write(tmp_path)
    assert search_main([spec, "--device", "cuda", "--storage",
                        f"sqlite:///{tmp_path / 'optuna.db'}"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not fresh_store.exists() and not (tmp_path / "optuna.db").exists()


LONG = TINY.replace("length: 2, drops: [0.5]", "length: 400, drops: [0.5]")


def _runner(tmp_path, name, *args):
    """A runner process of the LONG spec ``name`` on its own store: (process, checkpoint
    folder, store URI, environment, spec path)."""
    spec = _write(tmp_path, name, LONG.format(name=name))
    ckpt_dir = tmp_path / "ckpt"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, CONVNETS_CHECKPOINTS=str(ckpt_dir),
               CONVNETS_ARTIFACTS=(tmp_path / "art").as_uri(), PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments", "run", spec, "--profile", "smoke",
         "--variant", "base", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, ckpt_dir, uri, env, spec


def _wait_for(predicate, proc, timeout=240.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended early ({proc.returncode}): {proc.stdout.read()}")
        time.sleep(0.5)
    proc.kill()
    pytest.fail("timed out waiting for the run's first checkpoint")


@pytest.mark.slow  # a runner process signalled mid-run: about 25-50 s
def test_sigterm_marks_the_run_killed_and_keeps_its_checkpoint(tmp_path):
    proc, ckpt_dir, uri, env, spec = _runner(tmp_path, "term", "--seeds", "1")
    try:
        _wait_for(lambda: any(ckpt_dir.glob("*.pt")), proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    cl = MlflowClient(uri)
    exp = cl.get_experiment_by_name("term")
    (run,) = cl.search_runs([exp.experiment_id])
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"] == "interrupted (SIGTERM); checkpoint kept"
    assert len(list(ckpt_dir.glob("*.pt"))) == 1


def test_stop_on_sigterm_turns_the_signal_into_a_keyboard_interrupt():
    before = signal.getsignal(signal.SIGTERM)
    try:
        runner.stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode boundary
        assert isinstance(info.value, runner.Terminated)
        assert runner._terminated  # this process starts no further job
    finally:
        signal.signal(signal.SIGTERM, before)
        runner._terminated = False


def test_a_terminated_worker_starts_no_queued_job(monkeypatch):
    """The process pool hands a worker its next job before the current one ends, and the
    worker survives the Terminated it reports back: after SIGTERM that job must not start."""
    monkeypatch.setattr(runner, "_terminated", True)
    monkeypatch.setattr(runner, "_start", lambda *a, **k: pytest.fail("a run was opened"))
    job = Job(experiment="e", group="g", variant="v", seed=3,
              config=resolve_config({"model": {"name": "nin"}, "seed": 3}))
    row = runner.run_job(job)
    assert row["status"] == "not started (terminated)" and (row["variant"], row["seed"]) == (
        "v", 3)


@pytest.mark.slow  # two spawned workers importing torch: about 30 s
def test_sigterm_to_a_parallel_runner_stops_every_run_and_starts_none(tmp_path):
    proc, ckpt_dir, uri, env, spec = _runner(tmp_path, "pterm", "--seeds", "4", "--parallel", "2")
    try:
        _wait_for(lambda: len(list(ckpt_dir.glob("*.pt"))) >= 2, proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    cl = MlflowClient(uri)
    runs = cl.search_runs([cl.get_experiment_by_name("pterm").experiment_id])
    assert sorted(r.info.status for r in runs) == ["KILLED", "KILLED"], out  # seeds 2, 3: none


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # ppid
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow  # two spawned workers importing torch: about 30 s
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_workers_of_a_parallel_runner_killed_with_9_end_and_mark_their_runs(tmp_path):
    """Failed on the main of 2026-12-07: kill -9 of a --parallel runner left its workers
    training on, unowned, indefinitely."""
    proc, ckpt_dir, uri, env, spec = _runner(tmp_path, "orphanpool", "--seeds", "2", "--parallel", "2")
    try:
        _wait_for(lambda: len(list(ckpt_dir.glob("*.pt"))) >= 2, proc)
        workers = [c for c in _children(proc.pid)
                   if "spawn" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")]
        assert len(workers) >= 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        t0 = time.monotonic()
        while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() - t0 < 60:
            time.sleep(0.5)
        assert not any(Path(f"/proc/{w}").exists() for w in workers), "workers outlived it"
    finally:
        if proc.poll() is None:
            proc.kill()
    cl = MlflowClient(uri)
    exp = cl.get_experiment_by_name("orphanpool").experiment_id
    # each worker marks its run KILLED on the signal; one that could not (the store busy with
    # the other's write as both end at once) is closed by the next start, which resumes it
    assert "KILLED" in {r.info.status for r in cl.search_runs([exp])}
    again = subprocess.run(
        [sys.executable, "-m", "experiments", "run", spec, "--profile", "smoke", "--variant",
         "base", "--seeds", "2", "--deadline", "15s"], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert not [r for r in cl.search_runs([exp]) if r.info.status == "RUNNING"]


def test_scaling_guide_binds_the_tracking_server_safely():
    text = (REPO / "docs" / "scaling.md").read_text()
    commands = re.findall(r"^mlflow server .*$", text, re.MULTILINE)
    assert commands, "docs/scaling.md should show how to run the tracking server"
    for cmd in commands:
        assert "--host 127.0.0.1" in cmd, cmd
    assert "--host 0.0.0.0" not in text
    assert "--app-name basic-auth" in text and "MLFLOW_TRACKING_PASSWORD" in text
    assert "proxy" in text and "authentication" in text


def test_parallel_workers_share_the_cores(monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert [runner.worker_threads(k) for k in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert runner.worker_threads(2) is None  # the user's setting stands
    before, handler = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    try:
        runner.worker_init(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
        signal.signal(signal.SIGTERM, handler)


@pytest.mark.parametrize("option, value", [("--parallel", "0"), ("--parallel", "-2"),
                                           ("--ddp", "-1")])
def test_process_counts_below_one_are_refused(fresh_store, tmp_path, capsys, option, value):
    """Failed on the main of 2026-12-02: --parallel 0 and -2 were accepted silently."""
    spec = _write(tmp_path)
    assert main(["run", spec, "--profile", "smoke", option, value]) == 2
    assert f"{option} {value}: must be" in capsys.readouterr().err
    assert not fresh_store.exists()


def test_a_set_typo_is_reported_as_the_command_lines(fresh_store, tmp_path, capsys):
    """Failed on the main of 2026-12-02: `--set optim.lrr=0.1` was reported as an error in
    the YAML file's first variant."""
    spec = _write(tmp_path)
    assert main(["run", spec, "--profile", "smoke", "--set", "optim.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "--set 'optim.lrr=0.1' (command line): unknown config key 'optim.lrr'" in err
    assert "variants" not in err and "lr, momentum" in err
    assert main(["run", spec, "--profile", "smoke", "--set", "optim.lr=-1"]) == 2
    assert "--set optim.lr=-1 (command line)" in capsys.readouterr().err
    assert not fresh_store.exists()


def test_a_tracking_server_that_is_down_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    """Failed on the main of 2026-12-02: 253 s of retries, then a 111-line traceback."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(commands, "run_jobs", lambda *a, **k: pytest.fail("a run started"))
    spec = _write(tmp_path)
    t0 = time.time()
    assert main(["run", spec, "--profile", "smoke"]) == 2
    assert time.time() - t0 < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and uri in err[0] and "cannot be reached" in err[0]


@pytest.mark.parametrize("cfg, key", [
    ({"optim": {"bias_lr_mult": True}}, "optim.bias_lr_mult"),
    ({"optim": {"lr_mult": [["head", True]]}}, "optim.lr_mult"),
    ({"schedule": {"warmup_window": True}}, "schedule.warmup_window"),
    ({"schedule": {"warmup_iterations": 5, "warmup_until_error": True}},
     "schedule.warmup_until_error"),
])
def test_true_is_not_a_number(cfg, key):
    """Failed on the main of 2026-12-02: YAML's `true` passed where a number is required."""
    from convnets.config import ConfigError, resolve_config

    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        resolve_config({"model": {"name": "resnet20"}, **cfg})
