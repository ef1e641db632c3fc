"""Behaviour pins for the refactoring of the training core (issue 27): every spec job keeps its
config hash, and a tiny fp32 CPU run (alone and as batched seeds) keeps its numbers.

The numbers were computed at commit fb506e7 on a 2-core AVX-512 AMD EPYC. fp32 convolutions may
round differently on another CPU (other kernels), so the losses are compared to a relative
1e-4, far below what any change of recipe moves them by, and far above what a different
summation order does in 16 steps; the error counts and the schedule are compared exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convnets.config import config_hash, hash_of_resolved
from convnets.multiseed import fit_seeds
from convnets.train import fit
from experiments.spec import expand, load_spec
from experiments.spec_check import list_specs

#: rule -> spec|profile|group/variant -> config hash of seed 0. "spelled": ``config_hash`` at
#: fb506e7 (the rule until 2026-12-07, still computed to find a store's older runs);
#: "identity": today's rule. A change that means to re-key runs regenerates the "identity" pins
#: and says so in its commit; the "spelled" ones never change.
HASHES = json.loads((Path(__file__).parent / "config_hashes.json").read_text())

CFG = {"model": {"name": "cifar_resnet", "options": {"depth": 8}},
       "data": {"name": "synthetic", "options": {"n_train": 128, "n_test": 64,
                                                 "image_size": 8}},
       "schedule": {"unit": "epochs", "length": 2}, "batch_size": 16,
       "runtime": {"precision": "fp32", "compile": False}}

#: (train_loss, train_error, test_error) per epoch; lr is 0.1, then 0.001 (drops at 50%, 75%)
FIT_SEED1 = [(2.441495656967163, 89.84375, 81.25), (2.0206165313720703, 71.09375, 71.875)]
BATCHED = {0: [(2.3883702754974365, 86.71875, 85.9375), (2.162662982940674, 77.34375, 71.875)],
           1: [(2.441495418548584, 89.84375, 81.25), (2.020616292953491, 71.09375, 71.875)]}


def _check(history, want):
    assert [h["iteration"] for h in history] == [8, 16]
    assert [h["lr"] for h in history] == pytest.approx([0.1, 0.001], rel=1e-12)
    for h, (loss, train_err, test_err) in zip(history, want, strict=True):
        assert h["train_loss"] == pytest.approx(loss, rel=1e-4)
        assert (h["train_error"], h["test_error"]) == (train_err, test_err)


def test_every_spec_job_keeps_its_config_hash():
    got, spelled = {}, {}
    for name in list_specs():
        spec = load_spec(name)
        for profile in spec["profiles"]:
            for job in expand(spec, profile, seeds=1):
                key = f"{name}|{profile}|{job.group}/{job.variant}"
                got[key] = job.config_hash
                spelled[key] = hash_of_resolved(job.config, rule="spelled")
                # the hash expand stores is the one the job's config resolves to afresh
                assert job.config_hash == config_hash(job.config), (name, profile, job.key)
    for rule, now in (("identity", got), ("spelled", spelled)):
        pins = HASHES[rule]
        changed = {k: (v, now[k]) for k, v in pins.items() if k in now and now[k] != v}
        assert not changed, f"{rule} config hashes changed (pinned, now): {changed}"
        assert len(set(pins) & set(now)) > 100  # the pins still name the jobs


def test_a_tiny_fp32_run_keeps_its_numbers():
    _check(fit(dict(CFG, seed=1), progress=False).history, FIT_SEED1)


def test_tiny_batched_seeds_keep_their_numbers():
    for seed, result in zip([0, 1], fit_seeds(CFG, [0, 1]), strict=True):
        _check(result.history, BATCHED[seed])
