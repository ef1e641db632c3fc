"""lr-search: tuned learning rates are used only for the profile and data they were searched
on; several processes may open a fresh SQLite store at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from experiments import lr_search as search
from experiments.__main__ import main

REPO = Path(__file__).resolve().parents[1]

SPEC = textwrap.dedent(
    """
    name: tune
    claim: Tiny claim for the tuned-lr tests.
    citation: Nobody 2026, Table 0
    recipe:
      data: {name: synthetic, options: {n_train: 128, n_test: 64, image_size: 8}}
      optim: {lr: 0.1}
      schedule: {unit: epochs, length: 1, drops: [0.5]}
      batch_size: 32
    groups:
      - name: g
        model: cifar_resnet
        baseline: a
        variants:
          a: {options: {depth: 8}}
    profiles:
      smoke: {seeds: 1}
      quick:
        seeds: 1
        overrides: {data: {options: {n_train: 256}}}
    """
)
SMOKE_DATA = 'synthetic {"image_size": 8, "n_test": 64, "n_train": 128}'


@pytest.fixture
def tuned(tmp_path, monkeypatch):
    """The spec, and its tuned file as a smoke search records it."""
    monkeypatch.setenv("CONVNETS_TUNED_DIR", str(tmp_path / "tuned"))
    spec = tmp_path / "tune.yaml"
    spec.write_text(SPEC)
    row = {"variant": "g/a", "best_lr": 0.0421, "best_val_error": 50.0, "trials": 3,
           "study": "lr-tune-g/a-smoke", "dataset": SMOKE_DATA, "dataset_checksum": "abc"}
    search.record_best("tune", [row], profile="smoke", budget_epochs=2, storage="sqlite:///x")
    return spec


def test_tuned_file_records_profile_dataset_and_budget(tuned, tmp_path):
    entry = yaml.safe_load((tmp_path / "tuned" / "tune.yaml").read_text())["best"]["g/a"]
    assert (entry["profile"], entry["dataset"], entry["dataset_checksum"],
            entry["budget_epochs"], entry["lr"]) == ("smoke", SMOKE_DATA, "abc", 2, 0.0421)


def test_dataset_id_names_the_content_not_the_label():
    cfg = {"data": {"name": "synthetic", "options": {"n_train": 128, "n_test": 64,
                                                     "image_size": 8, "label": "x"}}}
    assert search.dataset_id(cfg) == SMOKE_DATA
    assert search.dataset_id({"data": {"name": "cifar10", "options": {}}}) == "cifar10"


def test_tuned_lr_for_its_own_profile_is_used(tuned, capsys):
    assert main(["run", str(tuned), "--profile", "smoke", "--lr", "tuned", "--dry-run"]) == 0
    assert "1 runs" in capsys.readouterr().out


@pytest.mark.parametrize("argv, what", [
    (["--profile", "quick"], "tuned for profile 'smoke'"),  # other profile and other data
    (["--profile", "smoke", "--set", "data.options.n_train=64"], '"n_train": 64}\''),
])
def test_tuned_lr_for_another_profile_or_dataset_is_refused(tuned, capsys, argv, what):
    assert main(["run", str(tuned), *argv, "--lr", "tuned", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert what in err and "--allow-tuned-mismatch" in err and "tune.yaml" in err


def test_mismatch_is_allowed_explicitly_and_tagged(tuned, monkeypatch):
    import experiments.commands as commands

    seen = []
    monkeypatch.setattr(commands, "run_jobs", lambda jobs, **kw: seen.extend(jobs) or [])
    assert main(["run", str(tuned), "--profile", "quick", "--lr", "tuned",
                 "--allow-tuned-mismatch"]) == 0
    (job,) = seen
    assert job.config["optim"]["lr"] == 0.0421 and job.tags["lr_source"] == "tuned"
    assert job.tags["tuned_from"] == f"profile smoke, dataset {SMOKE_DATA}"
    assert job.tags["tuned_file"].endswith("tune.yaml (study lr-tune-g/a-smoke)")


def test_a_search_records_outside_the_source_tree_where_git_ignores_it(monkeypatch):
    """Failed on the main of 2026-12-07: lr-search wrote experiments/tuned/NAME.yaml, a file in
    the source tree, and a later --lr tuned run was tagged git_dirty=false all the same."""
    from experiments.tuned import COMMITTED_DIR, tuned_dir

    monkeypatch.delenv("CONVNETS_TUNED_DIR", raising=False)
    assert tuned_dir() == REPO / "tuned" and tuned_dir() != COMMITTED_DIR
    if (REPO / ".git").exists():
        ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q",
                                  "tuned/degradation.yaml"])
        assert ignored.returncode == 0, "tuned/ is not git-ignored"


@pytest.mark.parametrize("storage, recorded", [
    ("sqlite:////home/someone/work/optuna.db", "sqlite:///.../optuna.db"),
    (f"sqlite:///{REPO / 'optuna.db'}", "sqlite:///optuna.db"),
    ("journal:/scratch/someone/optuna.journal", "journal:.../optuna.journal"),
    ("postgresql://user:secret@db:5432/optuna", "postgresql://user@db:5432/optuna"),
])
def test_a_tuned_file_records_its_storage_without_a_machine_path(tmp_path, monkeypatch,
                                                                 storage, recorded):
    """Failed on the main of 2026-12-07: the file said sqlite:////<the user's path>/optuna.db."""
    monkeypatch.setenv("CONVNETS_TUNED_DIR", str(tmp_path))
    row = {"variant": "g/a", "best_lr": 0.05, "best_val_error": 40.0, "trials": 2,
           "study": "s", "dataset": "synthetic", "dataset_checksum": "abc"}
    out = search.record_best("tune", [row], profile="smoke", budget_epochs=1, storage=storage)
    assert yaml.safe_load(out.read_text())["best"]["g/a"]["storage"] == recorded


def test_no_tuned_file_names_where_it_was_looked_for(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONVNETS_TUNED_DIR", str(tmp_path / "none"))
    spec = tmp_path / "tune.yaml"
    spec.write_text(SPEC)
    assert main(["run", str(spec), "--profile", "smoke", "--lr", "tuned", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "tune.yaml" in err and "experiments/tuned/tune.yaml" in err and "lr-search" in err


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    go = Path(sys.argv[1])
    from experiments import lr_search as search
    while not go.exists():
        time.sleep(0.01)
    search.lr_search(sys.argv[2], "smoke", trials=0, storage=sys.argv[3], record=False)
    """
)


@pytest.mark.slow  # > 10 s; `pytest -m slow` runs it
def test_processes_opening_a_fresh_sqlite_store_at_once_all_succeed(tmp_path):
    """Two processes, released together, open the same fresh Optuna and MLflow SQLite files
    (schema creation included). Without the first-use lock one of them usually dies with an
    IntegrityError or 'duplicate column'; with it every one must succeed, every time."""
    spec = tmp_path / "tune.yaml"
    spec.write_text(SPEC)
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               CONVNETS_ARTIFACTS=(tmp_path / "art").as_uri(),
               CONVNETS_TUNED_DIR=str(tmp_path / "tuned"))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(go), str(spec), storage],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    time.sleep(1.0)  # let them import; those still importing join a moment later
    go.touch()
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    assert not (tmp_path / "tuned").exists()
