"""File locks of the runner: one process trains a run (``claim``), one process creates a store.

Both are ``flock`` locks on small files. The kernel drops a lock when its process dies (kill -9,
a crashed node's NFSv4 lease running out), so a dead runner's claim needs no cleaning up and
can never block a run for good. On a cluster the claim files lie beside the checkpoints, on
the shared file system (NFS, and Lustre or GPFS mounted with ``flock``), so N runners on one
machine and N Slurm tasks on several train distinct runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
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
