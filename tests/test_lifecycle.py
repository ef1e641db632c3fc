"""One run lifecycle: the runner, an lr-search trial and the torchrun entry record the same
tag, param and metric keys (``convnets.tracking.TrackedRun``); a dirty tree leaves its diff."""

from __future__ import annotations

import subprocess
import textwrap

import pytest
import yaml

from convnets import names, tracking
from convnets.names import tracking_uri
from tests.test_distributed import _free_port

SPEC = textwrap.dedent(
    """
    name: life
    claim: Tiny claim for the lifecycle test.
    citation: Nobody 2026, Table 0
    recipe:
      data: {name: synthetic, val_size: 16, options: {n_train: 96, n_test: 32, image_size: 8}}
      optim: {lr: 0.05}
      schedule: {unit: epochs, length: 2}
      batch_size: 32
    groups: [{name: G, model: cifar_resnet, baseline: base,
              variants: {base: {options: {depth: 8}, paper: 10.0}}}]
    profiles: {smoke: {seeds: 1}}
    """
)

#: what each caller adds of its own, besides the mlflow.* system tags
SEARCH_TRIAL_TAGS = {"search", "study", "trial_number", "trial_state", "experiment",
                     "search_group", "search_variant", "profile"}
SEARCH_TRIAL_PARAMS = {"lr", "trial_number", "budget_epochs"}
TORCHRUN_TAGS = {"ddp_world_size", "config_source"}
DDP_RESOLVED = {f"{names.RESOLVED_PREFIX}world_size", f"{names.RESOLVED_PREFIX}per_rank_batch"}


def _keys(run, own_tags=(), own_params=()):
    tags = {k for k in run.data.tags if not k.startswith("mlflow.")} - set(own_tags)
    return tags, set(run.data.params) - set(own_params), set(run.data.metrics)


def _only(cl, experiment, filter_string=""):
    exp = cl.get_experiment_by_name(experiment)
    found = cl.search_runs([exp.experiment_id], filter_string=filter_string)
    assert len(found) == 1, [r.info.run_name for r in found]
    return found[0]


@pytest.mark.slow  # > 10 s; `pytest -m slow` runs it
def test_runner_search_and_torchrun_record_the_same_keys(mlflow_store, tmp_path, monkeypatch):
    from convnets.distributed import main as torchrun_main
    from experiments.__main__ import main
    from experiments.lr_search import lr_search
    from experiments.spec import expand, load_spec

    spec = tmp_path / "life.yaml"
    spec.write_text(SPEC)
    (job,) = expand(load_spec(str(spec)), "smoke")
    assert main(["run", str(spec), "--profile", "smoke"]) == 0
    cl = tracking.client()
    runner = _only(cl, "life", "tags.variant = 'base'")

    grid = tmp_path / "grid.yaml"
    grid.write_text("grid: [0.05]\nbudget_epochs: 2\n")
    rows = lr_search(str(spec), "smoke", trials=1, record=False, settings_file=grid,
                     storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert rows[0]["COMPLETE"] == 1
    trial = _only(cl, "life", "tags.trial_state = 'COMPLETE'")

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(job.config))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # main() would otherwise change torch's threads
    for k, v in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0",
                     LOCAL_RANK="0", WORLD_SIZE="1").items():
        monkeypatch.setenv(k, v)
    assert torchrun_main(["--config", str(cfg), "--experiment", "life-ddp",
                          "--no-progress"]) == 0
    ddp = _only(cl, "life-ddp")

    want = _keys(runner, own_tags=[*job.tags, "config_hash"])
    got_trial = _keys(trial, SEARCH_TRIAL_TAGS, SEARCH_TRIAL_PARAMS)
    got_ddp = _keys(ddp, TORCHRUN_TAGS, DDP_RESOLVED)
    for what, a, b, c in zip(("tags", "params", "metrics"), want, got_trial, got_ddp,
                             strict=True):
        assert a == b, (what, "runner vs lr-search trial", a ^ b)
        assert a == c, (what, "runner vs torchrun", a ^ c)
    tags, params, metrics = want
    assert set(names.ENVIRONMENT_TAGS) | set(names.RESULT_TAGS) <= tags
    assert {"resolved.steps_per_epoch", "resolved.total_iterations", "optim.lr"} <= params
    assert {names.final_error("val"), *names.FINAL_METRICS, "lr", "epoch", "val_error"} <= metrics
    for run in (runner, trial, ddp):
        assert run.info.status == "FINISHED"
        files = {a.path for a in cl.list_artifacts(run.info.run_id)}
        assert {names.CURVE_ARTIFACT, names.PREDICTIONS_ARTIFACT} <= files, files


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_a_dirty_tree_logs_its_diff_and_untracked_files(mlflow_store, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("ignored.txt\n")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    monkeypatch.setattr(tracking, "REPO_ROOT", repo)
    monkeypatch.setenv("CONVNETS_GIT_DIFF", "on")
    cl = tracking.client()
    exp_id = tracking.experiment_id(cl, "provenance")

    clean = tracking.TrackedRun.start(cl, exp_id, run_name="clean", tags={"k": "v"})
    assert cl.get_run(clean.run_id).data.tags["git_dirty"] == "false"
    assert not cl.list_artifacts(clean.run_id, "provenance")

    (repo / "a.py").write_text("x = 2\n")
    (repo / "new.py").write_text("y = 3\n")
    (repo / "ignored.txt").write_text("no\n")
    dirty = tracking.TrackedRun.start(cl, exp_id, run_name="dirty", config={"a": {"b": 1}})
    run = cl.get_run(dirty.run_id)
    assert run.data.tags["git_dirty"] == "true" and run.data.params["a.b"] == "1"
    import mlflow

    path = mlflow.artifacts.download_artifacts(
        run_id=dirty.run_id, artifact_path=tracking.PROVENANCE_DIFF, dst_path=str(tmp_path / "d"),
        tracking_uri=tracking_uri())
    text = open(path).read()
    assert "# untracked: new.py" in text and "ignored.txt" not in text
    assert "-x = 1" in text and "+x = 2" in text
    dirty.finish()
    assert cl.get_run(dirty.run_id).info.status == "FINISHED"


def test_fail_ends_failed_or_killed_and_a_resumed_finish_clears_the_reason(mlflow_store):
    cl = tracking.client()
    exp_id = tracking.experiment_id(cl, "lifecycle")
    run = tracking.TrackedRun.start(cl, exp_id, run_name="r")
    assert run.fail(names.DEADLINE, "deadline reached") == "KILLED"
    tags = cl.get_run(run.run_id).data.tags
    assert (tags[names.FAILURE_KIND], tags[names.FAILURE_REASON]) == ("deadline",
                                                                      "deadline reached")
    again = tracking.TrackedRun.start(cl, exp_id, run_id=run.run_id)
    assert cl.get_run(run.run_id).info.status == "RUNNING"
    again.finish(metrics={"m": 1.0})
    got = cl.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.metrics["m"] == 1.0
    assert not {names.FAILURE_KIND, names.FAILURE_REASON} & set(got.data.tags)
    other = tracking.TrackedRun.start(cl, exp_id, run_name="x")
    assert other.fail(names.DIVERGED, "loss is nan") == "FAILED"
    stopped = tracking.TrackedRun.start(cl, exp_id, run_name="y")
    assert stopped.fail_with(tracking.Terminated("signal 15")) == ("KILLED", names.INTERRUPTED)
    assert cl.get_run(stopped.run_id).data.tags[names.FAILURE_REASON] == \
        "interrupted (SIGTERM); checkpoint kept"
