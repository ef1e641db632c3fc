"""A store never breaks for good (issue 43 item 6): a fresh SQLite MLflow store is created
aside and moved into place whole, and a store left half-created by an older version is
repaired on the next start (or refused in one line when it holds runs)."""

from __future__ import annotations

import sqlite3

import pytest
from mlflow.tracking import MlflowClient

from experiments import locks
from experiments.__main__ import main


def _half_created(db):
    """What a first open killed while MLflow created its tables leaves: some tables, not
    MLflow's schema (opening it then fails on every later command)."""
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE experiments (x INTEGER)")


def test_a_first_open_killed_half_way_leaves_no_store_and_the_next_creates_it(tmp_path,
                                                                             monkeypatch):
    db = tmp_path / "mlflow.db"
    real = locks._create_store

    def killed(path):
        _half_created(path)  # the tables it had made when the signal came
        raise KeyboardInterrupt

    monkeypatch.setattr(locks, "_create_store", killed)
    with pytest.raises(KeyboardInterrupt):
        locks.ready_store(f"sqlite:///{db}")
    assert not db.exists() and not list(tmp_path.glob(".mlflow.db.creating-*"))
    monkeypatch.setattr(locks, "_create_store", real)
    locks.ready_store(f"sqlite:///{db}")
    assert MlflowClient(f"sqlite:///{db}").search_experiments()  # the Default experiment


def test_a_half_created_store_without_runs_is_moved_aside_and_created_again(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    _half_created(db)
    locks.ready_store(f"sqlite:///{db}")
    assert MlflowClient(f"sqlite:///{db}").search_experiments()
    (aside,) = tmp_path.glob("mlflow.db.broken-*")
    assert "moved to " + aside.name in capsys.readouterr().err


def test_a_broken_store_with_runs_is_refused_in_one_line_before_any_run(tmp_path, monkeypatch,
                                                                        capsys):
    db = tmp_path / "mlflow.db"
    locks.ready_store(f"sqlite:///{db}")
    cl = MlflowClient(f"sqlite:///{db}")
    cl.create_run(cl.create_experiment("x"))
    with sqlite3.connect(db) as con:  # damage the schema, keep the runs
        con.execute("DROP TABLE experiments")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    assert main(["run", "degradation", "--profile", "smoke", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert "does not open" in err and "holds runs" in err and "Traceback" not in err
    assert main(["status", "degradation", "--profile", "smoke", "--seeds", "1"]) == 2
    assert db.exists() and not list(tmp_path.glob("mlflow.db.broken-*"))  # nothing moved


def test_a_file_that_is_no_database_is_refused_not_moved(tmp_path, monkeypatch, capsys):
    db = tmp_path / "mlflow.db"
    db.write_text("not a database, a user's notes\n" * 100)
    with pytest.raises(locks.StoreBroken, match="not a readable SQLite database"):
        locks.ready_store(f"sqlite:///{db}")
    assert db.read_text().startswith("not a database") and not list(tmp_path.glob("*.broken-*"))


@pytest.mark.slow  # MLflow waits out SQLite's busy timeout (about 20 s) before it fails
def test_a_locked_store_is_refused_not_moved(tmp_path):
    db = tmp_path / "mlflow.db"
    locks.ready_store(f"sqlite:///{db}")
    holder = sqlite3.connect(db, timeout=0)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another process writing, as far as this one sees
        with pytest.raises(locks.StoreBroken, match="locked by another process"):
            locks.ready_store(f"sqlite:///{db}")
    finally:
        holder.rollback()
        holder.close()
    assert not list(tmp_path.glob("*.broken-*"))
