"""MLflow tracking: where runs go, what they record, and how a run is found again.

Store: ``MLFLOW_TRACKING_URI`` if set, else SQLite ``mlflow.db`` at the repository root through an
absolute ``sqlite:///`` URI, with artifacts under ``mlartifacts/`` (MLflow 3 refuses the old
``./mlruns`` file store, so none is ever created). SQLite costs milliseconds per call, so a run
logs once per epoch, in one batched call.

What a run records (the analysis package reads exactly this):

* tags: experiment, claim, citation, group, variant, baseline, paper_error, expected, seed,
  profile, config_hash, dataset, dataset_label, dataset_checksum, eval_split, lr_source,
  git_commit, git_dirty, torch_version, cuda_version, device (+ failure_reason on failure);
* params: the resolved config, flattened with dots (``optim.lr``);
* metrics per epoch at step = iteration: train_loss, train_error, test_error | val_error, lr,
  images_per_sec, epoch_time_s, epoch; final: final_test_error | final_val_error,
  final_train_error, final_train_loss, wall_time_s. Errors are in percent;
* artifacts: config.yaml, curve.csv, predictions.npz (``pred`` and ``target``);
* inputs: the data set (``mlflow.log_input``): name = the table label, e.g. "CIFAR-10 (JPEG q75
  copy)", digest = our checksum, source = data name and folder, context "train+test" (or
  "train+val"), so the runs table's Dataset column is filled and can be filtered.
* description (`mlflow.note.content`) of a finished run: group / variant, seed, profile, the
  model that trained, the data set and the paper number.

Experiments carry ``mlflow.experimentKind = custom_model_development`` (MLflow 3 then opens them
in its model-training view, not the GenAI one) and, from ``experiments run``, a description
(``mlflow.note.content``) with the claim, the citation and the paper's numbers. Run names say
what ran, most telling part first: ``identity | s0 | cifar_resnet-8 | smoke``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def artifact_root() -> str:
    return os.environ.get("CONVNETS_ARTIFACTS") or (REPO_ROOT / "mlartifacts").as_uri()


def client():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"


def experiment_id(cl, name: str, tags: dict[str, str] | None = None) -> str:
    """The id of experiment ``name``, created (with artifacts under ``artifact_root``) if new;
    an experiment made before the kind tag existed gets it now."""
    exp = cl.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(KIND_TAG) != KIND:
            cl.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
        return exp.experiment_id
    try:
        return cl.create_experiment(name, artifact_location=f"{artifact_root()}/{name}",
                                    tags={**(tags or {}), KIND_TAG: KIND})
    except Exception:  # another process created it first
        exp = cl.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def experiment_note(spec: dict) -> str:
    """Markdown description of a claim's experiment: claim, citation, paper numbers, and the
    search strings that give the comparison view in the runs table."""
    lines = [f"Claim: {' '.join(spec['claim'].split())}", "",
             f"Source: {' '.join(spec['citation'].split())}", "",
             "Paper's test error (%), baseline first in each group:", ""]
    for group in spec["groups"]:
        base = group["baseline"]
        order = [base, *(v for v in group["variants"] if v != base)]
        cells = []
        for v in order:
            paper = (group["variants"][v] or {}).get("paper")
            cells.append(f"{v} {'no number' if paper is None else paper}"
                         + (" (baseline)" if v == base else ""))
        lines.append(f"- {group['name']}: " + "; ".join(cells))
    first = spec["groups"][0]
    other = next((v for v in first["variants"] if v != first["baseline"]), first["baseline"])
    lines += ["", "Compare in the runs table: search, e.g., "
              f"`tags.group = '{first['name']}' and tags.profile = 'paper'`, or one variant "
              f"`tags.variant = '{other}'`; sort by `metrics.final_test_error` (or "
              "`final_val_error`). 'fail' means the paper reports > 20% error."]
    return "\n".join(lines)


def describe_experiment(cl, exp_id: str, spec: dict) -> None:
    """Set the experiment's description (``mlflow.note.content``) from its spec."""
    note = experiment_note(spec)
    if cl.get_experiment(exp_id).tags.get(NOTE_TAG) != note:
        cl.set_experiment_tag(exp_id, NOTE_TAG, note)


def model_label(model: dict) -> str:
    """What the config builds, e.g. ``cifar_resnet-8`` or ``cifar_resnet-8 plain``."""
    opts = model.get("options") or {}
    label = model["name"] + (f"-{opts['depth']}" if "depth" in opts else "")
    flags = [k for k, v in opts.items() if v is True]
    return " ".join([label, *flags])


def run_name(variant: str, seed: int, model: dict, profile: str) -> str:
    """Variant first (the table truncates names), then seed, the model that actually ran
    (a smoke profile swaps ResNet-110 for a depth-8 net) and the profile when not ``paper``."""
    parts = [variant, f"s{seed}", model_label(model)]
    return " | ".join(parts + ([profile] if profile and profile != "paper" else []))


def run_note(tags: dict, cfg: dict, info: dict) -> str:
    """The run's description: what it is in the claim and what actually trained on what."""
    paper = tags.get("paper_error") or "no number"
    paper = "fail (> 20%)" if paper == "fail" else paper
    return (f"{tags.get('group', '')} / {tags.get('variant', '')}, seed {tags.get('seed', '')}, "
            f"{tags.get('profile', '')} profile: {model_label(cfg['model'])} on "
            f"{info.get('dataset_label') or info.get('dataset', '?')}. Paper: {paper}; "
            f"baseline: {tags.get('baseline', '')}.")


def git_info() -> tuple[str, bool | None]:
    """(commit, dirty) from ``git``, else ``$CONVNETS_GIT_COMMIT``, else "unknown"."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=REPO_ROOT, check=True, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        return commit, bool(status)
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("CONVNETS_GIT_COMMIT", "unknown"), None


def environment_tags() -> dict[str, str]:
    commit, dirty = git_info()
    return {
        "git_commit": commit,
        "git_dirty": "unknown" if dirty is None else str(dirty).lower(),
        "torch_version": torch.__version__,
        "cuda_version": str(torch.version.cuda),
    }


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def find_runs(cl, exp_id: str, config_hash: str, seed: int, profile: str) -> list:
    """Runs of this config, seed and profile, newest first (two profiles can resolve to the
    same config; their runs are still counted apart)."""
    return cl.search_runs(
        [exp_id],
        filter_string=(f"tags.config_hash = '{config_hash}' and tags.seed = '{seed}' "
                       f"and tags.profile = '{profile}'"),
        order_by=["attributes.start_time DESC"],
    )


class RunLogger:
    """Batched logging into one MLflow run (the trainer calls ``log_epoch`` once per epoch)."""

    def __init__(self, cl, run_id: str):
        self.client, self.run_id = cl, run_id

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()]
        )

    def log_dataset(self, info: dict, cfg: dict, split: str) -> None:
        """The data set as a run input (``mlflow.log_input``), context ``train+test`` or
        ``train+val``."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        data = cfg.get("data") or {}
        source = {"name": data.get("name", info.get("dataset", "")),
                  "data_dir": str(data.get("data_dir") or "")}
        ds = Dataset(name=str(info.get("dataset_label") or info.get("dataset") or "unknown"),
                     digest=str(info.get("dataset_checksum") or "unknown")[:36],
                     source_type="convnets", source=json.dumps(source),
                     profile=json.dumps({"eval_split": split}))
        # one input per (name, digest) is kept by MLflow, so the context names both splits
        tag = InputTag("mlflow.data.context", f"train+{split}")
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(ds, [tag])])

    def log_result(self, result, cfg: dict) -> None:
        """Final metrics, the data set input and the artifacts: resolved config, curve CSV,
        predictions."""
        self.log_epoch(result.history[-1]["iteration"], result.final)
        self.log_dataset(result.info, cfg, result.eval_split)
        tags = self.client.get_run(self.run_id).data.tags
        if "variant" in tags and NOTE_TAG not in tags:
            self.set_tags({NOTE_TAG: run_note(tags, cfg, result.info)})
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            split = result.eval_split
            cols = ["epoch", "iteration", "train_loss", "train_error", f"{split}_error", "lr",
                    "images_per_sec", "epoch_time_s"]
            with open(tmp / "curve.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
                w.writeheader()
                w.writerows(result.history)
            top = max(result.predictions.max(initial=0), result.targets.max(initial=0))
            dtype = np.uint8 if top < 256 else np.int32
            np.savez_compressed(tmp / "predictions.npz", pred=result.predictions.astype(dtype),
                                target=result.targets.astype(dtype))
            for name in ("config.yaml", "curve.csv", "predictions.npz"):
                self.client.log_artifact(self.run_id, str(tmp / name))

    def delete_tags(self, keys) -> None:
        run_tags = self.client.get_run(self.run_id).data.tags
        for key in keys:
            if key in run_tags:
                self.client.delete_tag(self.run_id, key)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
