"""Per-claim tables (Markdown, LaTeX, CSV), figures and the paper_tables/README.md index."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from convnets.names import PROFILES  # most faithful first

from . import figures, stats
from .io import RunData, log_to_analysis_run

HEADERS = ["Variant", "Paper", "Ours (mean ± sd, n)", "Failed", "Δ vs baseline [95% CI]",
           "p (Holm)", "Hedges' g", "Seeds for 80% power", "Verdict"]
PAIRED_HEADERS = ["Variant", "Seed", "Only variant right", "Only baseline right",
                  "McNemar exact p", "Δ error [95% bootstrap CI]"]
NOTES = ("Errors in %; Δ = variant − baseline in percentage points, Welch 95% CI; p: Welch's "
         "t-test over seeds, Holm-adjusted across the comparisons of this table; Hedges' g: "
         "bias-corrected standardised difference. Verdict: reproduced = paper's direction and "
         "Holm p < 0.05; contradicted = significant, opposite direction; else inconclusive. "
         "'fail' = the paper reports > 20% error (expected higher than the baseline). Seeds for "
         "80% power: seeds per variant a two-sided t-test at 0.05 (unadjusted) needs to detect "
         "the paper's difference given our pooled seed-to-seed sd.")
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "<": r"\textless{}", ">": r"\textgreater{}", "±": r"$\pm$", "Δ": r"$\Delta$",
        "−": "-", "–": "--", "—": "---", "×": r"$\times$", "’": "'"}


def latex_escape(text) -> str:
    """Escape LaTeX specials; unknown characters beyond Latin-1 become '?' so pdflatex compiles."""
    return "".join(_TEX.get(ch, ch if ord(ch) < 256 else "?") for ch in str(text))


def _md(text) -> str:
    return str(text).replace("|", "\\|")


def slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "claim"


def select(runs: pd.DataFrame, experiment: str, profile: str | None = None):
    """The experiment's runs of one profile (most faithful present unless given), without crashed
    runs, keeping the latest run per (group, variant, seed) so a rerun replaces a seed."""
    r = runs[(runs["experiment"] == experiment) & ~crashed(runs)]
    present = list(dict.fromkeys(r["profile"]))
    profile = profile or next((p for p in PROFILES if p in present), present[0] if present else "")
    r = r[r["profile"] == profile].sort_values(["start_time", "run_id"])
    return r.drop_duplicates(["group", "variant", "seed"], keep="last"), profile


def crashed(runs: pd.DataFrame) -> pd.Series:
    """FAILED runs that did not diverge (a crash is not a result)."""
    return (runs["status"] == "FAILED") & ~runs["failure_kind"].isin(["", "diverged"])


def _join(values) -> str:
    return ", ".join(dict.fromkeys(v for v in values if v)) or "unknown"


def provenance(sel: pd.DataFrame, all_runs: pd.DataFrame, profile: str, today: str) -> list[str]:
    commits = list(dict.fromkeys(c[:10] for c in sel["git_commit"] if c))
    span = (commits[0] if len(commits) == 1 else f"{commits[0]}..{commits[-1]} "
            f"({len(commits)} commits)") if commits else "unknown"
    if sel["git_dirty"].any():
        span += f"; {int(sel['git_dirty'].sum())} run(s) from a dirty tree"
    n_fail = int((sel["status"] == "FAILED").sum())
    lines = [f"Claim: {_join(sel['claim'])}", f"Source: {_join(sel['citation'])}",
             f"Profile: {profile}; data: {_join(sel['dataset_label'])}; "
             f"evaluated on the {_join(sel['eval_split'])} split",
             f"Runs: {len(sel)} ({len(sel) - n_fail} finished, {n_fail} failed); "
             f"device(s): {_join(sel['device'])}",
             f"Commits: {span}", f"Generated: {today}"]
    unused = [f"{n} {p} run(s)" for p, n in
              all_runs.loc[all_runs["profile"] != profile, "profile"].value_counts().items()]
    n_crashed = int((crashed(all_runs) & (all_runs["profile"] == profile)).sum())
    unused += [f"{n_crashed} crashed run(s)"] if n_crashed else []
    if unused:
        lines.append("Not used here: " + ", ".join(unused))
    hashes = sel.groupby("variant")["config_hash"].nunique()
    if (hashes > 1).any():
        lines.append("Warning: several config hashes for " + ", ".join(hashes[hashes > 1].index))
    return lines


def _num(x, fmt: str) -> str:
    return "–" if pd.isna(x) else fmt.format(x)


def _row_cells(r) -> list[str]:
    paper = {"": "–", "fail": "fail (>20%)"}.get(r.paper_error.strip().lower(), r.paper_error)
    ours = ("–" if r.n == 0 else f"{r.mean:.2f} (n=1)" if r.n == 1
            else f"{r.mean:.2f} ± {r.sd:.2f} (n={r.n})")
    diff = _num(r.diff, "{:+.2f}")
    if not pd.isna(r.diff_ci_low):
        diff += f" [{r.diff_ci_low:+.2f}, {r.diff_ci_high:+.2f}]"
    p = "–" if pd.isna(r.p_holm) else "<0.001" if r.p_holm < 0.001 else f"{r.p_holm:.3f}"
    return [r.variant, paper, ours, str(r.n_failed), diff, p, _num(r.hedges_g, "{:+.2f}"),
            stats.needed_text(r.seeds_needed), r.verdict]


def _paired_cells(r) -> list[str]:
    return [r.variant, str(r.seed), str(r.only_variant_right), str(r.only_baseline_right),
            f"{r.mcnemar_p:.3g}", f"{r.diff:+.2f} [{r.boot_ci_low:+.2f}, {r.boot_ci_high:+.2f}]"]


def to_markdown(name: str, table, paired, head: list[str], verdict: str, smoke: bool) -> str:
    out = [f"**{figures.SMOKE}** (smoke profile: pipeline check only)\n"] if smoke else []
    out += [f"# {name}\n", *[f"- {_md(line)}" for line in head], "",
            f"**Claim verdict:** {verdict}\n"]
    for group, g in table.groupby("group", sort=False):
        rows = [[_md(c) for c in _row_cells(r)] for r in g.itertuples()]
        out += [f"## {_md(group or 'all variants')}\n",
                tabulate(rows, HEADERS, tablefmt="github", disable_numparse=True), ""]
    out += [f"_{NOTES}_\n"]
    if len(paired):
        out += [f"## Per-example paired tests ({stats.BOOTSTRAP_LABEL})\n",
                "Same-seed pairs on the same test set: exact McNemar on discordant examples; "
                "Δ error = variant − baseline in points, 2000-sample percentile bootstrap "
                "over test examples (seed 0).\n"]
        for group, g in paired.groupby("group", sort=False):
            rows = [[_md(c) for c in _paired_cells(r)] for r in g.itertuples()]
            out += [f"### {_md(group or 'all variants')}\n",
                    tabulate(rows, PAIRED_HEADERS, tablefmt="github", disable_numparse=True), ""]
    return "\n".join(out)


def to_latex(name: str, claim: str, table, head: list[str], verdict: str, smoke: bool) -> str:
    """A table float (needs \\usepackage{booktabs}) with provenance above the tabular."""
    banner = [rf"\textbf{{{figures.SMOKE}}}\par"] if smoke else []
    lines = ["% generated by `python -m analysis tables`; needs \\usepackage{booktabs}",
             *(["% " + figures.SMOKE] if smoke else []),
             r"\begin{table}[ht]", r"\centering", *banner,
             rf"\caption{{{latex_escape(name)}: {latex_escape(claim)}}}",
             rf"\label{{tab:{slug(name)}}}",
             r"{\footnotesize " + r"\\ ".join(latex_escape(h) for h in head) + r"\par}",
             r"\smallskip", r"{\small", r"\begin{tabular}{" + "l" * len(HEADERS) + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in HEADERS) + r" \\", r"\midrule"]
    for group, g in table.groupby("group", sort=False):
        label = latex_escape(group or "all variants")
        lines.append(rf"\multicolumn{{{len(HEADERS)}}}{{l}}{{\textit{{{label}}}}} \\")
        lines += [" & ".join(latex_escape(c) for c in _row_cells(r)) + r" \\"
                  for r in g.itertuples()]
    lines += [r"\bottomrule", r"\end{tabular}}", r"\par\smallskip",
              r"{\footnotesize " + latex_escape(f"Claim verdict: {verdict}. {NOTES}") + "}",
              r"\end{table}", ""]
    return "\n".join(lines)


def write_claim(data: RunData, experiment: str, out: Path, profile: str | None, today: str):
    """Write <slug>.md/.tex/.csv (and .paired.csv) and the figures; return an index entry."""
    sel, profile = select(data.runs, experiment, profile)
    if sel.empty:
        return None, []
    smoke, name = profile == "smoke", slug(experiment)
    table = stats.compare(sel)
    table.insert(0, "profile", profile)
    table.insert(0, "experiment", experiment)
    paired = stats.paired_tests(sel, data.preds, data.targets)
    verdict = stats.claim_verdict(table)
    head = provenance(sel, data.runs[data.runs["experiment"] == experiment], profile, today)
    files = [out / f"{name}.md", out / f"{name}.tex", out / f"{name}.csv"]
    files[0].write_text(to_markdown(experiment, table, paired, head, verdict, smoke))
    files[1].write_text(to_latex(experiment, _join(sel["claim"]), table, head, verdict, smoke))
    table.to_csv(files[2], index=False)
    if len(paired):
        files.append(out / f"{name}.paired.csv")
        paired.to_csv(files[-1], index=False)
    figs = figures.errors_figure(sel, table, out / "figures" / f"{name}_errors",
                                 f"{experiment}: {_join(sel['dataset_label'])}", smoke)
    figs += figures.paper_vs_ours_figure(
        table, out / "figures" / f"{name}_paper_vs_ours",
        f"{experiment}: paper vs ours ({_join(sel['dataset_label'])})",
        _join(sel["eval_split"]), smoke)
    if experiment == "degradation":
        figs += figures.curves_figure(sel, data.curves, out / "figures" / f"{name}_curves", smoke)
    entry = dict(name=name, experiment=experiment, claim=_join(sel["claim"]), profile=profile,
                 table=table, verdict=verdict, figures=figs)
    return entry, files + figs


def _index_line(e: dict) -> list[str]:
    t = e["table"]
    paper = "; ".join(f"{r.variant} {r.paper_error}" for r in t.itertuples() if r.paper_error)
    ours = "; ".join(f"{r.variant} {r.mean:.2f}" for r in t.itertuples() if r.n)
    verdict = e["verdict"].split(":")[0] + (f" ({figures.SMOKE})" if e["profile"] == "smoke"
                                            else "")
    links = " · ".join([f"[md]({e['name']}.md)", f"[tex]({e['name']}.tex)",
                        f"[csv]({e['name']}.csv)"]
                       + [f"[fig](figures/{p.name})" for p in e["figures"] if p.suffix == ".png"])
    return [_md(c) for c in (e["experiment"], e["claim"], e["profile"], paper or "–",
                             ours or "–", verdict)] + [links]


def write_all(data: RunData, out: Path, profile: str | None = None,
              log_uri: str | None = None, today: str | None = None) -> list[Path]:
    """Every claim's tables and figures plus README.md; with log_uri, figures and tables are also
    logged to a run named `analysis` in each claim's MLflow experiment."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    today = today or dt.datetime.now(dt.UTC).date().isoformat()
    entries, written = [], []
    for experiment in dict.fromkeys(data.runs["experiment"]):
        entry, files = write_claim(data, experiment, out, profile, today)
        if entry is None:
            continue
        entries.append(entry)
        written += files
        if log_uri:
            log_to_analysis_run(log_uri, experiment, files)
    rows = [_index_line(e) for e in entries]
    readme = ["# Reproduction tables\n",
              f"Generated {today} by `python -m analysis tables`; one line per claim "
              "(paper vs our mean error in %; verdict from Holm-adjusted Welch tests). "
              "Each table states its provenance.\n",
              tabulate(rows, ["Experiment", "Claim", "Profile", "Paper", "Ours", "Verdict",
                              "Files"], tablefmt="github", disable_numparse=True) if rows else "No runs yet.", ""]
    (out / "README.md").write_text("\n".join(readme))
    return [*written, out / "README.md"]
