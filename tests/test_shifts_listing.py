"""``experiments shifts`` lists the queue in seconds: a model's MACs are counted once."""

from __future__ import annotations

import importlib
import json

from experiments.shifts import load_queue, shift_jobs, shift_states

#: the module (``convnets.complexity`` as an attribute is the function of that name)
C = importlib.import_module("convnets.complexity")


def test_the_listing_counts_each_model_configs_macs_once(tmp_path):
    C._registered.cache_clear()
    shifts, raw = load_queue()
    states = shift_states(shifts, raw["assumed"], ledger_dir=tmp_path)  # an empty ledger
    assert all(s["estimate_s"] > 0 for s in states)
    models = {(j.config["model"]["name"], json.dumps(j.config["model"]["options"],
                                                     sort_keys=True), j.config["data"]["resize"])
              for s in shifts for j in shift_jobs(s)}
    assert C._registered.cache_info().misses == len(models) < sum(s["runs"] for s in states)
    shift_states(shifts, raw["assumed"], ledger_dir=tmp_path)
    assert C._registered.cache_info().misses == len(models)  # a second listing counts nothing
