"""Precision left the config hash (2026-12-03): one cell for both precisions, and the old
ledger parts re-keyed so that their runs still select."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from analysis.ledger import LEDGER_DIR, load_ledger
from convnets.config import config_hash, hash_of_resolved, resolve_config
from experiments.rekey import _new_key
from experiments.spec import expand, load_spec
from tests.test_experiments import _write

CFG = {"model": {"name": "resnet20"},
       "data": {"name": "synthetic", "options": {"n_train": 64, "n_test": 32}}}


def test_the_same_config_in_two_precisions_is_one_cell():
    bf16 = config_hash({**CFG, "runtime": {"precision": "bf16"}})
    fp32 = config_hash({**CFG, "runtime": {"precision": "fp32"}})
    assert bf16 == fp32 == config_hash(CFG)
    # the earlier rule, kept only for re-keying, told them apart
    resolved = resolve_config(CFG)
    assert (hash_of_resolved(resolved, rule="precision", precision="bf16")
            != hash_of_resolved(resolved, rule="precision", precision="fp32"))


def test_an_old_key_is_mapped_only_when_the_spec_reproduces_it(tmp_path):
    spec = _write(tmp_path, "rk")
    job = expand(load_spec(spec), "smoke", seeds=1, only=["G/base"])[0]
    old = hash_of_resolved(job.config, rule="precision", precision="bf16")
    row = pd.Series(dict(profile="smoke", group="G", variant="base", precision="bf16",
                         config_hash=old))
    assert _new_key(spec, row) == job.config_hash
    wrong = copy.copy(row)
    wrong["precision"] = "fp32"  # recorded as bf16 elsewhere: its old key is not reproduced
    assert _new_key(spec, wrong) is None


@pytest.mark.parametrize("part, experiment, profile, variants", [
    ("2026-12-02_cpu_xeon_d2l-densenet-seed0", "seed-claims", "paper", ["d2l_densenet"]),
    ("2026-12-02_cpu_epyc_seed004-mnist", "seed004-mnist", "cpu", None),
])
def test_the_runs_of_existing_parts_still_select(part, experiment, profile, variants):
    """After re-keying, each run of these parts carries the key today's spec gives its
    variant, so new seeds (bf16 or fp32) pool with it."""
    runs = load_ledger(LEDGER_DIR).runs
    runs = runs[runs["part"] == part]
    assert len(runs)
    jobs = expand(load_spec(experiment), profile, seeds=1, only=variants)
    want = {(j.group, j.variant): j.config_hash for j in jobs}
    got = {(r.group, r.variant): r.config_hash for r in runs.itertuples()}
    assert got == {k: v for k, v in want.items() if k in got}
    assert (runs["config_hash"] != runs["config_hash_recorded"]).all()  # every key changed


def test_the_committed_rekey_file_is_what_the_ledger_and_the_specs_give():
    """rekey.csv is generated: rebuilding it from the committed parts (and the specs' history
    for parts without configs) gives the committed file, so no part is read under a stale key
    (rerun ``python -m experiments rekey`` after adding a part made under an earlier rule)."""
    import subprocess

    from experiments.rekey import REKEY_FILE, rekey_rows

    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=LEDGER_DIR,
                             capture_output=True, text=True).stdout.strip()
    if shallow != "false":
        pytest.skip("needs the repository's history (a shallow or no clone)")
    committed = pd.read_csv(REKEY_FILE, dtype=str, keep_default_na=False)
    fresh = rekey_rows().astype(str)
    assert fresh.equals(committed), "paper_tables/data/rekey.csv is stale: python -m experiments rekey"
