"""Runner and specs: grid x seeds into MLflow, skip/resume/fail semantics, spec validation."""

from __future__ import annotations

import functools
import textwrap
import zlib

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from convnets.names import Outcome, tracking_uri
from experiments.__main__ import main
from experiments.runner import report, row
from experiments.spec import SpecError, expand, load_spec
from experiments.spec_check import list_specs

TINY = textwrap.dedent(
    """
    name: {name}
    claim: Tiny claim for the tests.
    citation: Nobody 2026, Table 0
    recipe:
      data: {{name: synthetic, options: {{n_train: 128, n_test: 64, image_size: 12}}}}
      optim: {{lr: 0.05}}
      schedule: {{unit: epochs, length: 2, drops: [0.5]}}
      batch_size: 32
    groups:
      - name: G
        model: cifar_resnet
        baseline: base
        variants:
          base: {{options: {{depth: 8}}, paper: 10.0}}
          wide: {{options: {{depth: 8, unit: full_preact}}, paper: 9.0}}
          boom: {{options: {{depth: 8}}, recipe: {{optim: {{lr: 1.0e+30, weight_decay: 0.0}}}}, paper: fail}}
    profiles:
      smoke: {{seeds: 2}}
    """
)


def _write(tmp_path, name="tiny", text=None, own=False):
    """The spec ``text`` (TINY by default) as ``<name>.yaml``. ``own``: with a learning rate
    of its own, so that no run of the same network another test left in the module's store
    serves it (one network, one run)."""
    path = tmp_path / f"{name}.yaml"
    text = text if text is not None else TINY.format(name=name)
    if own:
        text = text.replace("optim: {lr: 0.05}", f"optim: {{lr: {_own_lr(name)}}}")
    path.write_text(text)
    return str(path)


def _own_lr(name: str) -> float:
    return round(0.04 + (zlib.crc32(name.encode()) % 1000) * 1e-5, 5)


def _runs(name):
    return mlflow.search_runs(experiment_names=[name], output_format="pandas")


def test_run_logs_every_variant_and_seed_then_skips(mlflow_store, tmp_path):
    mlflow.set_tracking_uri(tracking_uri())
    spec = _write(tmp_path)
    assert main(["run", spec, "--profile", "smoke"]) == 0
    runs = _runs("tiny")
    assert len(runs) == 6
    status = runs.groupby("tags.variant")["status"].apply(set).to_dict()
    assert status == {"base": {"FINISHED"}, "wide": {"FINISHED"}, "boom": {"FAILED"}}
    boom = runs[runs["tags.variant"] == "boom"].iloc[0]
    assert "non-finite" in boom["tags.failure_reason"]
    # tags, params, metric history and artifacts read back
    run = runs[(runs["tags.variant"] == "wide") & (runs["tags.seed"] == "1")].iloc[0]
    assert run["tags.expected"] == "lower" and run["tags.baseline"] == "base"
    assert run["tags.paper_error"] == "9.0" and run["tags.profile"] == "smoke"
    assert run["tags.dataset_label"].startswith("synthetic")
    assert run["params.model.options.depth"] == "8"
    assert run["params.model.options.unit"] == "full_preact"
    assert run["params.optim.lr"] == "0.05"
    cl = MlflowClient(tracking_uri())
    hist = cl.get_metric_history(run["run_id"], "train_loss")
    assert [m.step for m in hist] == [4, 8]  # 128 // 32 = 4 iterations per epoch
    assert 0.0 <= run["metrics.final_test_error"] <= 100.0
    names = {a.path for a in cl.list_artifacts(run["run_id"])}
    assert names == {"config.yaml", "curve.csv", "predictions.npz"}
    local = cl.download_artifacts(run["run_id"], "predictions.npz", str(tmp_path))
    with np.load(local) as z:
        assert z["pred"].shape == z["target"].shape == (64,)
        err = (z["pred"] != z["target"]).mean() * 100
    assert err == pytest.approx(run["metrics.final_test_error"])
    # rerun: nothing new (finished are skipped, diverged are not retried)
    assert main(["run", spec, "--profile", "smoke"]) == 0
    assert len(_runs("tiny")) == 6
    # --force reruns
    assert main(["run", spec, "--profile", "smoke", "--variant", "base", "--seeds", "1",
                 "--force"]) == 0
    assert len(_runs("tiny")) == 7


def test_interrupted_run_resumes_into_the_same_mlflow_run(mlflow_store, tmp_path, monkeypatch):
    import experiments.runner as runner
    from convnets.train import fit

    mlflow.set_tracking_uri(tracking_uri())
    spec = _write(tmp_path, "resume", own=True)

    def interrupt(metrics):
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "fit", functools.partial(fit, on_epoch_end=interrupt))
    assert main(["run", spec, "--profile", "smoke", "--variant", "base", "--seeds", "1"]) == 130
    killed = _runs("resume")
    assert list(killed["status"]) == ["KILLED"]
    # the checkpoint names the run that wrote it, so it can only resume that run
    from convnets.checkpoint import read_checkpoint_meta

    job = expand(load_spec(spec), "smoke", seeds=1, only=["base"])[0]
    assert read_checkpoint_meta(runner.checkpoint_path(job)) == {"run_id": killed["run_id"].iloc[0]}
    monkeypatch.setattr(runner, "fit", fit)
    assert main(["run", spec, "--profile", "smoke", "--variant", "base", "--seeds", "1"]) == 0
    done = _runs("resume")
    assert len(done) == 1 and done["status"].iloc[0] == "FINISHED"
    assert done["run_id"].iloc[0] == killed["run_id"].iloc[0]
    # the resumed run ends exactly where an uninterrupted one does
    ref = fit(job.config, progress=False)
    assert done["metrics.final_test_error"].iloc[0] == ref.final["final_test_error"]
    cl = MlflowClient(tracking_uri())
    assert [m.step for m in cl.get_metric_history(done["run_id"].iloc[0], "train_loss")] == [4, 8]


@pytest.mark.parametrize(
    "edit, message",
    [
        (("claim:", "claims: x\nclaim:"), "unknown key 'claims'"),
        (("model: cifar_resnet", "model: resnet_nope"), "unknown model 'resnet_nope'"),
        (("depth: 8}, paper: 10.0", "depth: 21}, paper: 10.0"), "depth=21"),
        (("optim: {lr: 0.05}", "optim: {lr: -0.05}"), "optim.lr"),
        (("drops: [0.5]", "drops: [1.5]"), "schedule.drops"),
        (("smoke: {seeds: 2}", "smoke: {seeds: 2, sedes: 3}"), "unknown key 'sedes'"),
        (("baseline: base", "baseline: nope"), "baseline"),
        (("paper: 10.0", "paper: ten"), "paper"),
    ],
)
def test_malformed_specs_are_rejected_naming_file_and_key(tmp_path, edit, message):
    text = TINY.format(name="bad")
    old, new = edit
    assert old in text, old
    path = _write(tmp_path, "bad", text.replace(old, new, 1))
    with pytest.raises(SpecError) as err:
        expand(load_spec(path), "smoke")
    assert message in str(err.value)
    assert "bad.yaml" in str(err.value)
    # and the CLI runs nothing
    assert main(["run", path, "--profile", "smoke"]) == 2


@pytest.mark.parametrize("name", list_specs())
def test_shipped_specs_expand_for_every_profile(name):
    spec = load_spec(name)
    assert {"paper", "smoke"} <= set(spec["profiles"])
    for profile in spec["profiles"]:
        jobs = expand(spec, profile)
        assert jobs, profile
        assert len({(j.config_hash, j.seed) for j in jobs}) == len(jobs)
    smoke = expand(spec, "smoke")
    assert all(j.config["data"]["name"] == "synthetic" for j in smoke)
    assert len({j.seed for j in smoke}) == 2


def test_paper_numbers_and_directions_in_shipped_specs():
    jobs = {(j.group, j.variant): j.tags for j in expand(load_spec("resnetv2-orderings"), "paper")}
    assert jobs[("ResNet-110", "full_preact")]["paper_error"] == "6.37"
    assert jobs[("ResNet-110", "full_preact")]["expected"] == "lower"
    assert jobs[("ResNet-164", "bn_after_add")]["expected"] == "higher"
    short = {j.variant: j.tags for j in expand(load_spec("resnetv2-shortcuts"), "paper")}
    assert short["dropout"]["paper_error"] == "fail" and short["dropout"]["expected"] == "higher"
    deg = {j.variant: j.tags for j in expand(load_spec("degradation"), "paper")}
    assert deg["plain56"]["expected"] == "higher" and deg["resnet56"]["expected"] == "lower"


def test_runner_to_snapshot_to_tables_end_to_end(mlflow_store, tmp_path):
    """A smoke experiment through the real runner -> export -> tables from the snapshot equal
    tables from the live store (the committed snapshot is enough to regenerate paper_tables)."""
    from analysis.__main__ import main as analysis_main

    mlflow.set_tracking_uri(tracking_uri())
    spec = _write(tmp_path, "e2e", own=True)
    assert main(["run", spec, "--profile", "smoke", "--variant", "base", "--variant", "wide"]) == 0
    snap = tmp_path / "snap"
    analysis_main(["export", "--out", str(snap)])
    analysis_main(["tables", "--source", "mlflow", "--out", str(tmp_path / "live"), "--no-log"])
    analysis_main(["tables", "--source", "snapshot", "--snapshot", str(snap),
                   "--out", str(tmp_path / "snapout")])
    live = (tmp_path / "live" / "e2e.csv").read_text()
    assert live == (tmp_path / "snapout" / "e2e.csv").read_text()
    md = (tmp_path / "snapout" / "e2e.md").read_text()
    assert md.split("\n")[1].startswith("**SMOKE: not evidence**")
    assert "synthetic" in md and "Runs: 4" in md


def test_profiles_with_identical_configs_are_counted_apart(mlflow_store, tmp_path):
    mlflow.set_tracking_uri(tracking_uri())
    text = TINY.format(name="prof").replace("smoke: {seeds: 2}", "smoke: {seeds: 1}\n  quick: {seeds: 1}")
    spec = _write(tmp_path, "prof", text, own=True)
    assert main(["run", spec, "--profile", "smoke", "--variant", "base"]) == 0
    assert main(["run", spec, "--profile", "quick", "--variant", "base"]) == 0
    runs = _runs("prof")
    assert sorted(runs["tags.profile"]) == ["quick", "smoke"]
    assert runs["tags.config_hash"].nunique() == 1


def test_crashed_run_fails_the_command_and_keeps_its_checkpoint(mlflow_store, tmp_path,
                                                                monkeypatch):
    import experiments.runner as runner
    from convnets.train import fit

    mlflow.set_tracking_uri(tracking_uri())
    spec = _write(tmp_path, "crash", own=True)

    def explode(metrics):
        if metrics["epoch"] == 1:
            raise OSError("disk full")

    monkeypatch.setattr(runner, "fit", functools.partial(fit, on_epoch_end=explode))
    assert main(["run", spec, "--profile", "smoke", "--variant", "base", "--seeds", "1"]) == 1
    runs = _runs("crash")
    assert list(runs["status"]) == ["FAILED"]
    assert runs["tags.failure_kind"].iloc[0] == "error"
    assert "disk full" in runs["tags.failure_reason"].iloc[0]
    job = expand(load_spec(spec), "smoke", seeds=1, only=["base"])[0]
    assert runner.checkpoint_path(job).exists()
    # the next invocation resumes it and clears the failure tags
    monkeypatch.setattr(runner, "fit", fit)
    assert main(["run", spec, "--profile", "smoke", "--variant", "base", "--seeds", "1"]) == 0
    runs = _runs("crash")
    assert list(runs["status"]) == ["FINISHED"]
    assert "tags.failure_reason" not in runs or runs["tags.failure_reason"].isna().all()


def test_seed_option_runs_only_the_named_seeds_of_the_range(tmp_path, capsys):
    """A campaign adds the seeds no ledger part holds: ``--seeds 3 --seed 1 --seed 2`` plans
    seeds 1 and 2 with the config of the full range; a seed outside it is refused."""
    spec = _write(tmp_path)
    assert main(["run", spec, "--profile", "smoke", "--variant", "base", "--seeds", "3",
                 "--dry-run"]) == 0
    every = capsys.readouterr().out.splitlines()[1:]
    assert main(["run", spec, "--profile", "smoke", "--variant", "base", "--seeds", "3",
                 "--seed", "2", "--seed", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "tiny: 2 runs, profile smoke"
    assert out[1:] == [line for line in every if "seed0" not in line]
    for seeds, message in ((["--seed", "3"], "seed 3 is not among the run's seeds 0-2"),
                           (["--seed", "1", "--seed", "1"], "a seed is given twice")):
        assert main(["run", spec, "--profile", "smoke", "--seeds", "3", *seeds,
                     "--dry-run"]) == 2
        assert message in capsys.readouterr().err


def test_report_counts_rows_by_outcome_and_fails_only_on_a_crash(tmp_path, capsys):
    """``report`` counts the rows' ``Outcome``s, not their status text: a status text that
    reads like another outcome (a crash whose message says 'diverged') counts as what it is."""
    job = expand(load_spec(_write(tmp_path)), "smoke", only=["base"])[0]
    rows = [row(job, Outcome.FINISHED, "FINISHED", error=1.0),
            row(job, Outcome.SKIPPED, "FINISHED (skipped)"),
            row(job, Outcome.DIVERGED, "FAILED (diverged)"),
            row(job, Outcome.LEFT, "KILLED (deadline)", reason="deadline"),
            row(job, Outcome.LEFT, "not started (terminated)"),
            row(job, Outcome.CLAIMED, "claimed (pid 1 on host)")]
    assert report(rows) == 0
    assert capsys.readouterr().out.strip() == (
        "2 finished or skipped, 1 failed (0 crashed, 1 diverged), 2 left for the next "
        "invocation (deadline), 1 being trained by other processes")
    assert report([*rows, row(job, Outcome.CRASHED, "FAILED (diverged worker died)")]) == 1
    assert "2 failed (1 crashed, 1 diverged)" in capsys.readouterr().out
