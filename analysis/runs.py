"""Read runs from the MLflow store or from the committed snapshot into tidy frames.

Nothing here imports the trainer: the MLflow schema (tags, metrics, artifacts) is the contract,
and its names come from ``convnets.names``, the one torch-free module of ``convnets`` that
analysis may import (it is that contract written down, not training code; tracking writes the
same names).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from convnets import names
from convnets.names import RunStatus, data_identity_of, tracking_uri

# mlflow is imported inside the functions that use it: it takes over a second to import, and
# commands that never open a store (list, --dry-run, shifts, tables from the ledger) skip it.

SNAPSHOT_DIR = names.LEDGER_DIR

# the columns of runs.csv, from the one run record (``convnets.names.RUN_RECORD``): the tags a
# row reads from its run, then the columns of each type
RUN_COLUMNS = [f.name for f in names.RUN_RECORD]
TAG_COLS = [f.name for f in names.RUN_RECORD if f.name in names.RECORD_TAGS and f.kind == "str"]
STR_COLS = [f.name for f in names.RUN_RECORD if f.kind == "str"]
FLOAT_COLS = [f.name for f in names.RUN_RECORD if f.kind == "float"]
INT_COLS = [f.name for f in names.RUN_RECORD if f.kind == "int"]
BOOL_COLS = [f.name for f in names.RUN_RECORD if f.kind == "bool"]
CURVE_COLUMNS = ["run_id", *names.CURVE_COLUMNS]


@dataclass
class RunData:
    """Everything the tables and figures need; comes from MLflow or from the snapshot."""

    runs: pd.DataFrame
    curves: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CURVE_COLUMNS))
    preds: dict[str, np.ndarray] = field(default_factory=dict)  # run id -> predicted labels
    targets: dict[str, np.ndarray] = field(default_factory=dict)  # run id -> true labels
    parts: dict[str, dict] = field(default_factory=dict)  # ledger part id -> its manifest
    #: config hash -> the resolved config its runs trained (``configs.json`` of a part), so a
    #: later change of the hash rule can be recomputed from the part itself
    configs: dict[str, dict] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)  # runs counted once (ledger warnings)


def normalise_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Cast every column explicitly (MLflow tags and CSV cells are strings) and sort stably."""
    df = df.reindex(columns=RUN_COLUMNS).copy()
    for c in STR_COLS:
        df[c] = df[c].astype(object).fillna("").astype(str)
    for c in FLOAT_COLS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    for c in INT_COLS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in BOOL_COLS:
        df[c] = df[c].astype(str).str.lower().isin(["true", "1"])
    return df.sort_values(["experiment", "start_time", "run_id"], ignore_index=True)


def _client(uri: str):
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise FileNotFoundError(f"no MLflow store at {uri}; use the snapshot (--source snapshot)")
    return MlflowClient(uri)


def _all_runs(client, experiment_id: str):
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _row(client, run, experiment_name: str) -> dict:
    tags, metrics = run.data.tags, run.data.metrics
    split = tags.get("eval_split") or ("val" if names.final_error("val") in metrics else "test")
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    art = run.info.artifact_uri.rstrip("/")
    row = {c: tags.get(c, "") for c in TAG_COLS}
    row.update(
        experiment=tags.get("experiment") or experiment_name,
        seed=tags.get("seed"), git_dirty=tags.get("git_dirty", ""), status=run.info.status,
        final_error=metrics.get(names.final_error(split)),
        **{m: metrics.get(m) for m in names.FINAL_METRICS},
        total_iterations=run.data.params.get(f"{names.RESOLVED_PREFIX}total_iterations", ""),
        run_id=run.info.run_id, run_name=run.info.run_name or "",
        start_time=pd.Timestamp(run.info.start_time, unit="ms", tz="UTC").isoformat(),
        curve_uri=f"{art}/{names.CURVE_ARTIFACT}" if names.CURVE_ARTIFACT in files else "",
        predictions_uri=(f"{art}/{names.PREDICTIONS_ARTIFACT}"
                         if names.PREDICTIONS_ARTIFACT in files else ""),
    )
    return row


def collect(uri: str | None = None) -> pd.DataFrame:
    """One row per ended run with the runner's tags: FINISHED, FAILED and KILLED (RUNNING ones
    are still going: not yet anything).

    A FAILED run stays a row: one that diverged is a result (failure_kind 'diverged', or no
    failure_kind); one that crashed (failure_kind 'error') is left out of the tables, which
    count it, as they count a KILLED run (stopped by a deadline or a signal, unfinished), in
    their account of every planned run.
    """
    client = _client(uri or tracking_uri())
    ended = (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED)
    rows = [_row(client, run, exp.name)
            for exp in client.search_experiments()
            for run in _all_runs(client, exp.experiment_id)
            if run.info.status in ended and "variant" in run.data.tags]
    return normalise_runs(pd.DataFrame(rows, columns=RUN_COLUMNS))


def _download(artifact_uri: str, uri: str, dst: str) -> Path:
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=dst,
                                                    tracking_uri=uri))


def _curve(path: Path, run_id: str) -> pd.DataFrame:
    df = pd.read_csv(path).rename(columns={names.eval_error(s): names.EVAL_ERROR
                                           for s in ("test", "val")})
    return df.assign(run_id=run_id).reindex(columns=CURVE_COLUMNS)


def load_mlflow(uri: str | None = None, keep=None) -> RunData:
    """Runs, their curves and their test-set predictions, straight from the store; ``keep``
    (runs -> boolean mask) picks the runs before any artifact is read."""
    uri = uri or tracking_uri()
    runs = collect(uri)
    data = RunData(runs if keep is None else runs[keep(runs)].reset_index(drop=True))
    curves = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, r in enumerate(data.runs.itertuples()):
            if r.curve_uri:
                curves.append(_curve(_download(r.curve_uri, uri, f"{tmp}/{i}c"), r.run_id))
            if r.predictions_uri:
                with np.load(_download(r.predictions_uri, uri, f"{tmp}/{i}p")) as npz:
                    data.preds[r.run_id] = np.asarray(npz["pred"])
                    data.targets[r.run_id] = np.asarray(npz["target"])
        for i, r in enumerate(data.runs.drop_duplicates("config_hash").itertuples()):
            if r.curve_uri:  # the run's artifacts: config.yaml sits beside curve.csv
                uri_cfg = r.curve_uri.rsplit("/", 1)[0] + f"/{names.CONFIG_ARTIFACT}"
                try:
                    text = _download(uri_cfg, uri, f"{tmp}/{i}y").read_text()
                except Exception:  # an older run without config.yaml
                    continue
                data.configs[r.config_hash] = portable_config(yaml.safe_load(text), r)
    if curves:
        data.curves = pd.concat(curves, ignore_index=True)
    return data


def portable_config(cfg: dict, run) -> dict:
    """A run's resolved config with nothing of the machine it ran on: no data folder, and an
    image folder named by its content checksum instead of its path."""
    data = cfg.get("data") or {}
    name = data_identity_of(data.get("name", ""), run.dataset_checksum)
    return dict(cfg, data=dict(data, data_dir=None, name=name))


def _target_key(run) -> str:
    return f"target__{run.dataset}__{run.eval_split}"


def export_snapshot(data: RunData, out: Path = SNAPSHOT_DIR) -> list[Path]:
    """runs.csv, curves.csv and one compressed predictions.npz (uint8 per run, shared targets)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data.runs.to_csv(out / "runs.csv", index=False)
    data.curves.reindex(columns=CURVE_COLUMNS).to_csv(out / "curves.csv", index=False,
                                                       float_format="%.6g")
    arrays: dict[str, np.ndarray] = {}
    for run in data.runs.itertuples():
        if run.run_id not in data.preds:
            continue
        pred, target = data.preds[run.run_id], data.targets[run.run_id]
        dtype = np.uint8 if max(pred.max(initial=0), target.max(initial=0)) < 256 else np.uint16
        arrays[f"pred__{run.run_id}"] = pred.astype(dtype)
        key = _target_key(run)
        if key not in arrays:
            arrays[key] = target.astype(dtype)
        elif not np.array_equal(arrays[key], target):  # a different test set: keep its own targets
            arrays[f"target__{run.run_id}"] = target.astype(dtype)
    np.savez_compressed(out / "predictions.npz", **arrays)
    files = [out / "runs.csv", out / "curves.csv", out / "predictions.npz"]
    if data.configs:
        (out / "configs.json").write_text(json.dumps(data.configs, indent=1, sort_keys=True)
                                          + "\n")
        files.append(out / "configs.json")
    return files


def load_snapshot(path: Path = SNAPSHOT_DIR) -> RunData:
    path = Path(path)
    if not (path / "runs.csv").exists():
        raise FileNotFoundError(f"no snapshot at {path}; run `python -m analysis export` first")
    runs = normalise_runs(pd.read_csv(path / "runs.csv", dtype=str, keep_default_na=False))
    data = RunData(runs)
    if (path / "curves.csv").exists():
        data.curves = pd.read_csv(path / "curves.csv", dtype={"run_id": str})
    if (path / "configs.json").exists():
        data.configs = json.loads((path / "configs.json").read_text())
    if (path / "predictions.npz").exists():
        with np.load(path / "predictions.npz") as npz:
            for run in runs.itertuples():
                if f"pred__{run.run_id}" in npz.files:
                    data.preds[run.run_id] = npz[f"pred__{run.run_id}"].astype(np.int64)
                    own = f"target__{run.run_id}"
                    key = own if own in npz.files else _target_key(run)
                    data.targets[run.run_id] = npz[key].astype(np.int64)
    return data


def log_to_analysis_run(uri: str, experiment: str, paths: list[Path]) -> str | None:
    """Log files as artifacts of the run named `analysis` in `experiment` (reused if present)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    found = client.search_runs([exp.experiment_id], "attributes.run_name = 'analysis'",
                               max_results=1)
    run_id = (found[0] if found else client.create_run(
        exp.experiment_id, run_name="analysis", tags={"analysis": "true"})).info.run_id
    for p in paths:
        sub = "figures" if p.suffix in (".png", ".pdf") else "tables"
        client.log_artifact(run_id, str(p), artifact_path=sub)
    client.set_terminated(run_id)
    return run_id
