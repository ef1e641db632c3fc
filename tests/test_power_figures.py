"""Seeds needed for 80% power and the verdict that says so; seed curves when n is small; the
paper-versus-ours figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, PolyCollection

from analysis import figures, stats, tables
from analysis.runs import RunData
from analysis.sections import sections
from tests.test_analysis_tables import make_runs


def test_seeds_needed_matches_the_textbook_values():
    # d = 1 needs 17 per group for a two-sided t-test at 0.05 with 80% power
    assert stats.seeds_needed(1.0, 1.0) == 17
    assert stats.seeds_needed(-0.5, 0.5) == 17  # the sign of the paper's difference is moot
    assert stats.seeds_needed(0.5, 1.0) == 64
    assert stats.seeds_needed(50.0, 0.1) == 2  # huge effects: two seeds suffice
    assert stats.seeds_needed(0.001, 1.0) == stats.MAX_SEEDS + 1
    assert np.isnan(stats.seeds_needed(float("nan"), 1.0))
    assert np.isnan(stats.seeds_needed(1.0, float("nan")))
    assert stats.needed_text(stats.MAX_SEEDS + 1) == f"> {stats.MAX_SEEDS}"


def test_inconclusive_says_how_many_seeds_would_do():
    assert stats.verdict("lower", 3, 3, -0.2, 0.3, 9.0) == "inconclusive (n = 3; about 9 needed)"
    assert stats.verdict("lower", 3, 3, -0.2, 0.3, 3.0) == "inconclusive"
    assert stats.verdict("lower", 2, 3, -0.2, 0.3, stats.MAX_SEEDS + 1) == \
        f"inconclusive (n = 2; more than {stats.MAX_SEEDS} needed)"
    assert stats.verdict("lower", 3, 3, -0.2, 0.3) == "inconclusive"
    assert stats.verdict("lower", 3, 3, -0.2, 0.01, 9.0) == "reproduced"


NOISY = [("G", "base", "base", "7.00", "", 7.0, "FINISHED"),
         ("G", "close", "base", "6.90", "lower", 7.0, "FINISHED")]


def test_compare_carries_paper_difference_power_and_verdict():
    runs = make_runs(NOISY)  # seed noise sd 0.1, paper difference 0.1 -> d = 1
    table = stats.compare(runs).set_index("variant")
    row = table.loc["close"]
    assert row["paper_diff"] == pytest.approx(-0.1)
    assert row["seeds_needed"] == 17
    assert row["verdict"] == "inconclusive (n = 3; about 17 needed)"
    assert np.isnan(table.loc["base", "seeds_needed"])
    assert stats.claim_verdict(stats.compare(runs)).startswith("inconclusive: 1")
    built = tables.build_section(sections(RunData(runs), "toy")[0], RunData(runs), "toy", {})
    md = tables.to_markdown("toy", [built], ["x"])
    assert "Seeds for 80% power" in md and "| 17 " in md


def _curves(runs):
    rows = []
    for r in runs.itertuples():
        for it in (10, 20, 30):
            rows.append(dict(run_id=r.run_id, iteration=it, train_error=50 - it + r.seed,
                             eval_error=60 - it + r.seed))
    return pd.DataFrame(rows)


def _capture(monkeypatch):
    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, stem: figs.append(fig) or [stem])
    return figs


@pytest.mark.parametrize("seeds,bands", [((0, 1), False), (tuple(range(5)), True)])
def test_curves_show_seeds_when_few_and_bands_when_enough(monkeypatch, seeds, bands):
    import tests.test_analysis_tables as tat

    monkeypatch.setattr(tat, "NOISE", {s: 0.1 * s for s in range(5)})
    runs = make_runs(NOISY, seeds=seeds)
    figs = _capture(monkeypatch)
    figures.curves_figure(runs, _curves(runs), "unused")
    ax = figs[0].axes[0]
    has_band = any(isinstance(c, PolyCollection) for c in ax.collections)
    assert has_band == bands
    drawn = [ln for ln in ax.lines if len(ln.get_xdata()) == 3]
    # per seed: 2 variants x n seeds x (train, eval); bands: one mean line per variant and curve
    assert len(drawn) == (4 if bands else 4 * len(seeds))
    assert ("one line per seed" in figs[0]._suptitle.get_text()) != bands


def test_variant_curves_draw_a_panel_per_variant_and_a_line_per_seed(monkeypatch):
    """curves: per_variant (the Identity Mappings ablations): each variant its own panel,
    each seed its own train (dashed) and eval (solid) line, every point of its curve."""
    spec = NOISY + [(g, v, "base", "", "", 7.0, "FINISHED") for g, v in
                    [("G", "a"), ("G", "b"), ("G", "c"), ("G", "d"), ("H", "h")]]
    runs = make_runs(spec, seeds=(0, 1, 2))
    figs = _capture(monkeypatch)
    figures.variant_curves_figure(runs, _curves(runs), "unused")
    shown = [ax for ax in figs[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == [
        f"{g} / {v} (n = 3)" for g, v in [("G", "base"), ("G", "close"), ("G", "a"), ("G", "b"),
                                          ("G", "c"), ("G", "d"), ("H", "h")]]
    # 7 variants: G wraps after 5 panels, H starts a row of its own (3 rows of 5)
    assert len(figs[0].axes) == 15
    for ax in shown:
        lines = [ln for ln in ax.lines if len(ln.get_xdata()) == 3]
        assert len(lines) == 3 * 2  # seeds x (train, eval)
        assert sorted(str(ln.get_linestyle()) for ln in lines).count("-") == 3
    assert "one line per seed" in figs[0]._suptitle.get_text()


def test_a_tables_curves_value_is_checked():
    from experiments.spec import SpecError, _check_tables

    _check_tables("t", {"curves": "per_variant"}, [{"variants": {"a": {}}}])
    with pytest.raises(SpecError, match="curves: must be true, false or per_variant"):
        _check_tables("t", {"curves": "yes"}, [{"variants": {"a": {}}}])


def test_paper_vs_ours_draws_paper_and_our_interval_per_variant(monkeypatch):
    spec = NOISY + [("G", "gone", "base", "fail", "", 30.0, "FINISHED"),
                    ("G", "free", "base", "", "", 6.0, "FINISHED")]
    table = stats.compare(make_runs(spec))
    figs = _capture(monkeypatch)
    figures.paper_vs_ours_figure(table, "unused", "toy: paper vs ours", "test")
    ax = figs[0].axes[0]
    ticks = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks(),
                                              strict=True)}
    assert list(ticks) == ["G / base", "G / close", "G / gone", "G / free"]  # baseline on top
    assert ticks["G / base"] > ticks["G / free"]
    paper = {round(float(y)): round(float(x), 2) for c in ax.collections
             if isinstance(c, PathCollection)
             for x, y in c.get_offsets()}  # X markers sit 0.15 above their row
    assert paper == {ticks["G / base"]: 7.0, ticks["G / close"]: 6.9, ticks["G / gone"]: 20.0}
    ours = [ln.get_xdata()[0] for ln in ax.lines if ln.get_marker() == "o"]
    assert ours == pytest.approx([7.0, 7.0, 30.0, 6.0], abs=0.11)
    assert ax.get_xlabel() == "test error (%)"
