"""Seaborn figures (Agg backend), each written as PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from convnets.names import RunStatus

from . import stats

matplotlib.use("Agg")
SMOKE = "SMOKE: not evidence"
MIN_BAND_SEEDS = 5  # below this a 95% t-band is mostly the t quantile: draw the seeds instead


def t_band(x) -> tuple[float, float]:
    """95% t-interval of the mean over seeds (NaN with one seed); seaborn's errorbar callable."""
    d = stats.describe(x)
    return d["ci_low"], d["ci_high"]


def _save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(f"{stem}.png"), Path(f"{stem}.pdf")]
    for p in paths:
        # no creation date in the PDF, so regenerated figures are byte-identical
        meta = {"CreationDate": None} if p.suffix == ".pdf" else {}
        fig.savefig(p, dpi=150, bbox_inches="tight", metadata=meta)
    plt.close(fig)
    return paths


def _clip(ax) -> None:
    """Errors are percentages: keep wide t-bands (few seeds) from stretching the axis."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, 0), min(hi, 100))


def _title(text: str, smoke: bool) -> str:
    return f"{SMOKE}. {text}" if smoke else text


def errors_figure(runs: pd.DataFrame, table: pd.DataFrame, stem: Path, title: str,
                  smoke: bool = False) -> list[Path]:
    """Per group: seeds, mean with 95% t-interval, and the paper's number (red X)."""
    groups = list(dict.fromkeys(table["group"]))
    ok = runs[(runs["status"] == RunStatus.FINISHED) & runs["final_error"].notna()]
    split = runs["eval_split"].iloc[0] if len(runs) else "test"
    width = max(4.0, 1.3 * len(table) + 1.5 * len(groups))
    fig, axes = plt.subplots(1, len(groups), figsize=(width, 4), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        t = table[table["group"] == group]
        order, d = list(t["variant"]), ok[ok["group"] == group]
        if len(d):
            np.random.seed(0)  # seaborn draws the jitter from numpy's global RNG
            sns.stripplot(data=d, x="variant", y="final_error", order=order, color="0.6",
                          size=4, jitter=0.1, ax=ax)
            sns.pointplot(data=d, x="variant", y="final_error", order=order, errorbar=t_band,
                          linestyle="none", capsize=0.15, color="C0", err_kws={"linewidth": 1.5},
                          ax=ax)
        for i, paper in enumerate(t["paper_error"]):
            if paper.strip().lower() == "fail":
                ax.annotate("paper: fail", (i, 1), xycoords=("data", "axes fraction"),
                            ha="center", va="top", color="C3", fontsize=7)
            elif paper:
                ax.scatter([i], [float(paper)], marker="X", s=70, color="C3", zorder=5)
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
        ax.set(title=group, xlabel="", ylabel=f"{split} error (%)")
        _clip(ax)
    axes[0][0].legend(handles=[
        Line2D([], [], color="0.6", marker="o", ls="none", label="seeds"),
        Line2D([], [], color="C0", marker="o", label="mean, 95% t-interval"),
        Line2D([], [], color="C3", marker="X", ls="none", label="paper")], fontsize=7)
    fig.suptitle(_title(title, smoke), fontsize=9)
    return _save(fig, stem)


def curves_figure(runs: pd.DataFrame, curves: pd.DataFrame, stem: Path,
                  smoke: bool = False, conditions: str = "") -> list[Path]:
    """Training (dashed) and evaluation (solid) error against iterations, one panel per group
    (the analogue of He et al. 2015, Fig. 1 and 6): mean with a 95% t-band over seeds when every
    variant has ``MIN_BAND_SEEDS`` or more, else every seed's own curve."""
    ok = runs[runs["status"] == RunStatus.FINISHED]
    c = curves.merge(ok[["run_id", "group", "variant", "eval_split"]], on="run_id")
    if c.empty:
        return []
    split = c["eval_split"].iloc[0]
    long = c.melt(id_vars=["run_id", "group", "variant", "iteration"],
                  value_vars=["train_error", "eval_error"], var_name="curve", value_name="error")
    long["curve"] = long["curve"].map({"train_error": "train", "eval_error": split})
    n_min = int(c.groupby("variant")["run_id"].nunique().min())
    bands = n_min >= MIN_BAND_SEEDS
    how = (dict(errorbar=t_band) if bands
           else dict(units="run_id", estimator=None, errorbar=None, linewidth=0.9))
    groups = list(dict.fromkeys(ok["group"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False,
                             sharey=True)
    for ax, group in zip(axes[0], groups, strict=True):
        sns.lineplot(data=long[long["group"] == group], x="iteration", y="error", hue="variant",
                     style="curve", style_order=[split, "train"],
                     dashes={split: "", "train": (4, 2)}, ax=ax, **how)
        ax.set(title=group, ylabel="error (%)")
        ax.set_ylim(0, min(100, 1.05 * long["error"].max()))
        ax.legend(fontsize=7)
    what = ("mean and 95% t-band over seeds" if bands
            else f"one line per seed (n = {n_min} per variant; too few for a t-band)")
    text = f"training (dashed) and {split} (solid) error; {what}"
    fig.suptitle(_title(f"{conditions}\n{text}" if conditions else text, smoke), fontsize=9,
                 y=1.04 if conditions else 0.98)
    return _save(fig, stem)


def variant_curves_figure(runs: pd.DataFrame, curves: pd.DataFrame, stem: Path,
                          smoke: bool = False, conditions: str = "") -> list[Path]:
    """One panel per variant (a row per group), one line per seed: training error (dashed)
    and evaluation error (solid) against iterations, each seed in its own colour; for
    ablations with many variants, where one panel per group would stack them all."""
    ok = runs[runs["status"] == RunStatus.FINISHED]
    c = curves.merge(ok[["run_id", "group", "variant", "seed", "eval_split"]], on="run_id")
    if c.empty:
        return []
    split = c["eval_split"].iloc[0]
    groups = list(dict.fromkeys(ok["group"]))
    variants = {g: list(dict.fromkeys(ok.loc[ok["group"] == g, "variant"])) for g in groups}
    cols = min(5, max(len(v) for v in variants.values()))
    # each group starts a row of its own and wraps after ``cols`` panels
    place = [(g, v) for g in groups for v in variants[g]
             + [None] * (-len(variants[g]) % cols)]
    rows = len(place) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False,
                             sharex=True, sharey=True)
    seeds = sorted({int(s) for s in c["seed"].dropna()})
    colour = {s: f"C{i % 10}" for i, s in enumerate(seeds)}
    top = min(100.0, 1.05 * float(np.nanmax(c[["train_error", "eval_error"]].to_numpy())))
    for i, (group, variant) in enumerate(place):
        ax = axes[i // cols][i % cols]
        if variant is None:
            ax.set_visible(False)
            continue
        v = c[(c["group"] == group) & (c["variant"] == variant)]
        for (seed, _), r in v.sort_values("iteration").groupby(["seed", "run_id"]):
            ax.plot(r["iteration"], r["eval_error"], color=colour[int(seed)], lw=0.9)
            ax.plot(r["iteration"], r["train_error"], color=colour[int(seed)], lw=0.9,
                    ls=(0, (4, 2)))
        ax.set_title(f"{group} / {variant} (n = {v['run_id'].nunique()})", fontsize=8)
        ax.set_ylim(0, top)
        ax.tick_params(labelsize=7, labelbottom=True)
        if i % cols == 0:
            ax.set_ylabel("error (%)", fontsize=8)
        ax.set_xlabel("iteration", fontsize=8)
    handles = [Line2D([], [], color=colour[s], label=f"seed {s}") for s in seeds]
    handles += [Line2D([], [], color="k", label=split),
                Line2D([], [], color="k", ls=(0, (4, 2)), label="train (running)")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=7,
               bbox_to_anchor=(0.5, -0.02))
    text = f"training (dashed) and {split} (solid) error per variant, one line per seed"
    fig.suptitle(_title(f"{conditions}\n{text}" if conditions else text, smoke), fontsize=9,
                 y=1.02)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, stem)


def paper_vs_ours_figure(table: pd.DataFrame, stem: Path, title: str, split: str = "test",
                         smoke: bool = False) -> list[Path]:
    """One row per variant: the paper's error (red X; 'fail' drawn at 20% with an arrow) beside
    our mean and its 95% t-interval (blue; a bare dot with one seed)."""
    t = table.reset_index(drop=True)
    labels = [f"{g} / {v}" if g else v for g, v in zip(t["group"], t["variant"], strict=True)]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(t) + 1.6))
    y = np.arange(len(t))[::-1]
    for yi, r in zip(y, t.itertuples(), strict=True):
        paper = str(r.paper_error).strip().lower()
        if paper == "fail":
            ax.annotate("", (24, yi + 0.15), (20, yi + 0.15),
                        arrowprops=dict(arrowstyle="->", color="C3"))
            ax.scatter([20], [yi + 0.15], marker="X", s=60, color="C3", zorder=5)
        elif paper:
            ax.scatter([float(paper)], [yi + 0.15], marker="X", s=60, color="C3", zorder=5)
        if r.n >= 2 and np.isfinite(r.ci_low):
            ax.errorbar([r.mean], [yi - 0.15], xerr=[[r.mean - r.ci_low], [r.ci_high - r.mean]],
                        fmt="o", color="C0", capsize=3, markersize=5)
        elif r.n:
            ax.scatter([r.mean], [yi - 0.15], color="C0", s=25)
    ax.set_yticks(y, labels, fontsize=8)
    lo, hi = ax.get_xlim()
    ax.set_xlim(max(lo, 0), min(hi, 100))  # errors are percentages; wide intervals are cut
    ax.set_xlabel(f"{split} error (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=[Line2D([], [], color="C3", marker="X", ls="none", label="paper"),
                       Line2D([], [], color="C0", marker="o", label="ours: mean, 95% t-interval")],
              fontsize=7, loc="best")
    fig.suptitle(_title(title, smoke), fontsize=9)
    return _save(fig, stem)
