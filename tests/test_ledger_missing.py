"""``run --missing``: a campaign goes on from the committed ledger, on any machine. How far the
ledger answers a (config key, seed), and the shift queue's view of the same runs."""

from __future__ import annotations

import math
from pathlib import Path

from analysis import ledger
from analysis import runs as io
from convnets.names import DIVERGED, RunStatus
from experiments.__main__ import main
from experiments.shifts import done_keys

SMOKE_PART = Path(__file__).resolve().parent.parent / "paper_tables" / "data" / \
    "2026-11-23_smoke_cpu_all-claims"


def _ledger_with_fates(root: Path) -> dict[str, tuple[str, int]]:
    """A ledger of the smoke part's 8 degradation runs, four of them given other fates: stopped
    at horizon 800, killed, crashed, diverged. Returns (config key, seed) by fate."""
    data = io.load_snapshot(SMOKE_PART)
    runs = data.runs[data.runs["experiment"] == "degradation"].reset_index(drop=True)
    fates = {"horizon800": 0, "killed": 2, "crashed": 4, "diverged": 6}  # seed 0 of each net
    runs.loc[fates["horizon800"], "horizon"] = "800"
    runs.loc[1, ["horizon", "total_iterations"]] = "64"  # a run to its end names it (since 12-07)
    runs.loc[fates["killed"], ["status", "failure_kind"]] = [RunStatus.KILLED, "interrupted"]
    runs.loc[fates["crashed"], ["status", "failure_kind"]] = [RunStatus.FAILED, "error"]
    runs.loc[fates["diverged"], ["status", "failure_kind"]] = [RunStatus.FAILED, DIVERGED]
    ids = set(runs["run_id"])
    part = io.RunData(runs, data.curves[data.curves["run_id"].isin(ids)].reset_index(drop=True),
                      {k: v for k, v in data.preds.items() if k in ids},
                      {k: v for k, v in data.targets.items() if k in ids})
    ledger.write_part(part, root, device="test CPU (2 cores)", part_id="fates",
                      ended="2026-11-23T12:00:00+00:00")
    key = {n: (runs.loc[i, "config_hash"], int(runs.loc[i, "seed"])) for n, i in fates.items()}
    key["finished"] = (runs.loc[1, "config_hash"], int(runs.loc[1, "seed"]))
    return key


def test_the_ledger_answers_a_run_as_far_as_it_got_and_only_with_a_result(tmp_path):
    key = _ledger_with_fates(tmp_path)
    reached = ledger.reach(tmp_path)
    assert reached[key["finished"]] == math.inf  # its schedule's end
    assert reached[key["horizon800"]] == 800
    assert reached[key["diverged"]] == math.inf  # a result at every later horizon
    assert key["killed"] not in reached and key["crashed"] not in reached
    assert len(reached) == 6
    h800 = key["horizon800"]
    assert ledger.holds(reached, *h800, 800) and ledger.holds(reached, *h800, 400)
    assert not ledger.holds(reached, *h800, 1600) and not ledger.holds(reached, *h800, None)
    assert ledger.holds(reached, *key["finished"], None)
    assert not ledger.holds(reached, *key["killed"], 1)
    assert ledger.reach(tmp_path / "empty") == {}
    # the shift queue counts a run done only when it ran to its schedule's end (or diverged)
    done = {(k[2], k[3]) for k in done_keys(tmp_path)}  # (variant, seed)
    assert done == {("plain20", 1), ("plain56", 1), ("resnet20", 1), ("resnet56", 0),
                    ("resnet56", 1)}


def test_run_missing_plans_only_what_the_committed_ledger_lacks(capsys):
    # the committed seed004-mnist cpu part holds seeds 0-2 of its 14 variants (named data
    # sets: their config keys need no data on this machine)
    assert main(["run", "seed004-mnist", "--profile", "cpu", "--seeds", "4", "--missing",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--missing: the ledger holds 42 of 56 runs to the schedule's end" in out
    assert "held: ResNet, MNIST/full_preact seeds 0, 1, 2" in out
    planned = [line for line in out.splitlines() if " config " in line]
    assert len(planned) == 14 and all("/seed3 config" in line for line in planned)
    # a horizon is answered by runs that went past it
    assert main(["run", "seed004-mnist", "--profile", "cpu", "--horizon", "50", "--missing",
                 "--dry-run"]) == 0
    assert "holds 42 of 42 runs at horizon 50" in capsys.readouterr().out
