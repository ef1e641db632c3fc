"""`run --batch-seeds K`: K seeds of one config as one batched network, each with its own
MLflow run, checkpoint, resume and failure (``convnets.multiseed.fit_seeds``)."""

from __future__ import annotations

import functools
import math
import textwrap

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from convnets import multiseed
from convnets.names import tracking_uri
from experiments.__main__ import main
from experiments.spec import expand, load_spec

SPEC = textwrap.dedent(
    """
    name: {name}
    claim: Tiny claim for the batched-seed tests.
    citation: Nobody 2026, Table 0
    recipe:
      data: {{name: synthetic, options: {{n_train: 96, n_test: 32, image_size: 8}}}}
      optim: {{lr: 0.05}}
      schedule: {{unit: epochs, length: 2, drops: [0.5]}}
      batch_size: 32
      runtime: {{precision: fp32}}
    groups: [{{name: G, model: cifar_resnet, baseline: base,
              variants: {{base: {{options: {{depth: 8}}, paper: 10.0}}}}}}]
    profiles: {{smoke: {{seeds: 2}}}}
    """
)


def _spec(tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(name=name))
    return str(path)


def _by_seed(name: str) -> dict:
    runs = mlflow.search_runs(experiment_names=[name], output_format="pandas")
    return {int(r["tags.seed"]): r for _, r in runs.iterrows()}


def _curve(cl, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in cl.get_metric_history(run_id, key))


@pytest.mark.slow  # > 10 s; `pytest -m slow` runs it
def test_batched_runs_equal_separate_runs(mlflow_store, tmp_path):
    mlflow.set_tracking_uri(tracking_uri())
    assert main(["run", _spec(tmp_path, "bs-one"), "--profile", "smoke"]) == 0
    assert main(["run", _spec(tmp_path, "bs-many"), "--profile", "smoke",
                 "--batch-seeds", "2"]) == 0
    one, many = _by_seed("bs-one"), _by_seed("bs-many")
    assert set(one) == set(many) == {0, 1}
    cl = MlflowClient(tracking_uri())
    for seed in (0, 1):
        a, b = one[seed], many[seed]
        assert a["status"] == b["status"] == "FINISHED"
        assert b["tags.config_hash"] == a["tags.config_hash"]
        assert b["params.resolved.batched_seeds"] == "2"
        assert b["metrics.final_test_error"] == pytest.approx(a["metrics.final_test_error"],
                                                              abs=1e-9)
        assert b["metrics.final_train_loss"] == pytest.approx(a["metrics.final_train_loss"],
                                                              abs=1e-5)
        for key in ("train_loss", "train_error", "test_error", "lr"):
            ca, cb = _curve(cl, a["run_id"], key), _curve(cl, b["run_id"], key)
            assert [s for s, _ in ca] == [s for s, _ in cb], key
            assert [v for _, v in cb] == pytest.approx([v for _, v in ca], abs=1e-5), key
    # the seeds really differ, so the equality is not trivial
    assert one[0]["metrics.final_train_loss"] != one[1]["metrics.final_train_loss"]
    # rerun: both seeds are skipped
    assert main(["run", _spec(tmp_path, "bs-many"), "--profile", "smoke",
                 "--batch-seeds", "2"]) == 0
    assert len(_by_seed("bs-many")) == 2


@pytest.mark.slow  # > 10 s; `pytest -m slow` runs it
def test_each_seed_resumes_its_own_run_after_an_interrupt(mlflow_store, tmp_path, monkeypatch):
    import experiments.runner as runner

    mlflow.set_tracking_uri(tracking_uri())
    spec = _spec(tmp_path, "bs-resume")
    jobs = expand(load_spec(spec), "smoke")

    def stop(metrics):
        if metrics["epoch"] == 1 and metrics["seed_index"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "fit_seeds", functools.partial(multiseed.fit_seeds,
                                                               on_epoch_end=stop))
    args = ["run", spec, "--profile", "smoke", "--batch-seeds", "2"]
    assert main(args) == 130
    killed = _by_seed("bs-resume")
    assert [killed[s]["status"] for s in (0, 1)] == ["KILLED", "KILLED"]
    from convnets.checkpoint import read_checkpoint_meta

    for job in jobs:  # one checkpoint per seed, naming its own run
        meta = read_checkpoint_meta(runner.checkpoint_path(job))
        assert meta == {"run_id": killed[job.seed]["run_id"]}
    monkeypatch.setattr(runner, "fit_seeds", multiseed.fit_seeds)
    # seed 0 goes on alone from the batched checkpoint; then seed 0 is skipped, seed 1 resumes
    assert main(["run", spec, "--profile", "smoke", "--seeds", "1"]) == 0
    assert main(args) == 0
    done = _by_seed("bs-resume")
    assert len(done) == 2
    ref = multiseed.fit_seeds(jobs[0].config, [0, 1])
    for seed in (0, 1):
        assert done[seed]["status"] == "FINISHED"
        assert done[seed]["run_id"] == killed[seed]["run_id"]
        assert done[seed]["metrics.final_test_error"] == ref[seed].final["final_test_error"]
        assert "tags.failure_reason" not in done[seed] or not isinstance(
            done[seed]["tags.failure_reason"], str)
        assert not runner.checkpoint_path(jobs[seed]).exists()


@pytest.mark.slow  # > 10 s; `pytest -m slow` runs it
def test_one_diverging_seed_fails_alone(mlflow_store, tmp_path, monkeypatch):
    mlflow.set_tracking_uri(tracking_uri())
    real = multiseed.SeedStack.step

    def step(self, xb, yb, lr):  # seed index 1 "diverges"; seed 0 steps as usual
        loss, wrong = real(self, xb, yb, lr)
        return loss * torch.tensor([1.0, math.nan]), wrong

    monkeypatch.setattr(multiseed.SeedStack, "step", step)
    assert main(["run", _spec(tmp_path, "bs-nan"), "--profile", "smoke",
                 "--batch-seeds", "2"]) == 0  # a diverged run is a result, not a crash
    runs = _by_seed("bs-nan")
    assert runs[0]["status"] == "FINISHED" and 0 <= runs[0]["metrics.final_test_error"] <= 100
    assert runs[1]["status"] == "FAILED"
    assert runs[1]["tags.failure_kind"] == "diverged"
    assert "non-finite" in runs[1]["tags.failure_reason"]


def test_refused_configs_run_one_seed_at_a_time(mlflow_store, tmp_path, capsys):
    mlflow.set_tracking_uri(tracking_uri())
    spec = _spec(tmp_path, "bs-refused")
    assert main(["run", spec, "--profile", "smoke", "--batch-seeds", "2",
                 "--set", "bn_group=16", "--set", "schedule.length=1"]) == 0
    out = capsys.readouterr().out
    assert "seeds one at a time (batched seeds do not support bn_group" in out
    assert len(_by_seed("bs-refused")) == 2
    assert main(["run", spec, "--profile", "smoke", "--batch-seeds", "2", "--ddp", "2"]) == 2
