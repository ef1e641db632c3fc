"""Re-keying the ledger when the config hash changes: ``python -m experiments rekey``.

On 2026-12-03 the precision left the config hash (it is how a run executes, like fused SGD or
compile), so bf16 and fp32 seeds of one recipe pool in one cell. Parts exported before then
hold the old keys in ``runs.csv`` and no configs. This module recomputes each old key from the
spec as it stood at the run's commit (``git show COMMIT:experiments/NAME.yaml``): the variant's
config is expanded again for the run's profile, its old key recomputed with the run's precision
(``hash_of_resolved(..., rule="precision", precision=...)``), and only when that equals the key in
``runs.csv`` is the new key taken from the same config. Keys that cannot be reproduced this way
(a spec that no longer expands, a run made with command-line overrides) are listed with the
reason and left as they are, so they never pool by accident.

On 2026-12-07 the model entered the hash by what it is (``convnets.models.model_identity``:
builder and non-default options), so one network two specs name is one run. Parts exported
since 2026-12-03 hold ``configs.json`` (each key's resolved config): their keys are recomputed
from it, after checking that the config gives the recorded key under the rule of its time.

The result is ``paper_tables/data/rekey.csv`` (part, old key -> new key), which
``analysis.ledger.load_ledger`` applies; rerun ``python -m experiments rekey`` after adding a
part made under an earlier rule (a live store's runs are re-keyed by the runner as it meets
them). A test checks that the committed file equals a fresh one.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pandas as pd

from convnets.config import hash_of_resolved, identified_hash
from convnets.names import LEDGER_DIR, REPO_ROOT
from experiments.spec import SpecError, expand, load_spec

REKEY_FILE = LEDGER_DIR / "rekey.csv"
COLUMNS = ["part", "experiment", "group", "variant", "profile", "precision", "old_hash",
           "new_hash", "how"]


def _spec_at(commit: str, experiment: str, folder: Path) -> Path | None:
    """The spec file as it was at ``commit``, written to ``folder`` (None: not in that commit)."""
    try:
        text = subprocess.run(["git", "show", f"{commit}:experiments/{experiment}.yaml"],
                              cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    path = folder / commit[:12] / f"{experiment}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _new_key(spec_path: Path, row) -> str | None:
    """The new key of ``row`` if its old key is reproduced from the spec at ``spec_path``."""
    try:
        jobs = expand(load_spec(str(spec_path)), row.profile, seeds=1,
                      only=[f"{row.group}/{row.variant}"])
    except SpecError:
        return None
    for job in jobs:
        if hash_of_resolved(job.config, rule="precision", precision=row.precision) \
                == row.config_hash:
            return hash_of_resolved(job.config)
    return None


def _configs_by_key(ledger: Path) -> dict[str, tuple[str, dict]]:
    """Every part's configs, by each key they give under the rules of their time (today's and
    "spelled"): a run whose own part lacks its config (a run resumed from a checkpoint made
    before configs were kept) is re-keyed from a config of another part that gives the same
    recorded key, since a key names one config."""
    out: dict[str, tuple[str, dict]] = {}
    for path in sorted(Path(ledger).glob("*/configs.json")):
        for cfg in json.loads(path.read_text()).values():
            for rule in ("spelled", "identity"):
                out.setdefault(identified_hash(cfg, rule=rule), (path.parent.name, cfg))
    return out


def _rows_from_configs(part: Path, elsewhere: dict[str, tuple[str, dict]]) -> list[dict]:
    """Rows of a part that holds its configs (``configs.json``): each key recomputed from its
    resolved config, once the config is shown to give the recorded key under a rule of its
    time ("spelled" or today's); a key missing from the part's configs from another part's
    config that gives it (``elsewhere``); a key no config gives is left as it is, saying so."""
    configs = json.loads((part / "configs.json").read_text())
    runs = pd.read_csv(part / "runs.csv", dtype=str, keep_default_na=False)
    keys = runs[["experiment", "group", "variant", "profile", "precision", "config_hash"]]
    rows = []
    for row in keys.drop_duplicates().itertuples(index=False):
        cfg, new, how = configs.get(row.config_hash), row.config_hash, "no config in the part"
        source = "the part's configs.json"
        if cfg is None and row.config_hash in elsewhere:
            other, cfg = elsewhere[row.config_hash]
            source = f"the configs.json of {other} (a config giving the same key)"
        if cfg is not None:
            made = {rule: identified_hash(cfg, rule=rule) for rule in ("spelled", "identity")}
            if row.config_hash in made.values():
                new, how = made["identity"], f"recomputed from {source}"
            else:
                how = f"not reproduced from {source}: kept as it is"
        rows.append(dict(part=part.name, experiment=row.experiment, group=row.group,
                         variant=row.variant, profile=row.profile, precision=row.precision,
                         old_hash=row.config_hash, new_hash=new, how=how))
    return rows


def rekey_rows(ledger: Path = LEDGER_DIR) -> pd.DataFrame:
    """One row per (part, old key) of every part: from the specs' history for a part without
    ``configs.json``, from its configs for one with them."""
    rows = []
    elsewhere = _configs_by_key(Path(ledger))
    with tempfile.TemporaryDirectory() as tmp:
        for manifest in sorted(Path(ledger).glob("*/MANIFEST.json")):
            part = manifest.parent
            if (part / "configs.json").exists():
                rows += _rows_from_configs(part, elsewhere)
                continue
            runs = pd.read_csv(part / "runs.csv", dtype=str, keep_default_na=False)
            keys = runs[["experiment", "group", "variant", "profile", "precision",
                         "config_hash", "git_commit"]].drop_duplicates()
            for row in keys.itertuples(index=False):
                new, how = None, "not reproduced: kept as it is (never pools with new runs)"
                sources = [(row.git_commit, f"spec at {row.git_commit[:10]}"),
                           ("HEAD", "spec at HEAD")]
                for commit, label in sources:
                    path = _spec_at(commit, row.experiment, Path(tmp))
                    new = _new_key(path, row) if path else None
                    if new:
                        how = f"old key reproduced from the {label}"
                        break
                rows.append(dict(part=part.name, experiment=row.experiment, group=row.group,
                                 variant=row.variant, profile=row.profile,
                                 precision=row.precision, old_hash=row.config_hash,
                                 new_hash=new or row.config_hash, how=how))
    out = pd.DataFrame(rows, columns=COLUMNS).drop_duplicates(["part", "old_hash"])
    return out.sort_values(["part", "experiment", "group", "variant", "old_hash"],
                           ignore_index=True)


def write_rekey(ledger: Path = LEDGER_DIR) -> Path:
    """Write ``rekey.csv`` beside the parts; returns its path."""
    path = Path(ledger) / REKEY_FILE.name
    rekey_rows(ledger).to_csv(path, index=False)
    return path
