"""Shared fixtures: a throwaway MLflow store and checkpoint folder per test module."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


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
