"""Claim specs: one YAML file per paper claim, validated in full before anything trains.

A spec names the claim and its citation, the recipe (a ``convnets.train`` config), groups of
variants (each group compares its variants with one baseline, as a paper table does), the
paper's number per variant, and three profiles (``paper``, ``quick``, ``smoke``). ``expand``
turns a spec + profile into jobs: one resolved trainer config per variant and seed.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from convnets.config import (
    DEFAULTS,
    HORIZON_KEYS,
    NON_TRAINING_KEYS,
    ConfigError,
    hash_of_resolved,
    resolve_config,
)
from convnets.models import build_on_meta, check_options, get_entry
from convnets.names import PROFILES
from convnets.runtime import check_precision
from experiments.spec_check import (
    SpecError,
    check_groups,
    check_keys,
    check_seeds,
    check_variant,
    read_yaml,
    require_mapping,
    require_str_list,
    require_text,
    spec_path,
)

# Every key a spec may hold, with what it means (unknown keys are errors).
SPEC_KEYS = {
    "name": "the spec's name (= file stem = MLflow experiment)",
    "claim": "one sentence: what the paper claims",
    "citation": "paper, section, table/figure",
    "notes": "free text: recipe choices not from the paper, and why",
    "differences": "list of what still differs from the paper (tagged on every run; the "
                   "tables' provenance prints it)",
    "recipe": "base convnets.train config for every run",
    "groups": "list of comparison groups",
    "profiles": "paper / quick / smoke: seeds, overrides, model replacements, variant subsets",
    "tables": "what the claim's tables show beyond the per-group comparisons (TABLE_KEYS)",
}
TABLE_KEYS = {
    "training_error": "true: also compare the training error (clean, and running), for claims "
                      "about trainability",
    "curves": "true: draw the runs' training and test curves against iterations, a panel per "
              "group; per_variant: a panel per variant, one line per seed (many variants)",
    "interactions": "list of {name, plus: [variants], minus: [variants], expect: higher | "
                    "lower}: a contrast of variant means, e.g. (a1 - a0) - (b1 - b0)",
    "comparisons": "list of {variant, reference, expect}: a variant against one outside its "
                   "group",
}
GROUP_KEYS = {
    "name": "group label, e.g. ResNet-110",
    "model": "registered model for the group's variants",
    "baseline": "variant the others are compared with",
    "recipe": "config overrides for this group",
    "variants": "mapping variant name -> variant",
    "profile_overrides": "per-profile config overrides for this group only (applied last)",
    "equivalence_delta": "margin in error points for the tables' equivalence test (TOST): the "
                         "paper's own difference or a stated smallest effect of interest",
    "equivalence_declared": "date (YYYY-MM-DD) the margin was set: runs started before it are "
                            "judged by a margin declared after them, and the table says so",
}
VARIANT_KEYS = {
    "model": "registered model (overrides the group's)",
    "options": "builder options (unit=, shortcut=, ...)",
    "paper": "paper's test error in %, or 'fail' (> 20%), or null",
    "expect": "higher | lower: paper's direction vs baseline when it gives no number",
    "recipe": "config overrides for this variant",
    "note": "free text",
}
PROFILE_KEYS = {
    "seeds": "number of seeds (0..seeds-1)",
    "overrides": "config overrides for every run in this profile",
    "models": "model replacements: {registered name: {name: ..., options: {...}}}",
    "variants": "list of 'group/variant' or 'variant' to run (default: all)",
}


@dataclass(frozen=True)
class Job:
    """One run to do: a config ``expand`` has resolved and validated (read it, do not change
    it: the shift's eager fallback changes a copy), and its hash, computed once on first read
    (an image folder's hash reads its content checksum, which a dry listing never needs)."""
    experiment: str
    group: str
    variant: str
    seed: int
    config: dict
    tags: dict[str, str] = field(default_factory=dict)

    @functools.cached_property
    def config_hash(self) -> str:
        return hash_of_resolved(self.config)

    @functools.cached_property
    def legacy_hashes(self) -> tuple[str, ...]:
        """Keys the previous hash rule gave this config (``convnets.config.HASH_RULES``): a
        store's runs and checkpoints made before the rule changed are found under them and
        re-keyed by the runner."""
        old = hash_of_resolved(self.config, rule="spelled")
        return () if old == self.config_hash else (old,)

    @property
    def keys(self) -> tuple[str, ...]:
        """Today's config key, then its ``legacy_hashes``."""
        return (self.config_hash, *self.legacy_hashes)

    @property
    def key(self) -> str:
        return f"{self.group}/{self.variant}/seed{self.seed}"


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options":
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_dotted(cfg: dict, dotted: str, value: Any) -> None:
    """``set_dotted(cfg, "optim.lr", 0.05)``."""
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def parse_set(items: list[str]) -> list[tuple[str, Any]]:
    """``["optim.lr=0.05", "data.augment=false"]`` -> ``[("optim.lr", 0.05), ...]``."""
    out = []
    for item in items:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=0.05")
        key, value = item.split("=", 1)
        check_set_key(item, key.strip())
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            why = str(getattr(err, "problem", "") or err).splitlines()[0]
            raise SpecError(f"--set {item!r}: the value is not valid YAML ({why}); quote a "
                            "string, e.g. --set 'data.name=\"x\"'") from None
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out.append((key.strip(), parsed))
    return out


def check_set_key(item: str, key: str) -> None:
    """A ``--set`` key must name a config key (any key below ``*.options``, which builders and
    data sets check); the error says it came from the command line, not from a spec."""
    if key == "seed":  # one config is expanded into seeds; a --set would be silently ignored
        raise SpecError(f"--set {item!r} (command line): a run's seed is chosen with --seed S "
                        "(repeatable; e.g. --seeds 6 --seed 5), not --set")
    node: Any = DEFAULTS
    walked = []
    for part in key.split("."):
        if walked and walked[-1] == "options":
            return
        if not isinstance(node, dict) or part not in node:
            where = ".".join(walked) or "the top level"
            valid = ", ".join(node) if isinstance(node, dict) else "none (not a mapping)"
            raise SpecError(f"--set {item!r} (command line): unknown config key {key!r}; valid "
                            f"keys at {where}: {valid}")
        node = node[part]
        walked.append(part)


def load_spec(name: str) -> dict:
    """Read and validate a spec: structure and types, models and options, paper numbers, and
    every run config, both as written (recipe + group + variant, before any profile) and as
    each profile resolves it, so nothing a profile overrides escapes the checks."""
    path = spec_path(name)
    spec = read_yaml(path, path.read_text())
    check_keys(str(path), spec, SPEC_KEYS)
    for key in ("name", "claim", "citation", "groups", "profiles"):
        if key not in spec:
            raise SpecError(f"{path}: missing required key {key!r}")
    for key in ("name", "claim", "citation") + (("notes",) if "notes" in spec else ()):
        require_text(f"{path}: {key}", spec[key])
    if spec["name"] != path.stem:
        raise SpecError(f"{path}: name {spec['name']!r} must equal the file stem {path.stem!r}")
    if spec.get("recipe") is not None:
        require_mapping(f"{path}: recipe", spec["recipe"])
    spec["_path"] = str(path)
    diffs = spec.get("differences")
    if diffs is not None and not (isinstance(diffs, list)
                                  and all(isinstance(d, str) and d.strip() for d in diffs)):
        raise SpecError(f"{path}: differences must be a list of non-empty strings")
    check_groups(str(path), spec["groups"])
    for gi, group in enumerate(spec["groups"]):
        _check_group(f"{path}: groups[{gi}]", group)
    require_mapping(f"{path}: profiles", spec["profiles"])
    if not spec["profiles"]:
        raise SpecError(f"{path}: profiles: define at least one of {', '.join(PROFILES)}")
    for pname, prof in spec["profiles"].items():
        _check_profile(f"{path}: profiles.{pname}", pname, prof)
    _check_tables(f"{path}: tables", spec.get("tables"), spec["groups"])
    _check_as_written(spec)
    for pname in spec["profiles"]:
        expand(spec, pname)
    return spec


def _check_tables(where: str, tables: Any, groups: list) -> None:
    """The ``tables`` block: known keys, and every variant it names exists."""
    if tables is None:
        return
    require_mapping(where, tables)
    check_keys(where, tables, TABLE_KEYS)
    variants = {v for g in groups for v in g["variants"]}
    if not isinstance(tables.get("training_error", False), bool):
        raise SpecError(f"{where}.training_error: must be true or false")
    curves = tables.get("curves", False)
    if not (isinstance(curves, bool) or curves == "per_variant"):
        raise SpecError(f"{where}.curves: must be true, false or per_variant")
    entries = [("interactions", e, ("plus", "minus")) for e in tables.get("interactions") or []]
    entries += [("comparisons", e, ("variant", "reference")) for e in
                tables.get("comparisons") or []]
    for key, entry, sides in entries:
        require_mapping(f"{where}.{key}[]", entry)
        names = [n for side in sides for n in
                 (entry.get(side) if isinstance(entry.get(side), list) else [entry.get(side)])]
        unknown = [n for n in names if n not in variants]
        if unknown or not names:
            raise SpecError(f"{where}.{key}: no variant {unknown[0] if unknown else None!r} "
                            f"(have: {', '.join(sorted(variants))})")
        if entry.get("expect") not in (None, "higher", "lower"):
            raise SpecError(f"{where}.{key}: expect must be higher or lower, got "
                            f"{entry.get('expect')!r}")


def _check_group(where: str, group: dict) -> None:
    check_keys(where, group, GROUP_KEYS)
    for key in ("name", "baseline", "variants"):
        if key not in group:
            raise SpecError(f"{where}: missing required key {key!r}")
    delta = group.get("equivalence_delta")
    if delta is not None and (isinstance(delta, bool) or not isinstance(delta, (int, float))
                              or not delta > 0):
        raise SpecError(f"{where}: equivalence_delta must be a number of error points > 0, "
                        f"got {delta!r}")
    declared = group.get("equivalence_declared")
    if declared is not None and not isinstance(declared, datetime.date):
        raise SpecError(f"{where}: equivalence_declared must be a date, YYYY-MM-DD, got "
                        f"{declared!r}")
    if group["baseline"] not in group["variants"]:
        raise SpecError(f"{where}.baseline: {group['baseline']!r} is not one of its variants")
    for vname, var in group["variants"].items():
        vwhere = f"{where}.variants.{vname}"
        var = {} if var is None else var
        group["variants"][vname] = var
        check_keys(vwhere, var, VARIANT_KEYS)
        check_variant(vwhere, var)
        model = var.get("model", group.get("model"))
        if not model:
            raise SpecError(f"{vwhere}: no model (set group.model or variant.model)")
        try:
            get_entry(model)
            check_options(model, var.get("options") or {})
        except (KeyError, ValueError, TypeError) as err:
            raise SpecError(f"{vwhere}: {err.args[0] if err.args else err}") from None


def _check_profile(where: str, pname: str, prof: Any) -> None:
    if pname not in PROFILES:
        raise SpecError(f"{where}: unknown profile; profiles are {', '.join(PROFILES)}")
    check_keys(where, prof, PROFILE_KEYS)
    check_seeds(where, prof.get("seeds", 1))
    if prof.get("overrides") is not None:
        require_mapping(f"{where}.overrides", prof["overrides"])
    if prof.get("variants") is not None:
        require_str_list(f"{where}.variants", prof["variants"])
    for repl_from, repl in require_mapping(f"{where}.models", prof.get("models") or {}).items():
        rwhere = f"{where}.models.{repl_from}"
        check_keys(rwhere, repl, {"name": "", "options": ""})
        require_text(f"{rwhere}.name", repl.get("name"))
        require_mapping(f"{rwhere}.options", repl.get("options") or {})
        try:
            get_entry(repl_from)
            get_entry(repl["name"])
            check_options(repl["name"], repl.get("options") or {})
        except (KeyError, ValueError, TypeError) as err:
            raise SpecError(f"{rwhere}: {err.args[0] if err.args else err}") from None


def _check_as_written(spec: dict) -> None:
    """Each variant's config before any profile touches it must itself be valid: a profile
    that overrides a bad value (a string batch_size) would otherwise hide it from its runs."""
    for gi, group in enumerate(spec["groups"]):
        for vname, var in group["variants"].items():
            cfg = deep_merge(spec.get("recipe") or {}, group.get("recipe") or {})
            cfg = deep_merge(cfg, var.get("recipe") or {})
            cfg["model"] = {"name": var.get("model", group.get("model")),
                            "options": dict(var.get("options") or {})}
            try:
                resolve_config(cfg)
            except ConfigError as err:
                raise SpecError(f"{spec['_path']}: groups[{gi}].variants.{vname} (as written, "
                                f"before profile overrides): {err.args[0]}") from None


def require_devices(jobs: list[Job]) -> None:
    """A CUDA device asked for on a machine without one fails here, before any MLflow run is
    created, rather than in the first run's setup."""
    wanted = sorted({str(j.config["runtime"]["device"]) for j in jobs})
    cuda = [d for d in wanted if d.startswith("cuda")]
    if cuda and not torch.cuda.is_available():
        raise SpecError(f"runtime.device {cuda[0]!r} (--device or the spec): no CUDA device is "
                        "visible on this machine; use --device cpu or auto")
    if "mps" in wanted and not torch.backends.mps.is_available():
        raise SpecError("runtime.device 'mps' (--device or the spec): no Apple GPU (MPS) is "
                        "available on this machine; use --device cpu or auto")
    _check_input_size(jobs)
    for d in cuda:
        if ":" in d and int(d.split(":")[1]) >= torch.cuda.device_count():
            raise SpecError(f"runtime.device {d!r}: only {torch.cuda.device_count()} CUDA "
                            "device(s) are visible")
    for j in jobs:  # forced bf16 on a CPU without native bf16: refused before any run opens
        rt = j.config["runtime"]
        dev = "cuda" if rt["device"] == "auto" and torch.cuda.is_available() else rt["device"]
        try:
            check_precision(rt, "cpu" if dev == "auto" else dev)
        except ConfigError as err:
            raise SpecError(f"{j.experiment} {j.key}: {err}") from None


def _check_input_size(jobs: list[Job]) -> None:
    """``data.resize`` so large that one batch of float32 input images (3 channels at most)
    takes more than a quarter of this machine's memory cannot train: refused before any run
    opens (it ended as a crashed run with an allocation traceback)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    for j in jobs:
        r = j.config["data"].get("resize")
        if r and j.config["batch_size"] * 3 * r * r * 4 > memory / 4:
            raise SpecError(f"{j.experiment} {j.key}: data.resize {r}: one batch of "
                            f"{j.config['batch_size']} images of {r}x{r} takes "
                            f"{j.config['batch_size'] * 3 * r * r * 4 / 2**30:.0f} GiB as input "
                            f"alone, over a quarter of this machine's {memory / 2**30:.0f} GiB")


def expected_direction(var: dict, base: dict, is_baseline: bool) -> str:
    """'higher' / 'lower' / '': the paper's direction of this variant's error vs the baseline."""
    if is_baseline:
        return ""
    if var.get("expect"):
        return var["expect"]
    p, b = var.get("paper"), base.get("paper")
    if p == "fail" and b != "fail":
        return "higher"
    if isinstance(p, (int, float)) and isinstance(b, (int, float)) and p != b:
        return "higher" if p > b else "lower"
    return ""


def _profile_config(spec: dict, group: dict, var: dict, profile: str) -> dict:
    """A variant's config under ``profile``: recipes (spec, group, variant), the profile's
    overrides, the group's overrides for it, and the model after the profile's replacements."""
    prof = spec["profiles"][profile]
    cfg = deep_merge(spec.get("recipe") or {}, group.get("recipe") or {})
    cfg = deep_merge(cfg, var.get("recipe") or {})
    cfg = deep_merge(cfg, prof.get("overrides") or {})
    cfg = deep_merge(cfg, (group.get("profile_overrides") or {}).get(profile, {}))
    model = var.get("model", group.get("model"))
    options = dict(var.get("options") or {})
    replacements = prof.get("models") or {}
    if model in replacements:
        repl = replacements[model]
        model, options = repl["name"], {**(repl.get("options") or {}), **options}
    cfg["model"] = {"name": model, "options": options}
    return cfg


def _tags(spec: dict, group: dict, vname: str, profile: str, lr_source: str) -> dict[str, str]:
    """The MLflow tags of one variant's runs (the seed is added per run)."""
    var, baseline = group["variants"][vname], group["baseline"]
    paper = var.get("paper")
    return {
        "experiment": spec["name"],
        "claim": spec["claim"].strip(),
        "citation": spec["citation"].strip(),
        "group": group["name"],
        "variant": vname,
        "baseline": baseline,
        "paper_error": "" if paper is None else str(paper),
        "expected": expected_direction(var, group["variants"][baseline], vname == baseline),
        "profile": profile,
        "lr_source": lr_source,
        "differences": " | ".join(str(d).strip() for d in spec.get("differences") or []),
    }


def recipe_overrides(sets, *, tuned: bool = False) -> str:
    """What the command line changed in the spec's recipe ('' when nothing): the ``--set``
    keys that change what is trained or reported, and a tuned learning rate. Runs carry it
    (tag ``overrides``) so a table compares only runs of one recipe: a run at another
    ``optim.lr`` or with a validation split is listed apart, never set against the rest."""
    how = ("runtime",) + NON_TRAINING_KEYS + HORIZON_KEYS
    items = [f"{k}={v}" for k, v in sorted(sets, key=lambda kv: kv[0])
             if k.split(".")[0] not in how]
    if tuned:
        items.append("optim.lr=tuned")
    return "; ".join(items)


def expand(
    spec: dict,
    profile: str,
    *,
    seeds: int | None = None,
    sets: list[tuple[str, Any]] = (),
    only: list[str] | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    device: str | None = None,
    horizon: int | None = None,
    tuned_lr: dict[str, float] | None = None,
) -> list[Job]:
    """Grid x seeds for one profile; every config is resolved and its model built on the meta
    device, so a bad depth or option value fails here, before any run starts."""
    path = spec["_path"]
    if profile not in spec["profiles"]:
        raise SpecError(f"{path}: profile {profile!r} not defined; has {', '.join(spec['profiles'])}")
    prof = spec["profiles"][profile]
    n_seeds = seeds or prof.get("seeds", 1)
    wanted = prof.get("variants")
    jobs: list[Job] = []
    all_variants = {f"{g['name']}/{v}" for g in spec["groups"] for v in g["variants"]}
    for gi, group in enumerate(spec["groups"]):
        for vname, var in group["variants"].items():
            full = f"{group['name']}/{vname}"
            if wanted and full not in wanted and vname not in wanted:
                continue
            if only and full not in only and vname not in only:
                continue
            where = f"{path}: groups[{gi}].variants.{vname} (profile {profile})"
            cfg = _profile_config(spec, group, var, profile)
            model, options = cfg["model"]["name"], cfg["model"]["options"]
            lr_source = "spec"
            if tuned_lr is not None:
                if full not in tuned_lr:
                    raise SpecError(f"{where}: --lr tuned but no tuned lr recorded for {full!r}")
                cfg.setdefault("optim", {})["lr"] = tuned_lr[full]
                lr_source = "tuned"
            if dataset:  # options written for another data set (smoke's synthetic sizes) go
                if (cfg.get("data") or {}).get("name") != dataset:
                    cfg.get("data", {}).pop("options", None)
                set_dotted(cfg, "data.name", dataset)
            for key, value in sets:  # after --dataset, so --set data.options.X=... stays
                set_dotted(cfg, key, value)
                if key == "optim.lr":
                    lr_source = "command line"
            if data_dir:
                set_dotted(cfg, "data.data_dir", data_dir)
            if device:
                set_dotted(cfg, "runtime.device", device)
            if horizon is not None:
                cfg["horizon"] = horizon
            try:
                resolved = resolve_config(cfg)
                # the model as resolved: a --set model.name/options is checked, not the spec's
                model, options = resolved["model"]["name"], resolved["model"]["options"]
                build_on_meta(model, json.dumps(options, sort_keys=True))
            except (ConfigError, ValueError, KeyError, TypeError) as err:
                msg = str(err.args[0] if err.args else err)
                from_cli = [f"--set {k}={v!r}" for k, v in sets if f"'{k}'" in msg
                            or (k.startswith("model.") and "model" in msg)]
                if horizon is not None and "'horizon'" in msg:
                    from_cli.append(f"--horizon {horizon}")
                if from_cli:  # a value given on the command line, not written in the spec
                    raise SpecError(f"{', '.join(from_cli)} (command line), in {where}: "
                                    f"{msg}") from None
                raise SpecError(f"{where}: {msg}") from None
            tags = dict(_tags(spec, group, vname, profile, lr_source),
                        overrides=recipe_overrides(sets, tuned=lr_source == "tuned"))
            for seed in range(n_seeds):
                c = copy.deepcopy(resolved)
                c["seed"] = seed
                jobs.append(Job(spec["name"], group["name"], vname, seed, c,
                                dict(tags, seed=str(seed))))
    for name in (only or []) + (wanted or []):
        if not any(name == v or v.endswith("/" + name) for v in all_variants):
            have = ", ".join(sorted(all_variants))
            raise SpecError(f"{path}: no variant {name!r} (have: {have})")
    return jobs
