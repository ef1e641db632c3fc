"""Seaborn figures (Agg backend), each written as PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from . import stats

matplotlib.use("Agg")
SMOKE = "SMOKE: not evidence"


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
    ok = runs[(runs["status"] == "FINISHED") & runs["final_error"].notna()]
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
                  smoke: bool = False) -> list[Path]:
    """Training (dashed) and evaluation (solid) error against iterations, one panel per group:
    mean over seeds with a 95% t-band (the analogue of He et al. 2015, Fig. 1 and 6)."""
    ok = runs[runs["status"] == "FINISHED"]
    c = curves.merge(ok[["run_id", "group", "variant", "eval_split"]], on="run_id")
    if c.empty:
        return []
    split = c["eval_split"].iloc[0]
    long = c.melt(id_vars=["run_id", "group", "variant", "iteration"],
                  value_vars=["train_error", "eval_error"], var_name="curve", value_name="error")
    long["curve"] = long["curve"].map({"train_error": "train", "eval_error": split})
    groups = list(dict.fromkeys(ok["group"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False,
                             sharey=True)
    for ax, group in zip(axes[0], groups, strict=True):
        sns.lineplot(data=long[long["group"] == group], x="iteration", y="error", hue="variant",
                     style="curve", style_order=[split, "train"],
                     dashes={split: "", "train": (4, 2)}, errorbar=t_band, ax=ax)
        ax.set(title=group, ylabel="error (%)")
        ax.set_ylim(0, min(100, 1.05 * long["error"].max()))
        ax.legend(fontsize=7)
    fig.suptitle(_title(f"training (dashed) and {split} (solid) error; mean and 95% t-band "
                        "over seeds", smoke), fontsize=9)
    return _save(fig, stem)
