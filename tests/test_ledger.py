"""The ledger of campaign parts: merge, de-duplication, cells, validation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest

from analysis import ledger, tables
from analysis import runs as io
from analysis.runs import RunData
from analysis.sections import sections

SMOKE_PART = Path(__file__).resolve().parent.parent / "paper_tables" / "data" / \
    "2026-11-23_smoke_cpu_all-claims"


def _subset(data: io.RunData, mask) -> io.RunData:
    runs = data.runs[mask].reset_index(drop=True)
    ids = set(runs["run_id"])
    return io.RunData(runs, data.curves[data.curves["run_id"].isin(ids)].reset_index(drop=True),
                      {k: v for k, v in data.preds.items() if k in ids},
                      {k: v for k, v in data.targets.items() if k in ids})


@pytest.fixture(scope="module")
def degradation() -> io.RunData:
    data = io.load_snapshot(SMOKE_PART)
    return _subset(data, data.runs["experiment"] == "degradation")


def _part(data, root, pid, ended="2026-11-23T12:00:00+00:00", **kw):
    return ledger.write_part(data, root, device="test CPU (2 cores)", part_id=pid,
                             ended=ended, **kw)


def _strip(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("- Parts:"))


def test_committed_smoke_part_is_valid():
    m = ledger.validate_part(SMOKE_PART)
    assert m["smoke"] is True and m["n_runs"] == 58 and m["profiles"] == ["smoke"]


def test_two_parts_give_the_same_tables_as_one(tmp_path, degradation):
    one, two = tmp_path / "one", tmp_path / "two"
    _part(degradation, one, "all")
    seed0 = degradation.runs["seed"] == 0
    _part(_subset(degradation, seed0), two, "a-seed0", ended="2026-11-23T12:00:00+00:00")
    _part(_subset(degradation, ~seed0), two, "b-seed1", ended="2026-11-23T13:00:00+00:00")
    out1, out2 = tmp_path / "t1", tmp_path / "t2"
    tables.write_all(ledger.load_ledger(one), out1, draw=False)
    tables.write_all(ledger.load_ledger(two), out2, draw=False)
    md1, md2 = (o / "degradation.md" for o in (out1, out2))
    assert _strip(md1.read_text()) == _strip(md2.read_text())
    assert (out1 / "degradation.csv").read_bytes() == (out2 / "degradation.csv").read_bytes()
    assert "a-seed0 (test CPU (2 cores), 2026-11-23); b-seed1" in md2.read_text()
    assert "b-seed1" in (out2 / "README.md").read_text()


def _reexport(data, final_error=None):
    again = _subset(data, data.runs["variant"] == "resnet20")
    again.runs["run_id"] = again.runs["run_id"] + "x"  # another export of the same runs
    if final_error is not None:  # another number: the part then states it once (no
        again.runs["final_error"] = final_error  # predictions or curves that disagree)
        again.preds, again.targets, again.curves = {}, {}, again.curves.iloc[:0]
    again.preds = {k + "x": v for k, v in again.preds.items()}
    again.targets = {k + "x": v for k, v in again.targets.items()}
    again.curves["run_id"] = again.curves["run_id"] + "x"
    return again


def test_an_identical_duplicate_is_counted_once_from_the_later_part(tmp_path, degradation):
    _part(degradation, tmp_path, "early", ended="2026-11-23T12:00:00+00:00")
    _part(_reexport(degradation), tmp_path, "late", ended="2026-11-24T12:00:00+00:00")
    with pytest.warns(UserWarning, match="counted once, from late"):
        data = ledger.load_ledger(tmp_path)
    assert len(data.runs) == len(degradation.runs)
    r20 = data.runs[data.runs["variant"] == "resnet20"]
    assert set(r20["part"]) == {"late"}
    assert len(data.duplicates) == 2
    table = tables.stats.compare(sections(data, "degradation")[0].sel)
    assert table.set_index("variant").loc["resnet20", "n"] == 2


def test_a_conflicting_duplicate_is_an_error_naming_both_parts(tmp_path, degradation):
    """Failed on the main of 2026-12-02: the later part's number silently replaced the
    earlier one's in the tables."""
    root = tmp_path / "ledger"
    _part(degradation, root, "early", ended="2026-11-23T12:00:00+00:00")
    _part(_reexport(degradation, final_error=1.0), tmp_path / "out", "late",
          ended="2026-11-24T12:00:00+00:00")
    with pytest.raises(ledger.PartError,
                       match=r"parts early \(FINISHED, error [0-9.]+\) and late \(FINISHED, error 1\.0\)"):
        ledger.add_part(tmp_path / "out" / "late", root)
    assert not (root / "late").exists()  # refused: not left in the ledger
    _part(_reexport(degradation, final_error=1.0), root, "late",
          ended="2026-11-24T12:00:00+00:00")  # written straight into the ledger folder
    with pytest.raises(ledger.PartError) as err:
        ledger.load_ledger(root)
    text = str(err.value)
    assert "early" in text and "late" in text and "error 1.0" in text and "different" in text


def test_mixed_profiles_and_precisions_are_never_pooled(tmp_path, degradation):
    quick = degradation.runs.copy()
    quick["profile"] = "quick"
    bf16 = quick[quick["variant"] == "resnet56"].copy()
    bf16["config_hash"] = "bf16bf16bf16"
    bf16["run_id"] = bf16["run_id"] + "b"
    bf16["start_time"] = "2026-11-22T00:00:00+00:00"  # older: the fp32 cell keeps the variant
    runs = pd.concat([degradation.runs, quick.assign(run_id=quick["run_id"] + "q"), bf16])
    first = sections(RunData(runs.reset_index(drop=True)), "degradation")[0]
    sel, profile = first.sel, first.profile
    assert profile == "quick"
    assert (sel["profile"] == "quick").all()
    assert sel.groupby("variant")["config_hash"].nunique().max() == 1
    assert sel.groupby("variant").size().to_dict() == {v: 2 for v in sel["variant"].unique()}
    assert sel.attrs["not_pooled"] == ["2 run(s) of residual/resnet56 with config bf16bf16bf16"]


def _corrupt_cases(part: Path):
    yield "MANIFEST.json: missing", lambda: (part / "MANIFEST.json").unlink()
    yield "missing key(s) device", lambda: _edit(part, lambda m: m.pop("device"))
    yield "runs.csv: sha256 does not match", lambda: (part / "runs.csv").write_text(
        (part / "runs.csv").read_text()[:-200])
    yield "curves.csv: missing", lambda: (part / "curves.csv").unlink()
    yield "n_runs=99", lambda: _edit(part, lambda m: m.update(n_runs=99))
    yield "differs from the folder name", lambda: _edit(part, lambda m: m.update(part_id="x"))
    yield "not valid JSON", lambda: (part / "MANIFEST.json").write_text("{")
    yield "profile(s) ['smoke'] not in", lambda: _edit(part, lambda m: m.update(profiles=[]))


def _edit(part: Path, change) -> None:
    m = json.loads((part / "MANIFEST.json").read_text())
    change(m)
    (part / "MANIFEST.json").write_text(json.dumps(m))


@pytest.mark.parametrize("case", range(8))
def test_malformed_part_is_refused_naming_the_file(tmp_path, degradation, case):
    part = _part(degradation, tmp_path / "out", "p")
    message, corrupt = list(_corrupt_cases(part))[case]
    corrupt()
    with pytest.raises(ledger.PartError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        ledger.add_part(part, tmp_path / "ledger")
    assert not (tmp_path / "ledger" / "p").exists()


def test_add_part_from_a_campaign_folder_and_twice(tmp_path, degradation):
    out = tmp_path / "OUT"
    _part(degradation, out, "gpu-shift-1")
    (out / "campaign.log").write_text("log")
    dst = ledger.add_part(out, tmp_path / "ledger")
    assert dst == tmp_path / "ledger" / "gpu-shift-1"
    assert ledger.add_part(out, tmp_path / "ledger") == dst  # idempotent
    other = _part(_subset(degradation, degradation.runs["seed"] == 0), tmp_path / "o2",
                  "gpu-shift-1")
    with pytest.raises(ledger.PartError, match="a different part"):
        ledger.add_part(other, tmp_path / "ledger")


def test_tables_are_dated_by_their_data_and_stale_claims_removed(tmp_path, degradation):
    _part(degradation, tmp_path / "l", "p")
    out = tmp_path / "t"
    out.mkdir()
    (out / "gone.md").write_text("<!-- generated by `python -m analysis tables` -->\n")
    (out / "gone.csv").write_text("x")
    (out / "bench-cpu.md").write_text("# bench, not a claim table")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tables.write_all(ledger.load_ledger(tmp_path / "l"), out, draw=False)
    readme = (out / "README.md").read_text()
    assert "Newest run 2026-11-23" in readme
    assert not (out / "gone.md").exists() and not (out / "gone.csv").exists()
    assert (out / "bench-cpu.md").exists()


def test_a_part_names_no_path_of_the_machine_that_ran(tmp_path, degradation):
    """Failed on the main of 2026-12-04: an image folder's runs kept `dataset` =
    'imagefolder:/tmp/data/cifar10-jpeg-q75' in runs.csv and MANIFEST.json."""
    runs = degradation.runs.assign(dataset="imagefolder:/home/me/data/c10",
                                   dataset_checksum="eec90e10bd2f5438")
    data = io.RunData(runs, degradation.curves, degradation.preds,
                      {k: v for k, v in degradation.targets.items()})
    part = _part(data, tmp_path, "p")
    for f in ("runs.csv", "MANIFEST.json"):
        text = (part / f).read_text()
        assert "/home/me" not in text and "file://" not in text, f
    assert set(io.load_snapshot(part).runs["dataset"]) == {"imagefolder:eec90e10bd2f5438"}
    ledger.validate_part(part)


def test_a_run_extended_to_a_later_horizon_counts_once_from_the_later_part(tmp_path, degradation):
    """A run stopped at a horizon in one part and extended in another (one run id, another
    final error) is one run: the further one counts, with its own curve, and no conflict."""
    early = _subset(degradation, degradation.runs["variant"] == "resnet20")
    early.runs["horizon"], early.runs["final_error"] = "4", 99.0
    # what it held at 4: no predictions or curve of the end that would contradict its 99.0
    early.preds, early.targets, early.curves = {}, {}, early.curves.iloc[:0]
    late = _subset(degradation, degradation.runs["variant"] == "resnet20")
    late.curves = late.curves.assign(train_loss=-1.0)  # tells the parts' curves apart
    _part(early, tmp_path, "at4", ended="2026-11-24T12:00:00+00:00")  # ended later, reached less
    _part(late, tmp_path, "end", ended="2026-11-23T12:00:00+00:00")
    with pytest.warns(UserWarning, match="counted once, from end"):
        data = ledger.load_ledger(tmp_path)
    assert set(data.runs["part"]) == {"end"} and (data.runs["final_error"] != 99.0).all()
    assert len(data.curves) == len(late.curves) and (data.curves["train_loss"] == -1.0).all()


def test_a_finished_rerun_supersedes_its_failed_attempt(tmp_path, degradation):
    failed = _subset(degradation, degradation.runs["variant"] == "resnet20")
    failed.runs["status"], failed.runs["final_error"] = "FAILED", float("nan")
    failed.runs["failure_kind"] = "error"
    _part(failed, tmp_path, "crash", ended="2026-11-25T12:00:00+00:00")
    _part(_subset(degradation, degradation.runs["variant"] == "resnet20"), tmp_path, "rerun")
    with pytest.warns(UserWarning, match="counted once, from rerun"):
        data = ledger.load_ledger(tmp_path)
    assert (data.runs["status"] == "FINISHED").all()


def test_an_export_killed_half_way_leaves_nothing_that_blocks_the_next(tmp_path, degradation,
                                                                       monkeypatch):
    """Failed on the main of 2026-12-07: the half-written folder made the next export fail
    with 'exists already'."""
    real = ledger.sha256

    def killed(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(ledger, "sha256", killed)
    with pytest.raises(KeyboardInterrupt):
        _part(degradation, tmp_path, "p")
    assert list(tmp_path.iterdir()) == [] and ledger.list_parts(tmp_path) == []
    monkeypatch.setattr(ledger, "sha256", real)
    assert _part(degradation, tmp_path, "p") == tmp_path / "p"
    assert ledger.list_parts(tmp_path) == [tmp_path / "p"]


def _rewrite_consistently(part: Path, name: str, change) -> None:
    """Edit one file of a part and recompute its sha256 in the manifest, as a careless (or
    dishonest) hand would: the checksums then agree, the contents must not."""
    f = part / name
    change(f)
    _edit(part, lambda m: m["files"].update({name: ledger.sha256(f)}))


def test_a_part_whose_files_disagree_is_refused_even_with_matching_checksums(tmp_path,
                                                                              degradation):
    part = _part(degradation, tmp_path / "out", "p")
    runs = pd.read_csv(part / "runs.csv", dtype=str, keep_default_na=False)
    done = runs.index[(runs["status"] == "FINISHED") & (runs["eval_split"] == "test")][0]
    rid, was = runs.loc[done, "run_id"], float(runs.loc[done, "final_error"])

    def edit_error(f):
        runs.loc[done, "final_error"] = repr(was - 0.01)  # one image of 10,000 better
        runs.to_csv(f, index=False)

    _rewrite_consistently(part, "runs.csv", edit_error)
    with pytest.raises(ledger.PartError, match=f"run {rid}: runs.csv says final error "
                                               f"{was - 0.01}, its predictions"):
        ledger.validate_part(part)
    # a curve of a run the part does not hold
    part = _part(degradation, tmp_path / "out2", "q")
    _rewrite_consistently(part, "curves.csv", lambda f: f.write_text(
        f.read_text() + "ghost" + "," * (len(io.CURVE_COLUMNS) - 1) + "\n"))
    with pytest.raises(ledger.PartError, match=r"curve\(s\) of run\(s\) not in runs.csv"):
        ledger.validate_part(part)
