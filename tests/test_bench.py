"""`make bench` on CPU at tiny sizes: the whole pipeline, partial tables, resume, the GPU path.

Speed numbers are never asserted: only that the rows and columns exist and agree."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch

from convnets import bench
from convnets.bench import measure, plan, report

TINY = ["--device", "cpu", "--size", "tiny", "--threads", "1"]
MODEL = "tiny resnet8 (16x16)"


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a loaded 2-core CPU, 2-thread OpenMP steps wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Each '## heading' of the markdown with its github table as a list of row dicts."""
    out = {}
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        title, _, body = block.partition("\n")
        lines = [ln for ln in body.splitlines() if ln.startswith("|")]
        if not lines:
            continue
        cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
        assert set("".join(cells[1])) <= set("-:"), f"{title}: no header rule"
        assert all(len(c) == len(cells[0]) for c in cells), f"{title}: ragged table"
        out[title] = [dict(zip(cells[0], c, strict=True)) for c in cells[2:]]
    return out


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%x"))


def state_of(text: str) -> dict:
    return json.loads(plan.STATE_RE.search(text).group(1))


def check_fractions(t: dict) -> None:
    """Every model and K row: fraction of peak = achieved / the peak table's value."""
    peaks = {r["precision"]: r["GFLOP/s"] for r in t["Matmul peak"]}
    rows = t["Models"] + t.get("K runs of one config at once", [])
    for r in rows:
        precision, value = r["peak GFLOP/s"].split()
        assert value == peaks[precision]
        assert precision == ("bf16" if r["precision"] == "bf16" else
                             "tf32" if "tf32" in peaks else "fp32")
        assert number(r["fraction of peak"]) / 100 == pytest.approx(
            number(r["achieved GFLOP/s"]) / number(value), rel=0.02)


@pytest.mark.slow  # every bench row measured once: about 15-25 s
def test_dry_run_measures_every_row_and_the_table_agrees(tmp_path):
    out = tmp_path / "bench.md"
    assert bench.main(TINY + ["--out", str(out)]) == 0
    text = out.read_text()
    assert "complete: 10 of 10 rows" in text and "not a speed figure" in text
    for key in ("cpu: ", "cpu cores: ", "torch: ", "python: ", "commit: ", "date: "):
        assert f"- {key}" in text
    assert "3 x the forward pass" in text  # the FLOPs assumption is stated
    t = tables(text)
    assert [r["precision"] for r in t["Matmul peak"]] == ["bf16", "fp32"]
    assert all(number(r["GFLOP/s"]) > 0 for r in t["Matmul peak"])
    assert [r["configuration"] for r in t["Models"]] == [
        "baseline: DataLoader + eager fp32", "trainer: fp32", "trainer: bf16",
        "trainer: bf16, fused SGD, 1 thread"]
    assert list(t["Models"][0]) == report.MODEL_HEADERS
    k = t["K runs of one config at once"]
    assert list(k[0]) == report.K_HEADERS
    assert [(r["configuration"], r["K"]) for r in k] == [
        ("1 run (trainer step)", "1"), ("1 seed batched (vmap, K=1)", "1"),
        ("2 processes", "2"), ("2 seeds batched (vmap)", "2")]
    for r in k:
        assert number(r["images/s per seed"]) * int(r["K"]) == pytest.approx(
            number(r["images/s (all seeds)"]), rel=0.02)
    check_fractions(t)
    assert "Rows not measured" not in text
    # the FLOPs per image are 3 x 2 x the forward MACs of convnets.complexity
    from convnets.complexity import complexity
    from convnets.models import build_model

    macs = complexity(build_model("cifar_resnet", depth=8), (3, 16, 16))["macs"]
    done = state_of(text)["done"]
    assert done[f"model | {MODEL} | trainer: fp32"]["flops_per_image"] == 6 * macs


class Stop(KeyboardInterrupt):
    pass


def _stop_after(monkeypatch, calls: int, exc: BaseException):
    """bench_fast raises ``exc`` on its ``calls``-th call (a time limit, a broken row)."""
    real, seen = bench.bench_fast, []

    def fake(*a, **k):
        seen.append(1)
        if len(seen) == calls:
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(bench, "bench_fast", fake)


def test_interrupted_bench_leaves_a_valid_partial_table_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "bench.md"
    args = TINY + ["--no-kruns", "--out", str(out)]
    _stop_after(monkeypatch, 2, Stop())
    with pytest.raises(Stop):
        bench.main(args)
    text = out.read_text()
    assert "**partial: 4 of 6 rows**" in text
    t = tables(text)
    assert len(t["Matmul peak"]) == 2 and len(t["Models"]) == 2
    check_fractions(t)
    missing = text.split("## Rows not measured")[1]
    assert f"model | {MODEL} | trainer: bf16: not measured yet" in missing
    assert f"model | {MODEL} | trainer: bf16, fused SGD, 1 thread: not measured yet" in missing
    before = state_of(text)["done"]

    monkeypatch.undo()
    assert bench.main(args + ["--resume"]) == 0
    text = out.read_text()
    assert "complete: 6 of 6 rows" in text and "resumed: 4 rows from the run of" in text
    assert "Rows not measured" not in text
    after = state_of(text)["done"]
    assert all(after[key] == row for key, row in before.items())  # kept, not re-measured
    assert len(tables(text)["Models"]) == 4


def test_a_failing_row_is_listed_and_a_rerun_is_not_silent(tmp_path, monkeypatch):
    out = tmp_path / "bench.md"
    args = TINY + ["--no-kruns", "--out", str(out)]
    _stop_after(monkeypatch, 1, RuntimeError("boom"))
    assert bench.main(args) == 0
    text = out.read_text()
    assert "**incomplete: 5 of 6 rows** (1 failed" in text
    assert f"model | {MODEL} | trainer: fp32: failed: RuntimeError: boom" in text
    check_fractions(tables(text))
    monkeypatch.undo()
    with pytest.raises(SystemExit, match="another device, size or timing"):
        bench.main(args + ["--resume", "--iters", "2"])


def test_gpu_path_plans_gpu_rows_and_synchronises(monkeypatch):
    """No GPU here: the CUDA plan, file name, peak matching and timing, on fakes."""
    cuda = torch.device("cuda")
    assert bench.default_out(cuda, "gpu").name == "bench-gpu.md"
    assert bench.default_out(torch.device("cpu"), "cpu").name == "bench-cpu.md"
    assert bench.default_out(torch.device("cpu"), "tiny") is None
    args = argparse.Namespace(
        size="gpu", models=["resnet56", "resnet110"], no_compile=False, cuda_graphs=True,
        no_kruns=False, k=[], threads=[])
    monkeypatch.setattr(bench, "data_for", lambda n, shape: None)  # no 50000-image data set
    rows, specs = bench.plan_rows(args, cuda, bench.SIZES["gpu"])
    keys = [r.key for r in rows]
    assert len(set(keys)) == len(keys)
    assert [r.config for r in rows if r.section == "peak"] == ["bf16", "fp32", "tf32"]
    configs = {r.config for r in rows if r.section == "model" and r.model == "resnet56"}
    assert "trainer: bf16, fused SGD, channels_last, CUDA graphs" in configs
    assert "trainer: bf16, fused SGD, compile" in configs
    assert not any("thread" in c for c in configs)
    for m in ("resnet56", "resnet110"):
        k = [r.config for r in rows if r.section == "kruns" and r.model == m]
        for n in (2, 4, 8):
            assert f"{n} processes" in k and f"{n} seeds batched (vmap)" in k
    r = measure.Result("m", "c", 1, 1.0, None, precision="fp32")
    assert report.matching_peak(r, {"bf16": 1, "fp32": 1, "tf32": 1}) == "tf32"

    events, synced = [], []

    class Event:
        def __init__(self, enable_timing):
            events.append(self)

        def record(self):
            self.t = len(synced)

        def synchronize(self):
            synced.append("event")

        def elapsed_time(self, other):
            return 1000.0  # ms

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: synced.append("device"))
    first, rate = measure.time_windows(lambda: None, 10, cuda, measure.Timing(1, 5, 2))
    assert rate == 50.0  # 5 steps x 10 images in the fake 1 s window
    assert synced.count("device") == 2 and synced.count("event") == 2 and len(events) == 4


def test_k_rows_that_cannot_fit_in_host_memory_fail_at_once():
    from convnets.bench.seeds import if_it_fits, mem_available_gib

    assert if_it_fits(lambda: "ran", 2, 1e-6)() == "ran"
    assert if_it_fits(lambda: "ran", 8, None)() == "ran"  # GPU rows: no host check
    if mem_available_gib() is not None:
        with pytest.raises(MemoryError, match="needs about"):
            if_it_fits(lambda: "ran", 8, 1e6)()
    cpu = bench.SIZES["cpu"]
    assert cpu.kruns == {"resnet56": (2, 4, 8), "resnet110": (2, 4, 8)}
    assert set(cpu.seed_gib) == set(cpu.kruns)


def test_render_rewrites_the_stored_rows_and_failures_without_measuring(tmp_path, monkeypatch):
    out = tmp_path / "bench.md"
    args = TINY + ["--no-kruns", "--out", str(out)]
    _stop_after(monkeypatch, 1, RuntimeError("boom"))
    assert bench.main(args) == 0
    before = out.read_text()

    def refuse(*a, **k):
        raise AssertionError("--render measured a row")

    for name in ("bench_fast", "bench_baseline", "matmul_peak"):
        monkeypatch.setattr(bench, name, refuse)
    assert bench.main(args + ["--render"]) == 0
    text = out.read_text()
    assert state_of(text)["done"] == state_of(before)["done"]
    assert tables(text)["Models"] == tables(before)["Models"]
    assert "**incomplete: 5 of 6 rows** (1 failed" in text
    assert f"model | {MODEL} | trainer: fp32: failed: RuntimeError: boom" in text
    assert ("tables rendered again from the stored rows (nothing re-measured) by the "
            "rendering code of commit") in text
    # the defaults section follows convnets.runtime.auto_switches: bf16 where the CPU has it,
    # fused SGD, NCHW, compiled for the 64,000-step schedule of a CIFAR ResNet
    from convnets.runtime import cpu_has_bf16

    (row,) = tables(text)["The trainer's defaults"]
    want = "trainer: bf16, fused SGD, compile" if cpu_has_bf16() else "(no such row)"
    assert row["runtime: auto resolves to"] == want
