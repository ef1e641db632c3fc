"""Horizons: a run of the recipe stopped at iteration H, measured there, and extended later to
exactly the run that never stopped; the hash is the recipe's, wherever the run stops."""

from __future__ import annotations

import pytest
import torch

from convnets.config import ConfigError, config_hash, resolve_config
from convnets.names import CLEAN_TRAIN_ERROR, HORIZON
from convnets.train import fit

# 8 steps per epoch (256 / 32), 40 iterations in all; marks inside epochs and at a boundary
RECIPE = {
    "model": {"name": "cifar_resnet", "options": {"depth": 8}},
    "data": {"name": "synthetic", "options": {"n_train": 256, "n_test": 128, "image_size": 16}},
    "schedule": {"unit": "iterations", "length": 40, "drops": [0.5]},
    "batch_size": 32,
    "seed": 5,
    "horizons": [12, 16, 27],
    "runtime": {"precision": "fp32", "compile": False},
}
TIMING = ("images_per_sec", "epoch_time_s")


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def _weights(path):
    return torch.load(path, weights_only=False)["model"]


def test_horizon_and_marks_leave_the_hash_alone():
    h = config_hash(dict(RECIPE, horizons=[]))
    assert config_hash(RECIPE) == h
    assert config_hash(dict(RECIPE, horizon=12)) == h
    assert config_hash(dict(RECIPE, horizon=27, horizons=[3])) == h


@pytest.mark.parametrize("bad, msg", [
    ({"horizon": 0}, "'horizon' must be an integer >= 1"),
    ({"horizon": 41}, "'horizon' 41 is past the end of the schedule"),
    ({"horizons": 12}, "'horizons' must be a list"),
    ({"horizons": [12, "x"]}, r"'horizons\[\]' must be an integer"),
    ({"horizon": True}, "'horizon' must be an integer"),
])
def test_bad_horizons_are_refused(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        resolve_config(dict(RECIPE, **bad))


def test_stopped_at_a_horizon_and_extended_equals_straight_through_bitwise(tmp_path):
    straight = fit(dict(RECIPE, horizon=27), progress=False)
    ckpt = tmp_path / "run.pt"
    first = fit(dict(RECIPE, horizon=12), checkpoint=ckpt, progress=False)
    assert ckpt.exists() and torch.load(ckpt, weights_only=False)["iteration"] == 12
    assert first.info[HORIZON] == 12
    # the run at 12 is the straight run's prefix, measured there with the same numbers
    marks = [h for h in straight.history if HORIZON in h]
    assert [h[HORIZON] for h in marks] == [12, 16, 27]
    assert _strip(first.history) == _strip(straight.history)[: len(first.history)]
    assert first.final["final_test_error"] == marks[0]["test_error"]
    assert first.final["final_clean_train_error"] == marks[0][CLEAN_TRAIN_ERROR]
    # 12 = one whole epoch (8 steps) + 4 steps of the second: the running window
    assert first.history[-1]["train_window"] == 12
    extended = fit(dict(RECIPE, horizon=27), checkpoint=ckpt, progress=False)
    assert extended.info[HORIZON] == 27
    assert _strip(extended.history) == _strip(straight.history)
    assert extended.final == {**straight.final, "wall_time_s": extended.final["wall_time_s"]}
    assert (extended.predictions == straight.predictions).all()


def test_a_run_to_the_end_answers_every_horizon_and_resumes_like_one_that_stopped(tmp_path):
    full = fit(RECIPE, progress=False)
    ckpt = tmp_path / "run.pt"
    fit(dict(RECIPE, horizon=16), checkpoint=ckpt, progress=False)  # a boundary: 2 epochs
    assert torch.load(ckpt, weights_only=False)["iteration"] == 16
    resumed = fit(RECIPE, checkpoint=ckpt, progress=False)
    assert _strip(resumed.history) == _strip(full.history)
    assert (resumed.predictions == full.predictions).all()
    assert full.info[HORIZON] == 40
    # the schedule's end is measured as a horizon too: the clean training error of the run
    assert full.final["final_clean_train_error"] == full.history[-1][CLEAN_TRAIN_ERROR]


def test_a_mark_changes_no_state():
    """Measuring on the way reads the weights in eval mode only: the same run without marks
    ends with the same weights and numbers."""
    plain = fit(dict(RECIPE, horizons=[]), progress=False)
    marked = fit(RECIPE, progress=False)
    epochs = [h for h in _strip(marked.history) if HORIZON not in h]
    assert epochs == _strip(plain.history)
    assert marked.final == {**plain.final, "wall_time_s": marked.final["wall_time_s"]}


def test_the_clean_training_error_is_measured_in_eval_mode_on_the_whole_split():
    res = fit(dict(RECIPE, horizon=12), progress=False)
    row = res.history[-1]
    # 256 training images: the error is a multiple of 1/256
    assert (row[CLEAN_TRAIN_ERROR] * 256 / 100) == pytest.approx(
        round(row[CLEAN_TRAIN_ERROR] * 256 / 100), abs=1e-6)
    assert row["lr"] == pytest.approx(0.1)


SPEC = """
name: hz
claim: Tiny claim for the horizon test.
citation: Nobody 2026, Fig. 0
recipe:
  data: {name: synthetic, options: {n_train: 96, n_test: 32, image_size: 8}}
  schedule: {unit: iterations, length: 12, drops: [0.5]}
  batch_size: 32
  horizons: [4]
  runtime: {precision: fp32, compile: false}
groups: [{name: G, model: cifar_resnet, baseline: base,
          variants: {base: {options: {depth: 8}, paper: 10.0}}}]
profiles: {paper: {seeds: 1}}
"""


def test_the_runner_stops_at_a_horizon_and_extends_the_same_run(mlflow_store, tmp_path, capsys):
    from convnets import tracking
    from experiments.__main__ import main
    from experiments.runner import checkpoint_path
    from experiments.spec import expand, load_spec

    spec = tmp_path / "hz.yaml"
    spec.write_text(SPEC)
    (job,) = expand(load_spec(str(spec)), "paper", horizon=4)
    (full_job,) = expand(load_spec(str(spec)), "paper")
    assert job.config_hash == full_job.config_hash

    def runs():
        cl = tracking.client()
        exp = cl.get_experiment_by_name("hz")
        return cl, cl.search_runs([exp.experiment_id])

    assert main(["run", str(spec), "--profile", "paper", "--horizon", "4"]) == 0
    assert "FINISHED at 4" in capsys.readouterr().out
    cl, (run,) = runs()
    assert run.info.status == "FINISHED" and run.data.tags[HORIZON] == "4"
    assert checkpoint_path(job).exists()  # kept: a later horizon extends the run from it
    at4 = run.data.metrics["final_test_error"]

    assert main(["run", str(spec), "--profile", "paper", "--horizon", "4"]) == 0
    assert "FINISHED (skipped, at 4)" in capsys.readouterr().out
    assert main(["run", str(spec), "--profile", "paper", "--horizon", "8"]) == 0
    out = capsys.readouterr().out
    assert "extended from horizon 4" in out and "FINISHED at 8" in out
    cl, (run,) = runs()  # the same run, one MLflow run
    assert run.data.tags[HORIZON] == "8"
    test_curve = {m.step: m.value for m in cl.get_metric_history(run.info.run_id, "test_error")}
    assert test_curve[4] == at4 and 8 in test_curve

    assert main(["run", str(spec), "--profile", "paper"]) == 0  # to the schedule's end
    cl, (run,) = runs()
    assert run.data.tags[HORIZON] == "12"
    assert not checkpoint_path(job).exists()
    assert main(["run", str(spec), "--profile", "paper", "--horizon", "8"]) == 0
    assert "FINISHED (skipped)" in capsys.readouterr().out  # it reached the end: 12


def test_a_horizon_past_the_schedule_is_refused_before_any_run(mlflow_store, tmp_path, capsys):
    from experiments.__main__ import main

    spec = tmp_path / "hz.yaml"
    spec.write_text(SPEC)
    assert main(["run", str(spec), "--profile", "paper", "--horizon", "13"]) == 2
    assert "--horizon 13" in capsys.readouterr().err
