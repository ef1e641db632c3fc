"""Every `.tex` table compiles with pdflatex + booktabs, as a report would include it.

`.ci/run` installs a small TeX Live (texlive-latex-base, texlive-latex-recommended) and
poppler-utils; without pdflatex the tests skip and say so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from analysis import tables
from analysis.runs import RunData
from analysis.sections import sections
from tests.test_analysis_tables import SPEC, make_runs

ROOT = Path(__file__).resolve().parents[1]
TEX_TABLES = sorted((ROOT / "paper_tables").glob("*.tex"))
PREAMBLE = (r"\documentclass{article}" "\n" r"\usepackage[T1]{fontenc}" "\n"
            r"\usepackage{booktabs}" "\n" r"\usepackage[landscape,margin=1.5cm]{geometry}" "\n"
            r"\begin{document}" "\n")



def _have_latex() -> bool:
    if not (shutil.which("pdflatex") and shutil.which("kpsewhich")):
        return False
    found = subprocess.run(["kpsewhich", "booktabs.sty", "geometry.sty"], capture_output=True,
                           text=True).stdout.split()
    return len(found) == 2


needs_pdflatex = pytest.mark.skipif(
    not _have_latex(),
    reason="pdflatex with booktabs not installed (apt-get install texlive-latex-base "
           "texlive-latex-recommended)")


def compile_table(tex: str, workdir: Path) -> Path:
    """Wrap one table float in a document; pdflatex it; return the PDF (fails with the log)."""
    doc = workdir / "table.tex"
    doc.write_text(PREAMBLE + tex + "\n\\end{document}\n")
    res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                          "-no-shell-escape", doc.name], cwd=workdir, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:]
    log = (workdir / "table.log").read_text(errors="replace")
    assert "Missing character" not in log
    return workdir / "table.pdf"


def test_shipped_tables_exist():
    assert TEX_TABLES, "paper_tables/ has no .tex table"


@needs_pdflatex
@pytest.mark.parametrize("path", TEX_TABLES, ids=[p.stem for p in TEX_TABLES])
def test_shipped_tex_table_compiles(path, tmp_path):
    pdf = compile_table(path.read_text(), tmp_path)
    assert pdf.stat().st_size > 1000


@needs_pdflatex
def test_freshly_generated_table_compiles_and_renders(tmp_path):
    """The current to_latex (with the power column, specials in the claim) compiles; page 1 is
    rendered to PNG when pdftoppm is there (look at it: tests/test_latex.py -s prints where)."""
    data = RunData(make_runs(SPEC))
    built = tables.build_section(sections(data, "toy")[0], data, "toy", {})
    tex = tables.to_latex("toy", "50% & more_under #1 {ok} ~ ^ é ≥", built)
    assert r"\begin{tabular}{" + "l" * len(tables.HEADERS) + "}" in tex
    pdf = compile_table(tex, tmp_path)
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm not installed (apt-get install poppler-utils); PDF compiled")
    subprocess.run(["pdftoppm", "-png", "-r", "80", "-f", "1", "-l", "1", str(pdf),
                    str(tmp_path / "page")], check=True, timeout=60)
    png = next(tmp_path.glob("page*.png"))
    assert png.stat().st_size > 5000
    print(f"rendered: {png}")
