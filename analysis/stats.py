"""Seed-level statistics, comparisons against a group's baseline, and verdicts.

Errors are in percent; a difference is variant minus baseline in percentage points.
The primary test is Welch's t-test over seeds; rank tests cannot reach p < 0.05 with 3 seeds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.meta_analysis import effectsize_smd
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower

from convnets.names import RunStatus

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 1000  # "more than this" beyond
LEVEL = 0.95
BOOTSTRAP_LABEL = "test-set noise only, not seed-to-seed variance"
NAN = float("nan")


def describe(x) -> dict:
    """n, mean, sd, median and the 95% t-interval of the mean."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    out = dict(n=n, mean=NAN, sd=NAN, median=NAN, ci_low=NAN, ci_high=NAN)
    if n:
        out.update(mean=float(x.mean()), median=float(np.median(x)))
    if n > 1:
        sem = stats.sem(x)
        lo, hi = stats.t.interval(LEVEL, n - 1, loc=x.mean(), scale=sem) if sem > 0 else (
            x.mean(), x.mean())
        out.update(sd=float(x.std(ddof=1)), ci_low=float(lo), ci_high=float(hi))
    return out


def paper_position(x, paper: float) -> dict:
    """Where a single published number lies in our seed distribution ``x``: its distance from
    our mean in our seed-to-seed sds (``z``), the 95% prediction interval for one more seed
    (mean +- t(n-1) * sd * sqrt(1 + 1/n)), and the two-sided p of a seed as far out as the paper's
    number (t = (paper - mean) / (sd * sqrt(1 + 1/n)), n - 1 df). A paper reports one run (or a
    mean of a few), so the question is whether it is a plausible draw from our runs, not
    whether our mean equals it. NaNs below 2 seeds or with no spread."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    out = dict(n=n, z=NAN, pi_low=NAN, pi_high=NAN, p_pred=NAN)
    if n < 2 or not np.isfinite(paper) or x.std(ddof=1) == 0:
        return out
    m, sd = float(x.mean()), float(x.std(ddof=1))
    scale = sd * np.sqrt(1 + 1 / n)
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * scale
    t = (paper - m) / scale
    out.update(z=(paper - m) / sd, pi_low=m - half, pi_high=m + half,
               p_pred=float(2 * stats.t.sf(abs(t), n - 1)))
    return out


def paper_positions(runs: pd.DataFrame) -> pd.DataFrame:
    """``paper_position`` for every variant with a numeric paper error (finished runs)."""
    rows = []
    for (group, variant), v in runs.groupby(["group", "variant"], sort=False):
        paper = pd.to_numeric(pd.Series([p for p in v["paper_error"] if p]), errors="coerce")
        if paper.empty or not np.isfinite(paper.iloc[0]):
            continue
        x = v.loc[(v["status"] == RunStatus.FINISHED) & v["final_error"].notna(), "final_error"]
        rows.append(dict(group=group, variant=variant, paper=float(paper.iloc[0]),
                         **describe(x), **{k: val for k, val in
                                           paper_position(x, float(paper.iloc[0])).items()
                                           if k != "n"}))
    return pd.DataFrame(rows)


def welch(a, b) -> dict:
    """Welch's t-test of mean(a) - mean(b) with its Welch-Satterthwaite 95% CI."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no seed-to-seed spread on either side: no t-test
        diff = float(a.mean() - b.mean())  # (scipy would warn of catastrophic cancellation)
        return dict(diff=diff, diff_ci_low=diff, diff_ci_high=diff, t=NAN, df=NAN, p=NAN)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(LEVEL)
    return dict(diff=float(a.mean() - b.mean()), diff_ci_low=float(ci.low),
                diff_ci_high=float(ci.high), t=float(res.statistic), df=float(res.df),
                p=float(res.pvalue))


def contrast(plus: list, minus: list) -> dict:
    """Welch's test of a contrast of independent groups' means, sum(plus) - sum(minus) (each
    a group's seed errors): the interaction (a1 - a0) - (b1 - b0) is ``contrast([a1, b0],
    [a0, b1])``. Standard error from the groups' own variances, degrees of freedom by
    Welch-Satterthwaite; with two groups this is ``welch``. Keys as ``welch``'s (``diff`` is
    the contrast); NaN unless every group has 2+ seeds and some spread."""
    groups = [np.asarray(x, dtype=float) for x in (*plus, *minus)]
    est = float(sum(g.mean() for g in groups[: len(plus)])
                - sum(g.mean() for g in groups[len(plus):])) if all(len(g) for g in groups) \
        else NAN
    out = dict(diff=est, diff_ci_low=NAN, diff_ci_high=NAN, t=NAN, df=NAN, p=NAN)
    if any(len(g) < 2 for g in groups):
        return out
    v = [g.var(ddof=1) / len(g) for g in groups]
    se = float(np.sqrt(sum(v)))
    if se == 0:
        return out
    df = se**4 / sum(vi**2 / (len(g) - 1) for vi, g in zip(v, groups, strict=True))
    half = float(stats.t.ppf(1 - (1 - LEVEL) / 2, df)) * se
    return dict(diff=est, diff_ci_low=est - half, diff_ci_high=est + half, t=est / se, df=df,
                p=float(2 * stats.t.sf(abs(est / se), df)))


def tost(a, b, delta: float) -> dict:
    """Equivalence of mean(a) and mean(b) within +-``delta`` points: two one-sided Welch tests
    (H0: diff <= -delta, H0: diff >= +delta), p = the larger of the two, and the 90% Welch CI
    of the difference (p < 0.05 exactly when that CI lies inside (-delta, +delta))."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = float(np.sqrt(va + vb))
    diff = float(a.mean() - b.mean())
    if se == 0:  # no seed-to-seed spread at all: equivalent iff the difference is inside
        inside = abs(diff) < delta
        return dict(p_tost=0.0 if inside else 1.0, ci90_low=diff, ci90_high=diff)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    p_low = float(stats.t.sf((diff + delta) / se, df))  # H0: diff <= -delta
    p_high = float(stats.t.cdf((diff - delta) / se, df))  # H0: diff >= +delta
    half = float(stats.t.ppf(1 - ALPHA, df)) * se
    return dict(p_tost=max(p_low, p_high), ci90_low=diff - half, ci90_high=diff + half)


def precision_mix(precisions, errors) -> dict:
    """How a cell's seeds were computed ('3 bf16, 2 fp32') and, with 2+ seeds of each, the
    Welch p of bf16 against fp32 (NaN otherwise): a cell whose precisions disagree is flagged."""
    prec = pd.Series(list(precisions), dtype=object).replace("", "unknown")
    counts = prec.value_counts()
    mix = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    x = pd.Series(np.asarray(errors, dtype=float), index=prec.index)
    a, b = x[prec == "bf16"].to_numpy(), x[prec == "fp32"].to_numpy()
    p = welch(a, b)["p"] if len(a) >= 2 and len(b) >= 2 else NAN
    return dict(precisions=mix, precision_p=p)


def hedges_g(a, b) -> float:
    """Bias-corrected standardised mean difference of a - b (pooled sd)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread: no standardised difference
        return NAN
    g, _ = effectsize_smd(a.mean(), a.std(ddof=1), len(a), b.mean(), b.std(ddof=1), len(b))
    return float(g)


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values; NaN entries are left out of the family and stay NaN."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, NAN)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
    return out


def mcnemar_exact(pred_a, pred_b, target) -> dict:
    """Exact McNemar test on the examples exactly one of two runs gets right."""
    ok_a, ok_b = np.asarray(pred_a) == target, np.asarray(pred_b) == target
    table = [[np.sum(ok_a & ok_b), np.sum(ok_a & ~ok_b)],
             [np.sum(~ok_a & ok_b), np.sum(~ok_a & ~ok_b)]]
    return dict(only_a=int(table[0][1]), only_b=int(table[1][0]),
                p=float(mcnemar(table, exact=True).pvalue))


def paired_bootstrap(pred_a, pred_b, target, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Percentile bootstrap (resampling test examples) of error(a) - error(b) in points.

    The error difference is minus the accuracy difference. It reflects test-set noise only,
    not seed-to-seed variance.
    """
    d = 100.0 * ((np.asarray(pred_a) != target).astype(float)
                 - (np.asarray(pred_b) != target).astype(float))
    res = stats.bootstrap((d,), np.mean, n_resamples=n_resamples, method="percentile",
                          batch=200, rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return dict(diff=float(d.mean()), ci_low=float(ci.low), ci_high=float(ci.high),
                label=BOOTSTRAP_LABEL)


def paper_difference(paper_error: str, paper_baseline: str) -> float:
    """The paper's variant - baseline difference in points (NaN without two numbers)."""
    try:
        return float(paper_error) - float(paper_baseline)
    except (TypeError, ValueError):
        return NAN


def seeds_needed(paper_diff: float, sd: float, alpha: float = ALPHA,
                 power: float = POWER) -> float:
    """Seeds per variant for a two-sided Welch/Student t-test at ``alpha`` to detect the
    paper's difference with ``power``, if the seed-to-seed sd is ``sd`` (NaN if unknown;
    ``MAX_SEEDS + 1`` when beyond reach). Unadjusted alpha: Holm needs somewhat more."""
    if not (np.isfinite(paper_diff) and np.isfinite(sd)) or paper_diff == 0:
        return NAN
    if sd <= 0:
        return 2.0
    effect, solver = abs(paper_diff) / sd, TTestIndPower()

    def reach(n: float) -> float:
        return float(solver.power(effect, nobs1=n, alpha=alpha, ratio=1.0))

    if not reach(2) < power:  # NaN: an effect so large that the t distribution overflows
        return 2.0
    if reach(MAX_SEEDS) < power:
        return MAX_SEEDS + 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = solver.solve_power(effect_size=effect, alpha=alpha, power=power, ratio=1.0,
                               alternative="two-sided")
    n = float(np.asarray(n, dtype=float).item())
    return float(np.ceil(n)) if np.isfinite(n) else NAN


def pooled_sd(a, b) -> float:
    """sqrt of the mean of the two seed variances (NaN unless both have 2+ seeds)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return NAN
    return float(np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2))


def needed_text(needed: float) -> str:
    if not np.isfinite(needed):
        return "–"
    return f"> {MAX_SEEDS}" if needed > MAX_SEEDS else str(int(needed))


def paper_direction(paper_error: str, expected: str) -> str:
    """'higher', 'lower' or ''; a variant the paper reports as 'fail' expects higher error."""
    if str(paper_error).strip().lower() == "fail":
        return "higher"
    return str(expected).strip().lower()


def verdict(direction: str, n_variant: int, n_baseline: int, diff: float, p_holm: float,
            needed: float = NAN, delta: float = NAN, p_tost: float = NAN) -> str:
    """reproduced / contradicted / equivalent within +-delta (TOST, when no difference is
    significant) / inconclusive (saying how many seeds would be needed when our n is below
    what 80% power to see the paper's difference takes) / no direction."""
    n = min(n_variant, n_baseline)
    if direction not in ("higher", "lower"):
        if n >= 2 and not p_holm < ALPHA and p_tost < ALPHA:
            return f"equivalent within ±{delta:g} (no paper direction)"
        return "no paper direction"
    if n < 2:
        return f"insufficient seeds (n={n})"
    if not p_holm < ALPHA and p_tost < ALPHA:
        return f"equivalent within ±{delta:g}"
    if not p_holm < ALPHA:  # also NaN, e.g. zero variance in both groups
        if np.isfinite(needed) and needed > n:
            about = f"more than {MAX_SEEDS}" if needed > MAX_SEEDS else f"about {int(needed)}"
            return f"inconclusive (n = {n}; {about} needed)"
        return "inconclusive"
    agrees = diff > 0 if direction == "higher" else diff < 0
    return "reproduced" if agrees else "contradicted"


def compare(runs: pd.DataFrame, deltas: dict[str, float] | None = None, *,
            power_from: str = "paper", family: list[float] = ()) -> pd.DataFrame:
    """One row per variant of one claim: summary, comparison with its group's baseline, verdict.

    `runs` holds the claim's runs of one section, one per (group, variant, seed), FINISHED and
    FAILED; groups and variants keep their order of first appearance, baseline first.
    ``deltas``: group -> equivalence margin in points (the spec's ``equivalence_delta``); a
    group with one gets a TOST per comparison. ``family``: the raw p values of the section's
    other tests (``contrast``s a spec declares); the difference tests' p values are
    Holm-adjusted together with them (``table.attrs['family_holm']`` gives theirs back), and
    the TOST p values within the same family. ``power_from``: ``paper`` (seeds to detect the
    paper's difference: only where our schedule is the paper's) or ``observed`` (the difference
    seen here).
    """
    rows = []
    deltas = deltas or {}
    for group, g in runs.groupby("group", sort=False):
        base_name = g["baseline"].mode().iloc[0]
        ok = g[(g["status"] == RunStatus.FINISHED) & g["final_error"].notna()]
        base = ok.loc[ok["variant"] == base_name, "final_error"].to_numpy()
        variants = list(dict.fromkeys([base_name, *g["variant"]]))
        for variant in variants:
            v = g[g["variant"] == variant]
            x = ok.loc[ok["variant"] == variant, "final_error"].to_numpy()
            paper = next((p for p in v["paper_error"] if p), "")
            base_paper = next((p for p in g.loc[g["variant"] == base_name, "paper_error"] if p),
                              "")
            row = dict(group=group, variant=variant, baseline=base_name, n_baseline=len(base),
                       paper_error=paper,
                       expected=paper_direction(paper, next((e for e in v["expected"] if e), "")),
                       **describe(x), n_failed=int((v["status"] == RunStatus.FAILED).sum()),
                       diff=NAN, diff_ci_low=NAN, diff_ci_high=NAN, t=NAN, df=NAN, p=NAN,
                       hedges_g=NAN, paper_diff=NAN, seeds_needed=NAN,
                       delta=float(deltas.get(group, NAN)), p_tost=NAN, ci90_low=NAN,
                       ci90_high=NAN,
                       **precision_mix(ok.loc[ok["variant"] == variant, "precision"], x))
            if variant != base_name:
                row["paper_diff"] = paper_difference(paper, base_paper)
                target = (row["paper_diff"] if power_from == "paper" else
                          float(x.mean() - base.mean()) if len(x) and len(base) else NAN)
                row["seeds_needed"] = seeds_needed(target, pooled_sd(x, base))
            if variant != base_name and len(x) and len(base):
                row["diff"] = float(x.mean() - base.mean())
                if len(x) > 1 and len(base) > 1:
                    row.update(welch(x, base), hedges_g=hedges_g(x, base))
                    if np.isfinite(row["delta"]):
                        row.update(tost(x, base, row["delta"]))
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    family = list(family)
    adjusted = holm([*table["p"], *family])
    table["p_holm"] = adjusted[: len(table)]
    table["p_tost_raw"] = table["p_tost"]
    table["p_tost"] = holm([*table["p_tost"], *[NAN] * len(family)])[: len(table)]
    table["verdict"] = [
        "baseline" if r.variant == r.baseline
        else f"all runs diverged (n_failed={r.n_failed})" if r.n == 0 and r.n_failed
        else verdict(r.expected, r.n, r.n_baseline, r.diff, r.p_holm, r.seeds_needed,
                     r.delta, r.p_tost)
        for r in table.itertuples()]
    table.attrs["family_holm"] = list(adjusted[len(table):])
    return table


def claim_verdict(table: pd.DataFrame) -> str:
    """One line summarising the comparisons of a claim."""
    v = table.loc[table["verdict"] != "baseline", "verdict"] if len(table) else pd.Series([])
    directional = v[~v.str.contains("no paper direction", regex=False)]
    kind = directional.str.split(" ", n=1, regex=False).str[0]
    counts = {k: int((kind == k).sum())
              for k in ("reproduced", "contradicted", "equivalent", "inconclusive")}
    other = len(directional) - sum(counts.values())
    if not len(directional):
        overall = "not testable"
    elif counts["contradicted"]:
        overall = "mixed" if counts["reproduced"] else "contradicted"
    elif counts["reproduced"] == len(directional):
        overall = "reproduced"
    elif counts["reproduced"]:
        overall = "partly reproduced"
    elif counts["equivalent"]:
        overall = "not reproduced (equivalent within the stated margin)"
    else:
        overall = "inconclusive"
    parts = [f"{k} {n}" for k, n in counts.items()]
    if other:
        parts.append(f"untestable {other} (too few seeds or diverged)")
    undirected = v[v.str.contains("no paper direction", regex=False)]
    if len(undirected):
        eq = int(undirected.str.startswith("equivalent").sum())
        parts.append(f"no paper direction {len(undirected)}"
                     + (f" ({eq} of them equivalent)" if eq else ""))
    return (f"{overall}: {len(directional)} directional comparison(s), "
            f"Holm-adjusted Welch p < {ALPHA} (equivalence: TOST p < {ALPHA}): "
            + ", ".join(parts))


def paired_tests(runs: pd.DataFrame, preds: dict, targets: dict) -> pd.DataFrame:
    """McNemar and paired bootstrap for each variant vs baseline pair run with the same seed."""
    ok = runs[runs["status"] == RunStatus.FINISHED]
    rows = []
    for _, g in ok.groupby("group", sort=False):
        for variant in dict.fromkeys(g["variant"]):
            for r in g[g["variant"] == variant].sort_values("seed").itertuples():
                base = g[(g["variant"] == r.baseline) & (g["seed"] == r.seed)]
                if variant == r.baseline or base.empty:
                    continue
                rows.append(_paired_row(r, base.iloc[0], preds, targets))
    return pd.DataFrame([r for r in rows if r])


def _paired_row(r, b, preds: dict, targets: dict) -> dict | None:
    if r.run_id not in preds or b.run_id not in preds:
        return None
    pa, pb, target = preds[r.run_id], preds[b.run_id], targets[r.run_id]
    if len(pa) != len(pb) or not np.array_equal(target, targets[b.run_id]):
        return None
    m, bs = mcnemar_exact(pa, pb, target), paired_bootstrap(pa, pb, target)
    return dict(group=r.group, variant=r.variant, baseline=r.baseline, seed=r.seed,
                only_variant_right=m["only_a"], only_baseline_right=m["only_b"],
                mcnemar_p=m["p"], diff=bs["diff"], boot_ci_low=bs["ci_low"],
                boot_ci_high=bs["ci_high"])
