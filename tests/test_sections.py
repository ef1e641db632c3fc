"""Tables that say what they show: sections per profile and horizon, verdicts that name their
conditions, contrasts (the degradation interaction) with known statistics, every planned run
accounted for, and live-store tables that never overwrite the ledger's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import runs as io
from analysis import stats, tables
from analysis.sections import account, not_run, read_spec, sections
from tests.test_analysis_tables import make_runs

A1 = np.array([20.1, 21.3, 19.7, 20.8])
A0 = np.array([10.2, 9.1, 10.9, 10.4])
C = np.array([5.0, 5.0, 5.0, 5.0])


def test_a_two_group_contrast_is_welchs_test():
    got = stats.contrast([A1], [A0])
    want = sps.ttest_ind(A1, A0, equal_var=False)
    ci = want.confidence_interval(0.95)
    assert got["p"] == pytest.approx(want.pvalue, rel=1e-12)
    assert got["df"] == pytest.approx(want.df, rel=1e-12)
    assert (got["diff_ci_low"], got["diff_ci_high"]) == pytest.approx((ci.low, ci.high))


def test_an_interaction_with_constant_other_groups_is_welchs_test_of_the_first_pair():
    got = stats.contrast([A1, C], [A0, C + 1])  # (A1 - A0) - (C + 1 - C)
    want = sps.ttest_ind(A1, A0, equal_var=False)
    assert got["diff"] == pytest.approx(A1.mean() - A0.mean() - 1)
    assert got["df"] == pytest.approx(want.df, rel=1e-12)
    t = (A1.mean() - A0.mean() - 1) / np.sqrt(A1.var(ddof=1) / 4 + A0.var(ddof=1) / 4)
    assert got["p"] == pytest.approx(2 * sps.t.sf(abs(t), want.df), rel=1e-12)


def test_an_interaction_of_four_equal_variance_groups_has_4_n_minus_1_df():
    """Four groups of n = 3 with one variance s^2 = 1: se = sqrt(4 / 3), df = 4 (n - 1) = 8."""
    base = np.array([-1.0, 0.0, 1.0])
    got = stats.contrast([base + 10, base], [base + 3, base + 1])  # (10 - 3) - (1 - 0) = 6
    assert got["diff"] == pytest.approx(6.0)
    assert got["df"] == pytest.approx(8.0)
    se = np.sqrt(4 / 3)
    assert got["p"] == pytest.approx(2 * sps.t.sf(6 / se, 8), rel=1e-12)
    assert got["diff_ci_high"] - 6 == pytest.approx(sps.t.ppf(0.975, 8) * se)


DEG = [("plain", "plain20", "plain20", "", "", 30.0, "FINISHED"),
       ("plain", "plain56", "plain20", "", "higher", 60.0, "FINISHED"),
       ("residual", "resnet20", "resnet20", "8.75", "", 28.0, "FINISHED"),
       ("residual", "resnet56", "resnet20", "6.97", "", 27.0, "FINISHED")]


def _horizon_data():
    """Paper-profile runs stopped at 1,600 (seeds 0-2), one of them extended to 3,200, and a
    compressed-schedule cpu section: marks give each run's numbers at its horizons."""
    runs = make_runs(DEG, experiment="degradation")
    runs["horizon"] = "1600"
    runs["total_iterations"] = "64000"
    runs.loc[runs["seed"] == 2, "horizon"] = "3200"
    curves = []
    for r in runs.itertuples():
        for h in (1600, 3200) if r.horizon == "3200" else (1600,):
            curves.append(dict(run_id=r.run_id, iteration=h, epoch=h / 390,
                               eval_error=r.final_error + (h == 1600) * 5.0,
                               train_error=r.final_error + 2, clean_train_error=r.final_error - 1,
                               train_window=430, horizon=h))
    cpu = make_runs(DEG, experiment="degradation", profile="cpu")
    cpu["run_id"] = cpu["run_id"] + "-cpu"
    data = io.RunData(io.normalise_runs(pd.concat([runs, cpu])), pd.DataFrame(curves))
    return data, runs


def test_sections_are_per_profile_and_horizon_and_read_the_marks():
    data, runs = _horizon_data()
    secs = sections(data, "degradation")
    assert [(s.profile, s.horizon) for s in secs] == [("paper", 3200), ("paper", 1600),
                                                      ("cpu", None)]
    at1600 = secs[1].sel.set_index("run_id")
    assert len(at1600) == 12  # the run that went on to 3,200 answers 1,600 too
    r = runs.set_index("run_id").loc["degradation-resnet56-2"]
    assert at1600.loc["degradation-resnet56-2", "final_error"] == r.final_error + 5.0
    assert at1600.loc["degradation-resnet56-2", "final_clean_train_error"] == r.final_error - 1
    assert not at1600.loc["degradation-resnet56-2", "stopped_here"]  # predictions of 3,200
    assert len(secs[0].sel) == 4 and secs[0].sel["seed"].eq(2).all()


def test_every_verdict_names_its_horizon_and_the_interaction_is_reported(tmp_path):
    data, _ = _horizon_data()
    tables.write_claim(data, "degradation", tmp_path, None, draw=False)
    md = (tmp_path / "degradation.md").read_text()
    head, _, rest = md.partition("\n## ")
    assert "**Claim verdict:** insufficient seeds" not in head
    assert "at horizon 3,200 of the paper's schedule" in head
    sec1600 = rest.split("\n## ")[1]
    assert sec1600.startswith("paper profile at horizon 1,600 iterations of the paper's "
                              "schedule (2.5% of its 64,000 iterations)")
    rows = [line for line in sec1600.splitlines() if line.startswith("| plain56")]
    assert rows and rows[0].rstrip(" |").endswith("reproduced at horizon 1,600 of the paper's "
                                                  "schedule")
    assert "| depth penalty, plain minus residual" in sec1600
    assert "Final training error, clean" in sec1600 and "Final training error, running" in sec1600
    assert "## The paper's numbers against our seeds" not in md  # no section ran to the end
    cpu = rest.split("\n## ")[2]
    assert "at 2.5% of the schedule (compressed)" not in cpu  # no configs: schedule unknown
    assert "(cpu profile, not the paper's schedule)" in cpu
    csv = pd.read_csv(tmp_path / "degradation.csv")
    assert sorted(set(csv["horizon"].dropna().astype(int))) == [1600, 3200]


def test_every_planned_run_is_accounted_for():
    runs = make_runs(DEG[2:], experiment="degradation")
    more = make_runs(DEG[2:3], experiment="degradation", seeds=(0,))
    runs = pd.concat([runs, more.assign(seed=3, run_id="r20-3")])
    runs.loc[(runs["variant"] == "resnet56") & (runs["seed"] == 1), "status"] = "KILLED"
    spec = {"profiles": {"paper": {"seeds": 5}}}
    sec = sections(io.RunData(io.normalise_runs(runs)), "degradation")[0]
    acc = account(sec, spec)
    assert acc[("residual", "resnet20")] == "5 / 4 / 0 / 0 / 0 / 1 (seed 4)"
    assert acc[("residual", "resnet56")] == "5 / 2 / 0 / 1 / 0 / 2 (seeds 3, 4)"
    # a planned group with no run in the section (ResNet-164 before a GPU runs it) is named
    groups = read_spec("degradation")["groups"]
    assert not_run(sec, dict(spec, groups=groups)) == ["plain: plain20, plain56"]
    only = {"paper": {"seeds": 5, "variants": ["resnet20", "residual/resnet56", "plain20"]}}
    assert not_run(sec, {"profiles": only, "groups": groups}) == ["plain: plain20"]


def test_a_live_store_never_writes_over_the_ledgers_tables(tmp_path, capsys):
    from analysis.__main__ import main
    from convnets.names import REPO_ROOT

    with pytest.raises(SystemExit) as err:
        main(["tables", "--source", "mlflow", "--out", str(REPO_ROOT / "paper_tables")])
    assert err.value.code == 1
    assert "never go over the ledger's" in capsys.readouterr().err
