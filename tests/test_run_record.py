"""The run record (``convnets.names.RUN_RECORD``) is the one list of what a run states: the
ledger's columns and the tags derive from it, and what the spec layer tags a run with is in it,
so a field added there reaches the ledger and the tables."""

from __future__ import annotations

import pytest

from analysis import runs as io
from convnets import names
from experiments.spec import expand, load_spec
from experiments.spec_check import list_specs


@pytest.mark.parametrize("name", list_specs())
def test_every_tag_a_spec_puts_on_a_run_is_a_field_of_the_record(name):
    spec = load_spec(name)
    fields = {f.name for f in names.RUN_RECORD}
    for job in expand(spec, "smoke", seeds=1):
        missing = set(job.tags) - fields
        assert not missing, f"{name}: tags {sorted(missing)} would never reach the ledger"


def test_the_ledgers_columns_are_the_records_fields_typed_as_declared():
    import pandas as pd

    assert io.RUN_COLUMNS == [f.name for f in names.RUN_RECORD]
    row = {f.name: {"str": "x", "float": "1.5", "int": "3", "bool": "True"}[f.kind]
           for f in names.RUN_RECORD}
    df = io.normalise_runs(pd.DataFrame([row]))
    for f in names.RUN_RECORD:
        value = df[f.name].iloc[0]
        assert {"str": isinstance(value, str), "float": value == 1.5, "int": value == 3,
                "bool": bool(value) is True}[f.kind], (f.name, value)
    # every field but the store's own is a tag of the run; the trainer's are set at its end
    assert set(names.RESULT_TAGS) <= set(names.RECORD_TAGS)
    assert {"horizon", "precision", "dataset_checksum", "eval_split"} <= set(names.RESULT_TAGS)


def test_a_runners_job_is_resolved_once_by_expand_not_again_by_the_trainer(monkeypatch,
                                                                          mlflow_store,
                                                                          tmp_path):
    """Issue 44: resolve_config has one caller in the run path (the spec's expand); fit and
    fit_seeds take the job's config as it is."""
    import convnets.multiseed
    import convnets.train
    from experiments.runner import run_jobs
    from tests.test_experiments import _write

    def again(cfg):
        raise AssertionError("the trainer resolved a job's config again")

    spec = load_spec(_write(tmp_path, "resolved-once", own=True))
    jobs = expand(spec, "smoke", seeds=3, only=["base"], sets=[("runtime.precision", "fp32")])
    monkeypatch.setattr(convnets.train, "resolve_config", again)
    monkeypatch.setattr(convnets.multiseed, "resolve_config", again)
    rows = run_jobs(jobs[:1], progress=False)  # one run: fit
    rows += run_jobs(jobs[1:], progress=False, batch_seeds=2)  # two seeds batched: fit_seeds
    assert [r["status"] for r in rows] == ["FINISHED"] * 3, rows
