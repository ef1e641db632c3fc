"""What a claim's table is made of: sections, each one set of like runs under stated
conditions, and the account of every planned run in them.

A section is one profile at one point of its schedule: its end (the runs that ran to it) or a
horizon H (every run that reached H, read from its curve's mark at H, whether it stopped there
or went on). Nothing else is pooled: a run of one section is never compared with a run of
another. Each section says its conditions (``Conditions``) in its title and in every verdict
it gives, so a number read out of a table carries them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from convnets.names import DIVERGED, PROFILES, SMOKE_PROFILES, RunStatus

from .runs import CURVE_COLUMNS, RunData

SPEC_DIR = Path(__file__).resolve().parents[1] / "experiments"


def read_spec(experiment: str) -> dict:
    """The claim's spec (``experiments/<name>.yaml``) read as data, for what tables need from
    it (analysis imports no training code); {} when there is none."""
    path = SPEC_DIR / f"{experiment}.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def paper_schedule(spec: dict) -> dict | None:
    """The schedule of the claim's ``paper`` profile (recipe, then that profile's overrides)."""
    sched = dict((spec.get("recipe") or {}).get("schedule") or {})
    paper = ((spec.get("profiles") or {}).get("paper") or {}).get("overrides") or {}
    sched.update(paper.get("schedule") or {})
    return sched if "length" in sched else None


def crashed(runs: pd.DataFrame) -> pd.Series:
    """FAILED runs that did not diverge (a crash is not a result)."""
    return (runs["status"] == RunStatus.FAILED) & ~runs["failure_kind"].isin(["", DIVERGED])


def results(runs: pd.DataFrame) -> pd.Series:
    """Runs that are results: FINISHED, or FAILED by diverging."""
    return runs["status"].isin([RunStatus.FINISHED, RunStatus.FAILED]) & ~crashed(runs)


def reached_end(runs: pd.DataFrame) -> pd.Series:
    """Runs that ran to their schedule's end (runs from before horizons carry no horizon)."""
    h = runs["horizon"].astype(str)
    return (h == "") | (h == runs["total_iterations"].astype(str))


@dataclass
class Section:
    """One set of like runs: ``profile`` at ``horizon`` (None: the schedule's end)."""

    profile: str
    horizon: int | None
    sel: pd.DataFrame  # one result per (group, variant, seed), values at this point
    pool: pd.DataFrame  # every run of the profile (accounting: killed, crashed, never started)

    @property
    def smoke(self) -> bool:
        return self.profile in SMOKE_PROFILES


def marks(curves: pd.DataFrame) -> pd.DataFrame:
    """The curves' horizon rows, one per (run, horizon)."""
    c = curves.reindex(columns=CURVE_COLUMNS)
    m = c[pd.to_numeric(c["horizon"], errors="coerce").notna()].copy()
    m["horizon"] = pd.to_numeric(m["horizon"]).astype(int)
    return m.drop_duplicates(["run_id", "horizon"], keep="last")


def at_horizon(runs: pd.DataFrame, curves: pd.DataFrame, h: int) -> pd.DataFrame:
    """The runs that reached ``h``, with their final errors replaced by their mark at ``h``
    (evaluation error, running and clean training error); runs that diverged are kept (a
    result at every horizon: they did not get there)."""
    m = marks(curves)
    m = m[m["horizon"] == h].set_index("run_id")
    hit = runs[runs["run_id"].isin(m.index)].copy()
    ids = hit["run_id"]
    hit["final_error"] = ids.map(m["eval_error"]).astype(float).to_numpy()
    hit["final_train_error"] = ids.map(m["train_error"]).astype(float).to_numpy()
    hit["final_clean_train_error"] = ids.map(m["clean_train_error"]).astype(float).to_numpy()
    # a run that went on past h holds predictions of its end, not of h
    hit["stopped_here"] = hit["horizon"].astype(str) == str(h)
    diverged = runs[(runs["status"] == RunStatus.FAILED) & ~crashed(runs)
                    & ~runs["run_id"].isin(m.index)]
    return pd.concat([hit, diverged.assign(stopped_here=False)], ignore_index=True)


#: what every run a group's comparisons hold must share: the recipe as the command line left
#: it (``overrides``: '' for the spec's own), the data (content checksum), the split evaluated
RECIPE = ["overrides", "dataset_checksum", "eval_split"]


def _recipe(r: pd.DataFrame) -> pd.DataFrame:
    """The runs of each group's one recipe (``RECIPE``): the spec's own recipe when the group
    has runs of it, else the recipe with the most runs; among those the data and split with
    the most runs (ties: the most recent). Column ``_apart`` marks the others' runs."""
    if r.empty:
        return r.assign(_apart=False)
    key = r[RECIPE].astype(str).agg("\x1f".join, axis=1)
    r = r.assign(_k=key, _own=r["overrides"].astype(str) == "")
    sizes = r.groupby(["group", "_k"], sort=False).agg(
        _n=("run_id", "size"), _t=("start_time", "max"), _o=("_own", "all")).reset_index()
    best = sizes.sort_values(["_o", "_n", "_t"]).groupby("group").tail(1)
    keep = set(zip(best["group"], best["_k"], strict=True))
    apart = [(g, k) not in keep for g, k in zip(r["group"], r["_k"], strict=True)]
    return r.assign(_apart=apart).drop(columns=["_k", "_own"])


def _recipe_label(row) -> str:
    bits = [row.overrides and f"with {row.overrides}",
            row.dataset_checksum and f"data {str(row.dataset_checksum)[:10]}",
            f"{row.eval_split} error"]
    return ", ".join(b for b in bits if b)


def pick(r: pd.DataFrame) -> pd.DataFrame:
    """One result per (group, variant, seed) of one section's runs.

    Every run compared shares one recipe (``RECIPE``: a run made with ``--set optim.lr=...``,
    with a validation split or on other data is listed apart, never set against the others).
    Within it a cell is one config hash: per variant the config with the most runs is kept
    (ties: the most recent); ``attrs['not_pooled']`` lists the others. The latest run of a
    seed replaces earlier ones."""
    r = _recipe(r.sort_values(["start_time", "run_id"]))
    apart, r = r[r["_apart"]], r[~r["_apart"]].drop(columns="_apart")
    cell = ["group", "variant", "config_hash", "dataset_checksum"]
    sizes = r.groupby(cell).agg(_n=("run_id", "size"), _t=("start_time", "max")).reset_index()
    best = sizes.sort_values(["_n", "_t"]).groupby(["group", "variant"]).tail(1)[cell]
    chosen = pd.MultiIndex.from_frame(r[cell]).isin(pd.MultiIndex.from_frame(best))
    dropped = r[~chosen]
    kept = r[chosen]
    rerun = kept[kept.duplicated(["group", "variant", "seed"], keep="last")]
    sel = kept.drop_duplicates(["group", "variant", "seed"], keep="last")
    sel.attrs["not_pooled"] = [
        f"{len(x)} run(s) of {g}/{v} {_recipe_label(x.iloc[0])}: another recipe than the "
        "table's, not compared" for (g, v, _), x in
        apart.assign(_l=[_recipe_label(t) for t in apart.itertuples()])
        .groupby(["group", "variant", "_l"], sort=False)]
    sel.attrs["not_pooled"] += [
        f"{n} run(s) of {g}/{v} with config {h}" for (g, v, h), n in
        dropped.groupby(["group", "variant", "config_hash"], sort=False).size().items()]
    sel.attrs["not_pooled"] += [
        f"{len(x)} earlier run(s) of {g}/{v} replaced by a rerun of the same seed (seeds "
        f"{', '.join(map(str, x['seed']))}: {', '.join(x['precision'])})"
        for (g, v), x in rerun.groupby(["group", "variant"], sort=False)]
    sel.attrs["overrides"] = "; ".join(sorted(set(r["overrides"].astype(str)) - {""}))
    return sel


def with_served(runs: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """The experiment's runs, and the runs of other experiments that are also one of its
    variants (the same network and recipe, trained once: their ``serves`` tag), as that
    variant, with ``served_from`` naming the experiment that trained them."""
    own = runs[runs["experiment"] == experiment].assign(served_from="")
    other = runs[(runs["experiment"] != experiment) & (runs["serves"].astype(str) != "")]
    rows = []
    for i, text in other["serves"].items():
        for tags in json.loads(text).values():
            if tags.get("experiment") == experiment:
                row = runs.loc[i].copy()
                row["served_from"] = row["experiment"]
                for k, v in tags.items():
                    row[k] = v
                rows.append(row)
    if not rows:
        return own
    return pd.concat([own, pd.DataFrame(rows).astype(own.dtypes.to_dict())], ignore_index=True)


def sections(data: RunData, experiment: str, profile: str | None = None) -> list[Section]:
    """The claim's sections, most faithful first: per profile (``PROFILES`` order; only
    ``profile`` when given), its schedule's end, then its horizons from the latest back.
    Smoke profiles make sections only when nothing else has runs."""
    runs = with_served(data.runs, experiment)
    present = list(dict.fromkeys(runs["profile"]))
    order = [p for p in PROFILES if p in present] + [p for p in present if p not in PROFILES]
    if profile:
        order = [p for p in order if p == profile]
    elif any(p not in SMOKE_PROFILES for p in order):
        order = [p for p in order if p not in SMOKE_PROFILES]
    m = marks(data.curves)
    out = []
    for p in order:
        pool = runs[runs["profile"] == p]
        ok = pool[results(pool)]
        end = ok[reached_end(ok)]
        if len(end):
            out.append(Section(p, None, pick(end.assign(stopped_here=True)), pool))
        for h in sorted(set(m.loc[m["run_id"].isin(ok["run_id"]), "horizon"]), reverse=True):
            out.append(Section(p, int(h), pick(at_horizon(ok, data.curves, int(h))), pool))
    return out


@dataclass
class Conditions:
    """What a section's numbers are: ``title`` (its heading), ``short`` (appended to each of
    its verdicts, e.g. 'at horizon 1,600 of the paper's schedule'; '' for the paper's own
    schedule), and whether the paper's numbers are of its kind (``paper_end``)."""

    title: str
    short: str
    paper_end: bool


def conditions(sec: Section, configs: dict, spec: dict) -> Conditions:
    """The conditions of ``sec``: profile, schedule (the parts' resolved configs), horizon."""
    paper = paper_schedule(spec)
    scheds = [configs[h]["schedule"] for h in dict.fromkeys(sec.sel["config_hash"])
              if isinstance(configs.get(h), dict) and "schedule" in configs[h]]
    s = scheds[0] if scheds else (paper if sec.profile == "paper" else None)
    same_unit = bool(paper and s and paper.get("unit") == s.get("unit"))
    is_paper_sched = sec.profile == "paper" or (same_unit and s["length"] == paper["length"])
    if sec.smoke:
        return Conditions(f"{sec.profile} profile (pipeline check, not evidence)", "", False)
    if sec.horizon is not None:
        whose = "the paper's schedule" if is_paper_sched else f"the {sec.profile} profile's schedule"
        frac = ""
        if s and s.get("unit") == "iterations":
            frac = f" ({100 * sec.horizon / s['length']:.3g}% of its {s['length']:,} iterations)"
        return Conditions(f"{sec.profile} profile at horizon {sec.horizon:,} iterations of "
                          f"{whose}{frac}: a point on the training curves, not the paper's "
                          "final numbers", f"at horizon {sec.horizon:,} of {whose}", False)
    if is_paper_sched:
        return Conditions(f"{sec.profile} profile: the paper's schedule, to its end", "", True)
    if same_unit:
        pct = f"{100 * s['length'] / paper['length']:.3g}%"
        return Conditions(f"{sec.profile} profile: a compressed schedule ({s['length']:,} "
                          f"{s['unit']}, {pct} of the paper's {paper['length']:,}, its lr drops "
                          "moved in with it): not the early part of the paper's run",
                          f"at {pct} of the schedule (compressed)", False)
    return Conditions(f"{sec.profile} profile: a shortened schedule, not the paper's",
                      f"({sec.profile} profile, not the paper's schedule)", False)


def not_run(sec: Section, spec: dict) -> list[str]:
    """The variants the spec plans for the section's profile with no run in the section, as
    'group: variant, variant' (their rows are absent from its tables)."""
    only = ((spec.get("profiles") or {}).get(sec.profile) or {}).get("variants")
    have = set(zip(sec.sel["group"], sec.sel["variant"], strict=True))
    out: dict[str, list[str]] = {}
    for g in spec.get("groups") or []:
        for v in g.get("variants") or {}:
            planned = only is None or v in only or f"{g['name']}/{v}" in only
            if planned and (g["name"], v) not in have:
                out.setdefault(g["name"], []).append(v)
    return [f"{g}: {', '.join(vs)}" for g, vs in out.items()]


ACCOUNT_HEADER = "Runs: planned / finished / failed / killed / crashed / never started"


def account(sec: Section, spec: dict) -> dict[tuple[str, str], str]:
    """Per (group, variant): every planned run accounted for. Planned seeds: the profile's
    seeds in the spec, or as far as the variant's own runs reach, whichever is further;
    finished and failed: the section's results; killed (stopped unfinished by a deadline or a
    signal) and crashed: the profile's runs of that seed with no result here; never started:
    the rest, listed by seed."""
    prof = ((spec.get("profiles") or {}).get(sec.profile) or {})
    floor = int(prof.get("seeds", 0) or 0)
    out = {}
    for (g, v), cell in sec.sel.groupby(["group", "variant"], sort=False):
        have = set(cell["seed"].astype(int))
        tried = set(sec.pool.loc[(sec.pool["group"] == g) & (sec.pool["variant"] == v),
                                 "seed"].astype(int))
        n_plan = max(floor, max(have | tried, default=-1) + 1)
        fin = int((cell["status"] == RunStatus.FINISHED).sum())
        fail = int((cell["status"] == RunStatus.FAILED).sum())
        other = sec.pool[(sec.pool["group"] == g) & (sec.pool["variant"] == v)
                         & ~sec.pool["seed"].astype(int).isin(have)]
        killed = set(other.loc[other["status"] == RunStatus.KILLED, "seed"].astype(int))
        crash = set(other.loc[crashed(other), "seed"].astype(int))
        never = sorted(set(range(n_plan)) - have - killed - crash)
        text = f"{n_plan} / {fin} / {fail} / {len(killed)} / {len(crash)} / {len(never)}"
        if never:
            text += f" (seed{'s' if len(never) > 1 else ''} {', '.join(map(str, never))})"
        out[(g, v)] = text
    return out
