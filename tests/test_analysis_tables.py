"""Verdicts on synthetic run sets with known truth; Markdown/LaTeX/figure outputs."""

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from analysis import runs as io
from analysis import stats, tables
from analysis.sections import read_spec, sections

NOISE = {0: -0.1, 1: 0.0, 2: 0.1}
CLAIM = "Pre-activation helps: 50% & more_under #1 {ok}"


def make_runs(spec, seeds=(0, 1, 2), profile="paper", experiment="toy"):
    """spec rows: (group, variant, baseline, paper_error, expected, mean error, status)."""
    rows = []
    for i, seed in enumerate(seeds):
        for j, (group, variant, base, paper, expected, mu, status) in enumerate(spec):
            noise = NOISE[seed] if variant == base else NOISE[(seed + 1) % 3]
            rows.append(dict(
                experiment=experiment, claim=CLAIM, citation="He et al. (2016)", group=group,
                variant=variant, baseline=base, paper_error=paper, expected=expected, seed=seed,
                status=status, final_error=mu + noise if status == "FINISHED" else None,
                eval_split="test", profile=profile, dataset="cifar10",
                dataset_label="CIFAR-10 (JPEG q75 copy)", device="cpu", config_hash="h",
                git_commit=f"c0ffee{i}", git_dirty="false", run_id=f"{experiment}-{variant}-{seed}",
                start_time=f"2025-01-01T00:{i:02d}:{j:02d}+00:00"))
    return io.normalise_runs(pd.DataFrame(rows))


SPEC = [
    ("G", "base", "base", "7.00", "", 7.0, "FINISHED"),
    ("G", "better", "base", "6.00", "lower", 6.0, "FINISHED"),     # clear effect, as the paper
    ("G", "same", "base", "6.50", "lower", 7.0, "FINISHED"),       # no effect
    ("G", "worse", "base", "6.50", "lower", 8.0, "FINISHED"),      # reversed
    ("G", "broken", "base", "fail", "", 30.0, "FINISHED"),         # paper: fail (> 20%)
    ("G", "diverged", "base", "fail", "", 0.0, "FAILED"),
    ("G", "extra", "base", "", "", 6.0, "FINISHED"),               # no paper direction
    ("H", "b2", "b2", "", "", 5.0, "FINISHED"),
]


def verdicts(table):
    return dict(zip(table["variant"], table["verdict"], strict=True))


def test_verdicts_on_synthetic_truth():
    table = stats.compare(make_runs(SPEC))
    v = verdicts(table)
    assert v == {"base": "baseline", "better": "reproduced", "same": "inconclusive",
                 "worse": "contradicted", "broken": "reproduced",
                 "diverged": "all runs diverged (n_failed=3)", "extra": "no paper direction",
                 "b2": "baseline"}
    row = table.set_index("variant").loc["better"]
    assert row["n"] == 3 and row["diff"] == pytest.approx(-1.0)
    assert row["diff_ci_low"] < -1 < row["diff_ci_high"] < 0
    # Holm family = the 5 comparisons with a p-value
    assert table["p"].notna().sum() == 5
    assert np.allclose(table["p_holm"].dropna(), stats.holm(table["p"].dropna()))
    line = stats.claim_verdict(table)
    assert line.startswith("mixed:") and "reproduced 2" in line and "contradicted 1" in line


def test_one_seed_says_so_and_claim_level():
    table = stats.compare(make_runs(SPEC[:2], seeds=(0,)))
    assert verdicts(table)["better"] == "insufficient seeds (n=1)"
    assert stats.claim_verdict(table).startswith("not testable") is False
    assert stats.claim_verdict(table).startswith("inconclusive")
    assert stats.claim_verdict(stats.compare(make_runs(SPEC[:2]))).startswith("reproduced")


def test_select_prefers_paper_profile_and_latest_rerun():
    runs = pd.concat([make_runs(SPEC[:2], profile="smoke"), make_runs(SPEC[:2])])
    rerun = make_runs(SPEC[:2], seeds=(0,)).assign(run_id="rerun", start_time="2026-01-01")
    first = sections(io.RunData(io.normalise_runs(pd.concat([runs, rerun]))), "toy")[0]
    sel = first.sel
    assert first.profile == "paper" and len(sel) == 6 and "rerun" in set(sel["run_id"])
    assert sections(io.RunData(runs), "toy", "smoke")[0].profile == "smoke"


def test_latex_escape():
    assert tables.latex_escape(r"a_b 50% & #1 $x$ {y} ~^\ ±") == (
        r"a\_b 50\% \& \#1 \$x\$ \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{} $\pm$")


def _fake_data(profile="paper"):
    runs = pd.concat([make_runs(SPEC, profile=profile),
                      make_runs(SPEC[:2], experiment="degradation", profile=profile)])
    data = io.RunData(io.normalise_runs(runs))
    rng = np.random.default_rng(0)
    target = rng.integers(0, 10, 500)
    curves = []
    for r in data.runs.itertuples():
        data.preds[r.run_id] = np.where(rng.random(500) < 0.9, target, 0)
        data.targets[r.run_id] = target
        it = np.arange(1, 6)
        curves.append(pd.DataFrame(dict(run_id=r.run_id, epoch=it, iteration=it * 100,
                                        train_error=50 / it + rng.random(5),
                                        eval_error=55 / it + rng.random(5))))
    data.curves = pd.concat(curves, ignore_index=True)
    return data


def _check_markdown_tables(md: str):
    blocks = re.findall(r"(?:^\|.*\|\n)+", md, flags=re.M)
    assert blocks
    for block in blocks:
        lines = block.strip().split("\n")
        assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[1])
        widths = {len(re.findall(r"(?<!\\)\|", line)) for line in lines}
        assert len(widths) == 1


def _check_latex(tex: str):
    body = re.sub(r"\\[{}%]|(?<!\\)%.*", "", tex)  # drop escaped braces and comments
    assert body.count("{") == body.count("}")
    assert tex.count(r"\begin{") == tex.count(r"\end{")
    for line in tex.split("\n"):
        if line.endswith(r"\\") and "multicolumn" not in line:
            assert len(re.findall(r"(?<!\\)&", line)) == len(tables.HEADERS) - 1, line


def test_write_all_outputs(tmp_path):
    written = tables.write_all(_fake_data(), tmp_path)
    md = (tmp_path / "toy.md").read_text()
    assert md.split("\n", 1)[1].startswith("# toy") and "SMOKE" not in md
    for text in ("CIFAR-10 (JPEG q75 copy)", "Profile: paper", "Runs: 24 (21 finished, 3 failed)",
                 "device(s): cpu", "Commits: c0ffee0..c0ffee2 (3 commits)", "Newest run: ",
                 "test-set noise only, not seed-to-seed variance", "6.00 ± 0.10 (n=3: "):
        assert text in md, text
    _check_markdown_tables(md)
    tex = (tmp_path / "toy.tex").read_text()
    _check_latex(tex)
    assert r"50\% \& more\_under \#1 \{ok\}" in tex and r"$\pm$" in tex
    csv = pd.read_csv(tmp_path / "toy.csv")
    assert list(csv["verdict"])[:2] == ["baseline", "reproduced"]
    readme = (tmp_path / "README.md").read_text()
    assert "[toy](toy.md)" in readme and "[degradation](degradation.md)" in readme
    assert len([line for line in readme.splitlines() if line.startswith("- **[")]) == 2
    figs = [p for p in written if p.parent.name == "figures"]
    assert {p.name for p in figs} >= {"toy_errors.png", "toy_errors.pdf",
                                      "degradation_curves.png", "degradation_curves.pdf"}
    assert all(p.stat().st_size > 1000 for p in figs)


def test_smoke_banner(tmp_path):
    tables.write_all(_fake_data("smoke"), tmp_path)
    assert (tmp_path / "toy.md").read_text().split("\n")[1].startswith("**SMOKE: not evidence**")
    assert "SMOKE: not evidence" in (tmp_path / "toy.tex").read_text().split("\n")[1]
    assert "SMOKE: not evidence" in (tmp_path / "README.md").read_text()


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_compiles(tmp_path):
    tables.write_all(_fake_data("smoke"), tmp_path)
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                   "\\input{toy.tex}\n\\end{document}\n")
    subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
                   cwd=tmp_path, check=True, capture_output=True, timeout=60)
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def test_the_schedule_line_states_the_fraction_of_the_papers():
    """The degradation spec's paper schedule is 64,000 iterations (He et al. 2015 Sec. 4.2)."""
    sel = pd.DataFrame({"config_hash": ["a", "a", "b"]})
    cut = {"schedule": {"unit": "iterations", "length": 1600, "drops": [0.5, 0.75],
                        "gamma": 0.1, "warmup_iterations": 0}}
    spec = read_spec("degradation")
    assert tables.schedule_line(sel, {"a": cut, "b": cut}, spec) == [
        "Schedule: 1,600 iterations (lr /10 at 800, 1,200): 2.5% of the paper's 64,000"]
    full = {"schedule": dict(cut["schedule"], length=64000, warmup_iterations=400)}
    assert tables.schedule_line(sel, {"a": full}, spec) == [
        "Schedule: 64,000 iterations (lr /10 at 32,000, 48,000), 400 warm-up iterations: "
        "the paper's"]
    assert tables.schedule_line(sel, {}, spec) == []  # a part without configs.json


def test_degradation_tables_test_the_training_error_too(tmp_path):
    """He et al.'s Fig. 1 claim is about training error: a plain net whose final training
    error is clearly higher is 'reproduced' in the training-error section, whatever its test
    error does (here the test errors are equal)."""
    spec = [("plain", "plain20", "plain20", "", "", 10.0, "FINISHED"),
            ("plain", "plain56", "plain20", "", "higher", 10.0, "FINISHED")]
    runs = make_runs(spec, experiment="degradation", profile="cpu")
    runs["final_train_error"] = np.where(runs["variant"] == "plain56", 20.0, 12.0) + \
        runs["seed"].map({0: -0.2, 1: 0.0, 2: 0.3})
    entry, _ = tables.write_claim(io.RunData(runs), "degradation", tmp_path, None, draw=False)
    md = (tmp_path / "degradation.md").read_text()
    assert "**Claim verdict:** not reproduced (equivalent within the stated margin)" in md
    section = md.split("## Final training error", 1)[1]
    assert ("**Training-error verdict (running):** reproduced (cpu profile, not the paper's "
            "schedule): 1 directional") in section
    assert "| plain56   | –       | 20.03 ± 0.25 (n=3" in section


def test_the_papers_numbers_are_set_against_our_seed_spread(tmp_path):
    """'worse': seeds 8.1, 7.9, 8.0 (mean 8, sd 0.1), paper 6.5: z = -15, interval
    8 -+ t(0.975, 2) * 0.1 * sqrt(4/3) = 8 -+ 0.50, and t = 1.5 / 0.11547 = 12.99 on 2 df gives
    p = 1 - t / sqrt(2 + t^2) = 0.006; 'better' (mean 6.0 = paper 6.00) is inside."""
    tables.write_claim(io.RunData(make_runs(SPEC, profile="quick")), "toy", tmp_path, None,
                       draw=False)  # a shortened schedule: the paper's numbers are not its kind
    md = (tmp_path / "toy.md").read_text()
    assert "## The paper's numbers against our seeds" not in md
    assert "The paper's numbers are shown, not tested against" in md
    tables.write_claim(io.RunData(make_runs(SPEC)), "toy", tmp_path, None, draw=False)
    md = (tmp_path / "toy.md").read_text().split("## The paper's numbers against our seeds", 1)[1]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in md.splitlines() if line.startswith("| ") and "Variant" not in line}
    assert rows["worse"] == ["6.5", "8.00 ± 0.10 (n=3)", "-15.00", "[7.50, 8.50]", "0.006",
                             "outside: below what a seed of ours gives"]
    assert rows["better"][2:] == ["+0.00", "[5.50, 6.50]", "1.000",
                                  "inside the spread of our seeds"]
    assert "broken" not in rows and "extra" not in rows  # 'fail' and no number: not placed
