"""A table compares runs of one recipe: a run made with another learning rate, a validation
split or other data (command-line overrides) is listed apart, never set against the rest."""

from __future__ import annotations

import pandas as pd

from analysis import tables
from analysis.runs import RunData, normalise_runs
from analysis.sections import sections
from experiments.spec import expand, load_spec, recipe_overrides
from tests.test_analysis_tables import SPEC, make_runs


def _sel(runs):
    (sec,) = sections(RunData(normalise_runs(runs)), "toy")
    return sec


def test_runs_at_another_learning_rate_are_listed_apart_not_compared():
    runs = make_runs(SPEC)
    worse = runs[runs["variant"] == "worse"].assign(
        overrides="optim.lr=0.02", run_id=lambda d: d["run_id"] + "-lr",
        start_time="2025-02-01T00:00:00+00:00", final_error=5.0)
    sec = _sel(pd.concat([runs, worse, worse.assign(run_id=worse["run_id"] + "b")]))
    chosen = sec.sel[sec.sel["variant"] == "worse"]
    # the spec's own recipe is compared although the lr=0.02 cell has more runs
    assert len(chosen) == 3 and (chosen["overrides"] == "").all()
    assert (chosen["final_error"] > 7.5).all()
    apart = [t for t in sec.sel.attrs["not_pooled"] if "optim.lr=0.02" in t]
    assert apart == ["6 run(s) of G/worse with optim.lr=0.02, test error: another recipe than "
                     "the table's, not compared"]


def test_a_validation_error_is_never_compared_with_a_test_error():
    runs = make_runs(SPEC)
    val = runs["variant"] == "better"
    runs.loc[val, "eval_split"] = "val"
    runs.loc[val, "overrides"] = "data.val_size=51"
    sec = _sel(runs)
    assert set(sec.sel["eval_split"]) == {"test"}
    assert "better" not in set(sec.sel["variant"])
    assert any("data.val_size=51, val error" in t for t in sec.sel.attrs["not_pooled"])


def test_a_group_run_entirely_with_overrides_is_compared_and_says_so():
    runs = make_runs(SPEC).assign(overrides="optim.lr=0.02")
    data = RunData(normalise_runs(runs))
    (sec,) = sections(data, "toy")
    assert len(sec.sel) == len(runs[runs["status"] == "FINISHED"]) + 3  # FAILED rows kept too
    built = tables.build_section(sec, data, "toy", {})
    md = tables.to_markdown("toy", [built], ["x"])
    assert "Recipe changed on the command line for every run compared here: optim.lr=0.02" in md


def test_the_overrides_tag_names_what_the_command_line_changed_in_the_recipe():
    assert recipe_overrides([("runtime.precision", "fp32"), ("optim.lr", 0.02),
                             ("eval_batch_size", 64), ("data.val_size", 51)]) == \
        "data.val_size=51; optim.lr=0.02"
    assert recipe_overrides([], tuned=True) == "optim.lr=tuned"
    (job,) = expand(load_spec("degradation"), "smoke", seeds=1, only=["resnet20"],
                    sets=[("optim.lr", 0.02), ("runtime.channels_last", False)])
    assert job.tags["overrides"] == "optim.lr=0.02"
    (plain,) = expand(load_spec("degradation"), "smoke", seeds=1, only=["resnet20"])
    assert plain.tags["overrides"] == ""


def test_a_model_set_on_the_command_line_is_checked_before_any_run():
    """The meta build checks the model as resolved (it used the spec's name before --set)."""
    import pytest

    from experiments.spec import SpecError

    with pytest.raises(SpecError, match=r"--set model.name='resnet1202' \(command line\).*"
                                        r"fixes depth=1202"):
        expand(load_spec("resnetv2-orderings"), "smoke", seeds=1, only=["ResNet-110/original"],
               sets=[("model.name", "resnet1202")])


def test_the_closing_summary_names_the_network_and_the_profile():
    from convnets.names import Outcome
    from experiments.runner import row, summary_table

    (job,) = expand(load_spec("resnetv2-orderings"), "smoke", seeds=1,
                    only=["ResNet-110/full_preact"])
    text = summary_table([row(job, Outcome.FINISHED, "FINISHED", error=12.5)])
    assert "cifar_resnet-8 unit=full_preact" in text and "smoke" in text and "12.5" in text


def test_status_says_the_profile_it_shows(mlflow_store, tmp_path, capsys):
    from experiments.__main__ import main
    from tests.test_experiments import _write

    spec = _write(tmp_path, "st", own=True)
    assert main(["status", spec]) == 0
    assert "st (profile smoke; --profile picks another): 6 not submitted" in capsys.readouterr().out
