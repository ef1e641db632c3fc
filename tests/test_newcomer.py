"""What a newcomer reads: help texts, citations and tables without raw library warnings."""

from __future__ import annotations

import warnings

import numpy as np

from analysis import stats


def test_every_run_option_says_what_it_does():
    from experiments.cli_args import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    run = sub.choices["run"]
    silent = [a.option_strings[0] for a in run._actions
              if a.option_strings and a.dest != "help" and not (a.help or "").strip()]
    assert silent == []


def test_info_cites_identity_mappings_for_its_units_only():
    from convnets.__main__ import info

    assert "Identity Mappings" in info("resnet20", {"unit": "full_preact"}).splitlines()[1]
    assert "Identity Mappings" not in info("resnet20", {}).splitlines()[1]
    assert "Identity Mappings" not in info("resnet20", {"unit": "original"}).splitlines()[1]


def test_identical_seeds_give_no_library_warning_and_no_test():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = stats.welch([81.25, 81.25], [81.25, 81.25])
    assert np.isnan(out["p"]) and out["diff"] == 0.0
