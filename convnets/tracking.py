"""MLflow tracking: where runs go, what they record, and how a run is found again.

Store: ``MLFLOW_TRACKING_URI`` if set, else SQLite ``mlflow.db`` at the repository root through an
absolute ``sqlite:///`` URI, with artifacts under ``mlartifacts/`` (MLflow 3 refuses the old
``./mlruns`` file store, so none is ever created). SQLite costs milliseconds per call, so a run
logs once per epoch, in one batched call.

What a run records (the analysis package reads exactly this):

* tags: experiment, claim, citation, group, variant, baseline, paper_error, expected, seed,
  profile, config_hash, dataset, dataset_label, dataset_checksum, eval_split, lr_source,
  git_commit, git_dirty, torch_version, cuda_version, device, precision (+ failure_reason and
  failure_kind on failure);
* params: the resolved config, flattened with dots (``optim.lr``), and ``resolved.*``: what the
  trainer actually used (``RunResult.info``: batch sizes, iterations, world size ...);
* metrics per epoch at step = iteration: train_loss, train_error, test_error | val_error, lr,
  images_per_sec, epoch_time_s, epoch; final: final_test_error | final_val_error,
  final_train_error, final_train_loss, wall_time_s. Errors are in percent;
* artifacts: config.yaml, curve.csv, predictions.npz (``pred`` and ``target``), and
  ``provenance/git.diff`` when the tree was dirty (``git diff HEAD`` + the untracked files);
* inputs: the data set (``mlflow.log_input``): name = the table label, e.g. "CIFAR-10 (JPEG q75
  copy)", digest = our checksum, source = data name and folder, context "train+test" (or
  "train+val"), so the runs table's Dataset column is filled and can be filtered.
* description (`mlflow.note.content`) of a finished run: group / variant, seed, profile, the
  model that trained, the data set and the paper number.

Experiments carry ``mlflow.experimentKind = custom_model_development`` (MLflow 3 then opens them
in its model-training view, not the GenAI one) and, from ``experiments run``, a description
(``mlflow.note.content``) with the claim, the citation and the paper's numbers. Run names say
what ran, most telling part first: ``identity | s0 | cifar_resnet-8 | smoke``.

Every run goes through one lifecycle, :class:`TrackedRun` (the runner, the torchrun entry and
the lr-search trials): ``start`` (new, or resume by run id), ``finish`` (result tags,
``resolved.*`` params, final metrics and artifacts, stale failure tags cleared) or ``fail``.
The tag, metric and artifact names are those of :mod:`convnets.names`, which analysis reads.
"""

from __future__ import annotations

import csv
import getpass
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from convnets import names
from convnets.names import REPO_ROOT, tracking_uri
from convnets.results import DeadlineReached, DivergedError

# mlflow is imported inside the functions that use it: it takes over a second to import, and
# commands that never open a store (list, --dry-run, shifts, tables from the ledger) skip it.

_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call


def artifact_root() -> str:
    return os.environ.get("CONVNETS_ARTIFACTS") or (REPO_ROOT / "mlartifacts").as_uri()


class StoreUnreachable(RuntimeError):
    """The MLflow store named by the tracking URI cannot be reached."""


def check_store(uri: str | None = None, timeout: float = 5.0) -> None:
    """Fail within seconds, in one line, when the tracking server is down: MLflow's own client
    retries for minutes (253 s measured) before a 100-line traceback. A SQLite or file store
    is created on first use and needs no check."""
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered: a server is there (auth and paths are MLflow's business)
    except (urllib.error.URLError, OSError) as err:
        why = getattr(err, "reason", err)
        raise StoreUnreachable(f"the MLflow tracking server {uri} ({names.TRACKING_URI_ENV}) "
                               f"cannot be reached: {why}") from None


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
    """What the config builds, e.g. ``cifar_resnet-8``, ``cifar_resnet-8 plain`` or
    ``resnet110 unit=full_preact``: the name, the depth, then each option that is not the
    builder's default (true flags by name), so a label tells two networks apart."""
    from convnets.models import get_entry, model_identity

    opts = model.get("options") or {}
    label = model["name"] + (f"-{opts['depth']}" if "depth" in opts else "")
    try:
        fixed = get_entry(model["name"]).fixed
        opts = model_identity(model["name"], opts)["options"]
    except KeyError:  # not a registered name: every option as given
        fixed = {}
    rest = [k if v is True else f"{k}={v}" for k, v in opts.items()
            if k != "depth" and k not in fixed]
    return " ".join([label, *rest])


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
        commit = _git("rev-parse", "HEAD").strip()
        return commit, bool(_git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("CONVNETS_GIT_COMMIT", "unknown"), None


def environment_tags() -> dict[str, str]:
    commit, dirty = git_info()
    values = (commit, "unknown" if dirty is None else str(dirty).lower(), torch.__version__,
              str(torch.version.cuda))
    return dict(zip(names.ENVIRONMENT_TAGS, values, strict=True))


def source_tags(env: dict) -> dict[str, str]:
    """MLflow's own provenance tags, which its UI shows as *Source*, *Created by* and the
    commit (a client-created run has none of them): the command line that started the run
    (``python -m experiments run degradation --profile paper ...``; a worker process carries
    its runner's), the user, the git commit."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    prog = Path(sys.argv[0] or "python")
    command = (["python", "-m", prog.parent.name] if prog.name == "__main__.py"
               else [prog.name])
    out = {"mlflow.source.type": "LOCAL", "mlflow.user": user,
           "mlflow.source.name": shlex.join([*command, *sys.argv[1:]])[:1000]}
    if env.get("git_commit") not in (None, "", "unknown"):
        out["mlflow.source.git.commit"] = env["git_commit"]
    return out


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, check=True, capture_output=True,
                          text=True, timeout=30).stdout


def git_diff() -> str | None:
    """What a dirty tree adds to its commit: ``git diff HEAD`` (tracked changes, staged or not)
    and the untracked files git does not ignore (listed; their content is not copied). None
    for a clean tree, without git, or with ``$CONVNETS_GIT_DIFF=off`` (the test suite's
    throwaway stores)."""
    if os.environ.get("CONVNETS_GIT_DIFF", "").lower() in ("off", "0", "false"):
        return None
    try:
        diff = _git("diff", "HEAD")
        untracked = _git("ls-files", "--others", "--exclude-standard").splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    if not diff and not untracked:
        return None
    head = "".join(f"# untracked: {u}\n" for u in untracked)
    return head + diff


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def find_runs(cl, config_hashes, seed: int, profile: str,
              exp_ids: list[str] | None = None) -> list:
    """Runs of this config, seed and profile, newest first: under any of ``config_hashes``
    (today's key, then the keys earlier hash rules gave the same config), in every experiment
    of the store unless ``exp_ids`` (a network two specs name is one run; two profiles that
    resolve to one config still count apart)."""
    if isinstance(config_hashes, str):
        config_hashes = [config_hashes]
    ids = exp_ids or [e.experiment_id for e in cl.search_experiments(max_results=50000)]
    runs = []
    for h in dict.fromkeys(config_hashes):
        runs += cl.search_runs(
            ids, filter_string=(f"tags.config_hash = '{h}' and tags.seed = '{seed}' "
                                f"and tags.profile = '{profile}'"),
            order_by=["attributes.start_time DESC"])
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id), reverse=True)


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
        from mlflow.exceptions import MlflowException

        data = cfg.get("data") or {}
        source = {"name": data.get("name", info.get("dataset", "")),
                  "data_dir": str(data.get("data_dir") or "")}
        ds = Dataset(name=str(info.get("dataset_label") or info.get("dataset") or "unknown"),
                     digest=str(info.get("dataset_checksum") or "unknown")[:36],
                     source_type="convnets", source=json.dumps(source),
                     profile=json.dumps({"eval_split": split}))
        # one input per (name, digest) is kept by MLflow, so the context names both splits
        tag = InputTag("mlflow.data.context", f"train+{split}")
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, datasets=[DatasetInput(ds, [tag])])
                return
            except MlflowException as err:
                # Two runners finishing at once both find the data set missing from the
                # experiment and insert it; the loser's insert breaks the store's unique key
                # (experiment, name, digest). Again, it finds the winner's row and links it.
                if "unique constraint" not in str(err).lower() or attempt == 2:
                    raise

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
            (tmp / names.CONFIG_ARTIFACT).write_text(yaml.safe_dump(cfg, sort_keys=False))
            split = result.eval_split
            cols = names.curve_columns(split)
            with open(tmp / names.CURVE_ARTIFACT, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
                w.writeheader()
                w.writerows(result.history)
            top = max(result.predictions.max(initial=0), result.targets.max(initial=0))
            dtype = np.uint8 if top < 256 else np.int32
            np.savez_compressed(tmp / names.PREDICTIONS_ARTIFACT, pred=result.predictions.astype(dtype),
                                target=result.targets.astype(dtype))
            for name in (names.CONFIG_ARTIFACT, names.CURVE_ARTIFACT, names.PREDICTIONS_ARTIFACT):
                self.client.log_artifact(self.run_id, str(tmp / name))

    def log_text(self, text: str, artifact: str) -> None:
        """``text`` as the artifact ``artifact`` (a path such as ``provenance/git.diff``)."""
        folder, _, name = artifact.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / name).write_text(text)
            self.client.log_artifact(self.run_id, str(Path(tmp) / name), folder or None)

    def delete_tags(self, keys) -> None:
        run_tags = self.client.get_run(self.run_id).data.tags
        for key in keys:
            if key in run_tags:
                self.client.delete_tag(self.run_id, key)

    def finish(self, status: names.RunStatus = names.RunStatus.FINISHED) -> None:
        self.client.set_terminated(self.run_id, status=status)


# ---------------------------------------------------------------------------------------------
# The run lifecycle
# ---------------------------------------------------------------------------------------------

PROVENANCE_DIFF = "provenance/git.diff"


class Terminated(KeyboardInterrupt):
    """Raised by the runner's SIGTERM handler: a KeyboardInterrupt, so every path that handles
    Ctrl-C (checkpoint kept, run KILLED, queued jobs cancelled) handles it the same way."""


def failure(err: BaseException) -> tuple[str, str]:
    """(failure kind, reason) of the exception that ended a run: ``diverged`` (non-finite
    loss), ``deadline``, ``interrupted`` (Ctrl-C, SIGTERM) or ``error`` (anything else)."""
    if isinstance(err, DivergedError):
        return names.DIVERGED, str(err)
    if isinstance(err, DeadlineReached):
        return names.DEADLINE, f"{err}; checkpoint kept, rerun to resume"
    if isinstance(err, KeyboardInterrupt):
        why = "SIGTERM" if isinstance(err, Terminated) else "Ctrl-C"
        return names.INTERRUPTED, f"interrupted ({why}); checkpoint kept"
    return names.ERROR, f"{type(err).__name__}: {err}"[:5000]


class TrackedRun:
    """One MLflow run from start to end: the only place runs are created, resumed and ended.

    ``start`` creates a run (tags + environment tags, the config as params, the git diff of a
    dirty tree as ``provenance/git.diff``) or resumes one by id (status RUNNING again);
    ``logger`` is what the trainer logs epochs into; ``finish`` records a ``RunResult`` (result
    tags, ``resolved.*`` params, final metrics, artifacts), clears the failure tags of an earlier
    attempt and ends the run FINISHED; ``fail`` ends it FAILED (diverged, error) or KILLED
    (deadline, interrupted) with ``failure_kind`` and ``failure_reason``.
    """

    def __init__(self, cl, run_id: str, *, resumed: bool = False):
        self.client, self.run_id, self.resumed = cl, run_id, resumed
        self.logger = RunLogger(cl, run_id)

    @classmethod
    def start(cls, cl, exp_id: str, *, run_name: str | None = None, tags: dict | None = None,
              config: dict | None = None, params: dict | None = None,
              run_id: str | None = None) -> TrackedRun:
        """Resume run ``run_id``, or create one in experiment ``exp_id``."""
        if run_id:
            cl.update_run(run_id, status=names.RunStatus.RUNNING)
            return cls(cl, run_id, resumed=True)
        tags = {k: str(v) for k, v in (tags or {}).items()}
        env = environment_tags()
        run = cls(cl, cl.create_run(exp_id, run_name=run_name,
                                    tags={**tags, **env, **source_tags(env)}).info.run_id)
        # where the run stops is its ``horizon`` tag (it moves when the run is extended)
        flat = flatten({k: v for k, v in config.items() if k != names.HORIZON}) if config else {}
        run.logger.log_params({**flat, **(params or {})})
        diff = git_diff()
        if diff is not None:
            run.logger.log_text(diff, PROVENANCE_DIFF)
        return run

    def finish(self, result=None, cfg: dict | None = None, *, tags: dict | None = None,
               metrics: dict | None = None, step: int = 0) -> None:
        """End FINISHED: ``result`` (a ``RunResult`` of config ``cfg``) logged in full, then
        extra ``metrics`` (at ``step``) and ``tags``."""
        if result is not None:
            info = result.info
            self.logger.set_tags({k: v for k, v in info.items() if k in names.RESULT_TAGS})
            params = {f"{names.RESOLVED_PREFIX}{k}": str(v) for k, v in info.items()
                      if k not in names.DATASET_TAGS + (names.HORIZON,)}
            if self.resumed:  # params are written once: a run extended to a later horizon
                # keeps those of its first finish (how it began: the compile trial's choice)
                have = self.client.get_run(self.run_id).data.params
                params = {k: v for k, v in params.items() if k not in have}
            self.logger.log_params(params)
            self.logger.log_result(result, cfg)
        if metrics:
            self.logger.log_epoch(step, metrics)
        if self.resumed:  # from an earlier attempt
            self.logger.delete_tags([names.FAILURE_REASON, names.FAILURE_KIND])
        if tags:
            self.logger.set_tags(tags)
        self.logger.finish(names.RunStatus.FINISHED)

    def fail(self, kind: str, reason: str, *, tags: dict | None = None) -> names.RunStatus:
        """End FAILED, or KILLED for a planned stop (``names.KILLED_KINDS``); returns the
        status. Never raises: a failing store must not hide the error being recorded."""
        status = names.ended_status(kind)
        try:
            self.logger.set_tags({names.FAILURE_REASON: reason, names.FAILURE_KIND: kind,
                                  **(tags or {})})
            self.logger.finish(status)
        except Exception:  # the store itself is failing; the checkpoint is still on disk
            pass
        return status

    def fail_with(self, err: BaseException, *,
                  tags: dict | None = None) -> tuple[names.RunStatus, str]:
        """``fail`` with the kind and reason of ``err``; returns (status, kind)."""
        kind, reason = failure(err)
        return self.fail(kind, reason, tags=tags), kind
