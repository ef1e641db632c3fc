"""What a reader sees in MLflow: experiment kind and description, dataset inputs, run names;
and a real `mlflow server` over a throwaway store answering the REST API with them."""

from __future__ import annotations

import pytest

from convnets import tracking
from convnets.names import tracking_uri
from experiments import ui_check
from experiments.spec import expand, load_spec

SPEC = load_spec("resnetv2-shortcuts")


def test_run_names_say_what_ran_and_start_with_the_variant():
    smoke = expand(SPEC, "smoke", only=["shortcut_only_gating_b0"])[0]
    name = tracking.run_name(smoke.variant, smoke.seed, smoke.config["model"], "smoke")
    assert name == ("shortcut_only_gating_b0 | s0 | cifar_resnet-8 gate_bias=0.0 "
                    "shortcut=shortcut_only_gating | smoke")
    paper = expand(SPEC, "paper", only=["identity"])[0]
    assert tracking.run_name("identity", 3, paper.config["model"], "paper") == \
        "identity | s3 | resnet110"
    plain = {"name": "cifar_resnet", "options": {"depth": 14, "plain": True}}
    assert tracking.model_label(plain) == "cifar_resnet-14 plain"
    # what trained, not how the spec spelled it: defaults are not shown, the rest is
    assert tracking.model_label({"name": "resnet110", "options": {"unit": "original"}}) == \
        "resnet110"
    assert tracking.model_label({"name": "cifar_resnet", "options": {
        "depth": 8, "unit": "full_preact", "shortcut": "identity"}}) == \
        "cifar_resnet-8 unit=full_preact"


def test_run_note_says_what_trained_on_what():
    job = expand(SPEC, "smoke", only=["dropout"])[0]
    note = tracking.run_note(job.tags, job.config, {"dataset_label": "synthetic (smoke)"})
    assert note == ("ResNet-110 / dropout, seed 0, smoke profile: cifar_resnet-8 shortcut=dropout "
                    "on synthetic (smoke). Paper: fail (> 20%); baseline: identity.")


def test_experiment_note_has_claim_citation_and_paper_numbers():
    note = tracking.experiment_note(SPEC)
    assert note.startswith("Claim: On ResNet-110 the clean identity shortcut")
    assert "Identity Mappings in Deep Residual Networks" in note
    assert "identity 6.61 (baseline); constant_scaling 12.35" in note
    assert "dropout fail" in note and "tags.variant = 'constant_scaling'" in note


def test_dataset_option_drops_the_profiles_synthetic_options():
    jobs = expand(SPEC, "smoke", dataset="imagefolder:/nowhere/cifar10-jpeg-q75",
                  only=["identity"])
    assert jobs[0].config["data"]["name"] == "imagefolder:/nowhere/cifar10-jpeg-q75"
    assert "n_train" not in jobs[0].config["data"]["options"]
    kept = expand(SPEC, "smoke", dataset="imagefolder:/x", only=["identity"],
                  sets=[("data.options.label", "mine")])
    assert kept[0].config["data"]["options"] == {"label": "mine"}


def _fill(store):
    """An experiment with its tags and one run with tags, a metric and a dataset input."""
    cl = tracking.client()
    exp_id = tracking.experiment_id(cl, SPEC["name"], {"claim": SPEC["claim"].strip()})
    tracking.describe_experiment(cl, exp_id, SPEC)
    job = expand(SPEC, "smoke", only=["identity"])[0]
    name = tracking.run_name(job.variant, job.seed, job.config["model"], "smoke")
    run_id = cl.create_run(exp_id, run_name=name, tags=job.tags).info.run_id
    logger = tracking.RunLogger(cl, run_id)
    logger.log_epoch(16, {"final_test_error": 42.5})
    logger.log_dataset({"dataset": "synthetic", "dataset_label": "CIFAR-10 (JPEG q75 copy)",
                        "dataset_checksum": "0123456789abcdef"}, job.config, "test")
    logger.finish()
    return run_id, name


@pytest.mark.slow  # starts an MLflow server process: about 30 s
def test_server_answers_rest_api_with_our_experiment_and_tags(mlflow_store):
    run_id, name = _fill(mlflow_store)
    store, arts = tracking_uri(), tracking.artifact_root()
    with ui_check.serve(store, arts, timeout=150) as base:
        exp = ui_check.get_json(base, "/api/2.0/mlflow/experiments/get-by-name",
                                {"experiment_name": SPEC["name"]})["experiment"]
        tags = {t["key"]: t["value"] for t in exp["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        assert tags["mlflow.note.content"] == tracking.experiment_note(SPEC)
        runs = ui_check.post_json(base, "/api/2.0/mlflow/runs/search",
                                  {"experiment_ids": [exp["experiment_id"]],
                                   "filter": "tags.variant = 'identity'"})["runs"]
    assert [r["info"]["run_id"] for r in runs] == [run_id]
    run = runs[0]
    assert run["info"]["run_name"] == name
    rtags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert rtags["profile"] == "smoke" and rtags["group"] == "ResNet-110"
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == {"final_test_error": 42.5}
    inputs = run["inputs"]["dataset_inputs"]
    assert {i["dataset"]["name"] for i in inputs} == {"CIFAR-10 (JPEG q75 copy)"}
    assert {i["dataset"]["digest"] for i in inputs} == {"0123456789abcdef"}
    assert [t["value"] for i in inputs for t in i["tags"]] == ["train+test"]


def test_existing_experiment_gets_the_kind_tag(mlflow_store):
    cl = tracking.client()
    old = cl.create_experiment("made-before", artifact_location=tracking.artifact_root())
    assert tracking.experiment_id(cl, "made-before") == old
    assert cl.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_screenshots_of_a_smoke_store(tmp_path):
    if ui_check.chromium() is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    assert ui_check.main(["--out", str(tmp_path)]) == 0
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert shots == ["experiments.png", "run_charts.png", "run_overview.png",
                     "runs_compared.png", "runs_table.png"]
    assert all(p.stat().st_size > 10_000 for p in tmp_path.glob("*.png"))


def test_a_run_says_its_source_user_and_commit(mlflow_store, monkeypatch):
    """Issue 45 item 5: MLflow's Source and Created by columns were empty (a client-created
    run gets none of its provenance tags)."""
    import sys

    monkeypatch.setattr(sys, "argv", ["/somewhere/experiments/__main__.py", "run",
                                      "degradation", "--profile", "paper"])
    monkeypatch.setenv("USER", "ada")
    monkeypatch.setenv("LOGNAME", "ada")
    cl = tracking.client()
    run = tracking.TrackedRun.start(cl, tracking.experiment_id(cl, "source-tags"),
                                    run_name="r", tags={"variant": "a"})
    tags = cl.get_run(run.run_id).data.tags
    assert tags["mlflow.source.name"] == "python -m experiments run degradation --profile paper"
    assert tags["mlflow.user"] == "ada" and tags["mlflow.source.type"] == "LOCAL"
    commit = tags["git_commit"]
    assert tags.get("mlflow.source.git.commit") == (None if commit == "unknown" else commit)


def test_make_mlflow_ui_runs_with_telemetry_off():
    from pathlib import Path

    make = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = make.split("\nmlflow-ui:", 1)[1].split("\n\n", 1)[0]
    assert "MLFLOW_DISABLE_TELEMETRY=true" in recipe and "mlflow server" in recipe
