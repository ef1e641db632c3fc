"""File locks of the runner: one process trains a run (``claim``), one process creates a store.

Both are ``flock`` locks on small files. The kernel drops a lock when its process dies (kill -9,
a crashed node's NFSv4 lease running out), so a dead runner's claim needs no cleaning up and
can never block a run for good. The claim files lie with the store the results go to
(``experiments.runner.claims_dir``), on the shared file system on a cluster (NFS, and Lustre
or GPFS mounted with ``flock``), so N runners on one machine and N Slurm tasks on several train
distinct runs, whatever their checkpoint folders.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def first_use_lock(url: str):
    """Hold an exclusive lock beside a SQLite database while a store opens it.

    Optuna and MLflow both create their schema (and run their migrations) on the first open;
    two processes opening a fresh file at once both try, and the second dies (``UNIQUE
    constraint failed: alembic_version.version_num``, ``duplicate column name``). The lock is
    a separate ``<db>.init-lock`` file: locking the database file itself would be wrong, since
    closing any descriptor of it drops the POSIX locks SQLite holds in this process. Database
    servers (PostgreSQL) and journals need no lock."""
    m = re.match(r"^sqlite:///(.+)$", url)
    if not m or m.group(1) in (":memory:", ""):
        yield
        return
    lock = Path(m.group(1)).with_name(Path(m.group(1)).name + ".init-lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class StoreBroken(RuntimeError):
    """The SQLite MLflow store does not open and holds runs: nothing repairs it silently."""


def _sqlite_path(url: str) -> Path | None:
    m = re.match(r"^sqlite:///(.+)$", url)
    return Path(m.group(1)) if m and m.group(1) not in ("", ":memory:") else None


@contextlib.contextmanager
def _quiet_mlflow_db():
    """MLflow's database module logs its table creation (INFO) and the SQL error of a damaged
    schema with its traceback (ERROR); ``ready_store`` says what matters in one line."""
    log = logging.getLogger("mlflow.store.db.utils")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _create_store(db: Path) -> None:
    """Create MLflow's schema in the SQLite file ``db`` (its migrations run on first open)."""
    from mlflow.tracking import MlflowClient

    with _quiet_mlflow_db():
        MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)


def _why_broken(db: Path) -> str | None:
    """None if the store opens; else MLflow's reason, in one line. MLflow keeps one engine
    (with open connections) per URI for the life of the process, so the probe opens the file
    under another spelling of its path: a store moved aside and created again is then reached
    afresh under the real URI, never through a connection to the old file."""
    from mlflow.tracking import MlflowClient

    try:
        with _quiet_mlflow_db():
            MlflowClient(f"sqlite:///{db.parent}/./{db.name}").search_experiments(max_results=1)
        return None
    except Exception as err:  # SQLAlchemy and MLflow errors of a damaged schema
        return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _holds_runs(db: Path) -> bool | None:
    """Whether the SQLite file ``db`` holds MLflow runs; None when it cannot be read as a
    database at all (locked by another process, or not a SQLite file)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True,
                                                timeout=5)) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            if "runs" not in tables:
                return False
            return con.execute("SELECT count(*) FROM runs").fetchone()[0] > 0
    except sqlite3.Error:
        return None


def ready_store(url: str) -> None:
    """Make sure the SQLite MLflow store at ``url`` is whole before anything uses it.

    A new store is created aside (``.<name>.creating-<pid>``) and moved into place complete,
    so a first open killed half-way (kill -9, SIGTERM, Ctrl-C while MLflow creates its tables)
    leaves no store at all, and the next start simply creates it. A store left half-created by
    a version that created it in place (it does not open and holds no run) is moved aside as
    ``<name>.broken-<time>`` and created again, saying so; one that does not open but holds
    runs raises ``StoreBroken`` naming the file and what to do. Other stores (a server, a
    file store) are left to MLflow."""
    db = _sqlite_path(url)
    if db is None:
        return
    with first_use_lock(url):
        if db.exists():
            why = _why_broken(db)
            if why is None:
                return
            holds = _holds_runs(db)
            if "locked" in why.lower():
                raise StoreBroken(f"{db}: the MLflow store is locked by another process "
                                  f"({why}); run again when it has finished")
            if holds is None:
                raise StoreBroken(f"{db}: not a readable SQLite database ({why}); move it away "
                                  "or point MLFLOW_TRACKING_URI at another store")
            if holds:
                raise StoreBroken(f"{db}: the MLflow store does not open ({why}) and holds "
                                  "runs; restore it from a copy, or move it away to start a "
                                  "new store (the committed ledger is not affected)")
            aside = db.with_name(f"{db.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(db, aside)
            print(f"{db}: an MLflow store left half-created (no runs; {why}) was moved to "
                  f"{aside.name}; creating it again", file=sys.stderr, flush=True)
        tmp = db.with_name(f".{db.name}.creating-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            _create_store(tmp)
            os.replace(tmp, db)
        finally:
            tmp.unlink(missing_ok=True)


def _owner_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    host, pid, since = info.get("host", "?"), info.get("pid", "?"), info.get("since", "?")
    job = f", Slurm job {info['slurm_job']}" if info.get("slurm_job") else ""
    return f"pid {pid} on {host}{job}, since {since}"


@contextlib.contextmanager
def claim(path: Path) -> Iterator[str | None]:
    """Claim the run whose claim file is ``path`` for this process: yields None when claimed
    (held until the block ends), else who holds it (``pid 123 on host, since ...``).

    The file holds its owner (host, pid, Slurm job, time) for that message. It is removed by
    its owner while still locked, and a process that locked a file no longer at ``path`` (its
    owner removed it in between) tries again, so two processes never both hold a claim."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield _owner_text(path)
            return
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file its owner had just removed: take the new one
    try:
        owner = {"host": socket.gethostname(), "pid": os.getpid(),
                 "slurm_job": os.environ.get("SLURM_JOB_ID", ""),
                 "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(owner).encode())
        yield None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # unlocks
