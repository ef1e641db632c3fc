"""One network, one run: a config key is what is trained (the model by what it is), a run of one
spec serves every other spec that names the same network, runs and checkpoints made under the
previous hash rule are found and re-keyed, and claims live with the store."""

from __future__ import annotations

import json
import os
import textwrap

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from analysis.runs import RunData, collect
from analysis.sections import sections
from convnets.config import config_hash, hash_of_resolved, resolve_config
from convnets.models import model_identity
from convnets.names import tracking_uri
from experiments.__main__ import main
from experiments.locks import claim
from experiments.spec import expand, load_spec

SPEC = textwrap.dedent("""
    name: {name}
    claim: Claim {name}.
    citation: Nobody 2026, Table 0
    recipe:
      data: {{name: synthetic, options: {{n_train: 128, n_test: 64, image_size: 12}}}}
      optim: {{lr: 0.05}}
      schedule: {{unit: epochs, length: 1}}
      batch_size: 32
    groups:
      - name: G
        model: cifar_resnet
        baseline: {baseline}
        variants:
    {variants}
    profiles:
      smoke: {{seeds: 1}}
    """)


def _spec(tmp_path, name, baseline, variants):
    body = "\n".join(f"      {k}: {v}" for k, v in variants.items())
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, baseline=baseline, variants=body))
    return str(path)


def _job(spec, variant):
    return expand(load_spec(spec), "smoke", seeds=1, only=[variant])[0]


def test_a_model_is_what_it_is_not_how_it_was_spelled():
    plain = model_identity("resnet110", {})
    assert model_identity("resnet110", {"unit": "original"}) == plain
    assert model_identity("resnet110", {"shortcut": "identity", "unit": "original"}) == plain
    assert model_identity("cifar_resnet", {"depth": 110}) == plain  # the name fixes depth 110
    assert model_identity("resnet110", {"unit": "full_preact"}) != plain
    assert model_identity("resnet20", {}) == model_identity("cifar_resnet", {})  # default depth
    # 0 == False in Python; an option given as 0 where the default is False is not the default
    assert model_identity("resnet20", {"plain": 0}) != model_identity("resnet20", {})


def test_the_two_ablation_specs_name_one_network_once_per_profile():
    for profile in ("paper", "quick", "smoke"):
        orderings = _job("experiments/resnetv2-orderings.yaml", "ResNet-110/original")
        shortcuts = _job("experiments/resnetv2-shortcuts.yaml", "ResNet-110/identity")
        if profile != "smoke":
            orderings, shortcuts = (
                expand(load_spec(f"experiments/resnetv2-{s}.yaml"), profile, seeds=1,
                       only=[f"ResNet-110/{v}"])[0]
                for s, v in (("orderings", "original"), ("shortcuts", "identity")))
        assert orderings.config_hash == shortcuts.config_hash
        # under the previous rule they were two keys: the network was trained twice
        assert orderings.legacy_hashes != shortcuts.legacy_hashes
        assert _job("experiments/resnetv2-orderings.yaml",
                    "ResNet-110/full_preact").config_hash != orderings.config_hash


def test_a_split_seed_without_a_validation_split_is_not_part_of_the_key():
    cfg = {"model": {"name": "resnet20"}, "data": {"name": "synthetic"}}
    with_seed = {**cfg, "data": {"name": "synthetic", "split_seed": 7}}
    assert config_hash(with_seed) == config_hash(cfg)
    held_out = {"model": {"name": "resnet20"}, "data": {"name": "synthetic", "val_size": 16}}
    assert config_hash(held_out) != config_hash(
        {**held_out, "data": {**held_out["data"], "split_seed": 7}})
    resolved = resolve_config(with_seed)
    assert hash_of_resolved(resolved, rule="spelled") != hash_of_resolved(resolve_config(cfg),
                                                                          rule="spelled")


def test_a_run_of_one_spec_serves_the_other_spec_that_names_its_network(mlflow_store, tmp_path):
    mlflow.set_tracking_uri(tracking_uri())
    a = _spec(tmp_path, "ta", "base", {"base": "{options: {depth: 8}, paper: 10.0}",
                                      "pre": "{options: {depth: 8, unit: full_preact}}"})
    b = _spec(tmp_path, "tb", "ident", {
        "ident": "{options: {depth: 8, unit: original, shortcut: identity}, paper: 6.5}",
        "gated": "{options: {depth: 8, shortcut: shortcut_only_gating}}"})
    assert _job(a, "base").config_hash == _job(b, "ident").config_hash
    assert main(["run", a, "--profile", "smoke", "--variant", "base"]) == 0
    assert main(["run", b, "--profile", "smoke", "--variant", "ident"]) == 0
    cl = MlflowClient(tracking_uri())
    runs = cl.search_runs([e.experiment_id for e in cl.search_experiments()])
    assert len(runs) == 1  # trained once
    serves = json.loads(runs[0].data.tags["serves"])
    assert serves["tb/G/ident"]["paper_error"] == "6.5"
    assert serves["tb/G/ident"]["baseline"] == "ident"
    # both tables count it, each as its own variant
    data = RunData(collect())
    (sec_b,) = sections(data, "tb")
    row = sec_b.sel.iloc[0]
    assert (row["experiment"], row["variant"], row["served_from"]) == ("tb", "ident", "ta")
    assert row["run_id"] == runs[0].info.run_id and row["paper_error"] == "6.5"
    (sec_a,) = sections(data, "ta")
    assert list(sec_a.sel["variant"]) == ["base"] and sec_a.sel.iloc[0]["served_from"] == ""
    # asked again from either side: skipped, still one run
    assert main(["run", b, "--profile", "smoke", "--variant", "ident"]) == 0
    assert main(["run", a, "--profile", "smoke", "--variant", "base"]) == 0
    assert len(cl.search_runs([e.experiment_id for e in cl.search_experiments()])) == 1


def test_runs_and_checkpoints_of_the_previous_rule_are_found_and_rekeyed(mlflow_store,
                                                                          tmp_path):
    import experiments.runner as runner

    mlflow.set_tracking_uri(tracking_uri())
    a = _spec(tmp_path, "tc", "base", {"base": "{options: {depth: 8}, recipe: {optim: {lr: 0.04}}}"})
    job = _job(a, "base")
    (old,) = job.legacy_hashes
    assert main(["run", a, "--profile", "smoke"]) == 0
    cl = MlflowClient(tracking_uri())
    exp = cl.get_experiment_by_name("tc").experiment_id
    (run,) = cl.search_runs([exp])
    cl.set_tag(run.info.run_id, "config_hash", old)  # as a store made before 2026-12-07 has it
    legacy_ckpt = runner.checkpoint_dir() / "tc" / f"{old}-smoke-seed0.pt"
    legacy_ckpt.parent.mkdir(parents=True, exist_ok=True)
    legacy_ckpt.write_bytes(b"checkpoint of the earlier layout")
    assert main(["run", a, "--profile", "smoke"]) == 0
    (again,) = cl.search_runs([exp])  # found under its old key: not trained again
    assert again.info.run_id == run.info.run_id
    assert again.data.tags["config_hash"] == job.config_hash
    assert again.data.tags["config_hash_recorded"] == old
    assert not legacy_ckpt.exists()
    assert runner.checkpoint_path(job).read_bytes() == b"checkpoint of the earlier layout"


def test_claims_live_with_the_store_not_with_the_checkpoints(mlflow_store, tmp_path,
                                                             monkeypatch):
    import experiments.runner as runner

    mlflow.set_tracking_uri(tracking_uri())
    a = _spec(tmp_path, "td", "base", {"base": "{options: {depth: 8}, recipe: {optim: {lr: 0.03}}}"})
    job = _job(a, "base")
    first = runner.claim_path(job)
    assert first.parent == mlflow_store / "mlflow.db.claims"
    monkeypatch.setenv("CONVNETS_CHECKPOINTS", str(tmp_path / "elsewhere"))
    assert runner.claim_path(job) == first
    # a runner with other checkpoints, on the same store, sees the claim held and trains nothing
    with claim(first) as held:
        assert held is None
        row = runner.run_job(job, progress=False)
    assert row["outcome"].name == "CLAIMED"
    assert not os.path.exists(tmp_path / "elsewhere" / runner.checkpoint_path(job).name)
    cl = MlflowClient(tracking_uri())
    exp = cl.get_experiment_by_name("td")
    assert exp is None or not cl.search_runs([exp.experiment_id])


@pytest.mark.parametrize("uri, where", [
    ("sqlite:////x/y/mlflow.db", "/x/y/mlflow.db.claims"),
    ("file:///x/mlruns", "/x/mlruns.claims"),
    ("/x/mlruns", "/x/mlruns.claims"),
])
def test_claims_folder_of_each_store_kind(monkeypatch, uri, where):
    import experiments.runner as runner

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert str(runner.claims_dir()) == where
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    monkeypatch.setenv("CONVNETS_CHECKPOINTS", "/shared/ckpt")
    assert str(runner.claims_dir()) == "/shared/ckpt/claims"
