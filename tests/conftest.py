"""Shared fixtures: a throwaway MLflow store and checkpoint folder per test module."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

_BEFORE = pytest.StashKey[dict]()

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

REPO = Path(__file__).resolve().parents[1]
#: what a user's own work leaves in the repository; the suite must never create or change it
USER_STATE = ("mlflow.db", "optuna.db", "optuna.journal", "mlartifacts", "mlruns", "checkpoints")
_ISOLATED = tempfile.mkdtemp(prefix="convnets-tests-")


def _fingerprint() -> dict[str, tuple]:
    out = {}
    for name in USER_STATE:
        path = REPO / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) \
            if path.is_dir() else []
        out[name] = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files) \
            if path.exists() else None
    return out


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """A ``bf16_cpu`` test trains in bf16 autocast on the CPU. Where the CPU has no native bf16
    that runs emulated, 6-7x slower than fp32, on a path ``precision: auto`` never takes there:
    such a test counts as ``slow`` on that CPU (``make test`` skips it, ``pytest -m slow`` runs
    it). Runs before the ``-m`` selection (tryfirst)."""
    from convnets.runtime import cpu_has_bf16

    if cpu_has_bf16():
        return
    for item in items:
        if item.get_closest_marker("bf16_cpu"):
            item.add_marker(pytest.mark.slow)


def pytest_sessionstart(session):
    """Every store a test opens without its own fixture lands in a throwaway folder, never in
    the user's ``mlflow.db`` / ``optuna.db`` (a test once wrote an experiment there)."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_ISOLATED}/mlflow.db"
    os.environ["CONVNETS_ARTIFACTS"] = Path(_ISOLATED, "artifacts").as_uri()
    os.environ["CONVNETS_CHECKPOINTS"] = str(Path(_ISOLATED, "checkpoints"))
    os.environ["OPTUNA_STORAGE"] = f"sqlite:///{_ISOLATED}/optuna.db"
    session.config.stash[_BEFORE] = _fingerprint()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if the suite created or changed the user's stores in the repository."""
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    changed = [n for n, fp in _fingerprint().items() if fp != before[n]]
    if changed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nFAILED: the test suite created or changed the user's {', '.join(changed)} in "
              f"{REPO}; tests must use their own store", file=sys.stderr)
    shutil.rmtree(_ISOLATED, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """Point tracking, artifacts and checkpoints at a temporary folder for one test module."""
    root = tmp_path_factory.mktemp("store")
    saved = {k: os.environ.get(k) for k in
             ("MLFLOW_TRACKING_URI", "CONVNETS_ARTIFACTS", "CONVNETS_CHECKPOINTS",
              "CONVNETS_GIT_DIFF")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["CONVNETS_ARTIFACTS"] = (root / "artifacts").as_uri()
    os.environ["CONVNETS_CHECKPOINTS"] = str(root / "checkpoints")
    # runs record the same artifacts from a clean or a dirty checkout (test_lifecycle.py turns
    # the git diff of a dirty tree back on)
    os.environ["CONVNETS_GIT_DIFF"] = "off"
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
