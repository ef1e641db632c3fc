"""lr-search: Optuna studies on a validation split, pruning, resuming, workers, MLflow, tuned lr."""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from convnets import device_data
from convnets.config import resolve_config
from convnets.data import load_dataset
from convnets.device_data import prepare_data
from convnets.names import tracking_uri
from experiments import lr_search as search
from experiments import search_settings as settings_mod
from experiments import spec_check
from experiments.cli_args import add_lr_search_parser

SPEC = textwrap.dedent(
    """
    name: tiny
    claim: Tiny claim for the lr-search tests.
    citation: Nobody 2026, Table 0
    recipe:
      data: {name: synthetic, options: {n_train: 256, n_test: 64, image_size: 12}}
      optim: {lr: 0.1}
      schedule: {unit: epochs, length: 4, drops: [0.5]}
      batch_size: 32
    groups:
      - name: g
        model: cifar_resnet
        baseline: a
        variants:
          a: {options: {depth: 8}}
    profiles:
      smoke: {seeds: 2}
    """
)
STUDY = "lr-tiny-g/a-smoke"


@pytest.fixture(scope="module")
def env(mlflow_store, tmp_path_factory):
    """The tiny spec as a known spec name, tuned lrs in a temporary folder, one torch thread."""
    root = tmp_path_factory.mktemp("search")
    (root / "specs").mkdir()
    (root / "specs" / "tiny.yaml").write_text(SPEC)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs: threads only contend on a loaded 2-core runner
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spec_check, "SPEC_DIR", root / "specs")
        mp.setenv("CONVNETS_TUNED_DIR", str(root / "tuned"))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield root
    torch.set_num_threads(threads)


def _settings(root: Path, name: str, **keys) -> str:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(keys))
    return str(path)


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_lr_search_parser(sub)
    return search.run_lr_search(parser.parse_args(["lr-search", *argv]))


def _client() -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri())


def _runs(cl: MlflowClient, flt: str = ""):
    exp = cl.get_experiment_by_name("tiny")
    return cl.search_runs([exp.experiment_id], filter_string=flt, max_results=1000)


def _children(cl: MlflowClient, parent_id: str):
    return _runs(cl, f"tags.`mlflow.parentRunId` = '{parent_id}'")


def _parent(cl: MlflowClient, storage: str):
    found = _runs(cl, f"tags.search_parent = 'true' and tags.optuna_storage = '{storage}'")
    assert len(found) == 1, [r.info.run_name for r in found]
    return found[0]


@pytest.fixture(scope="module")
def searched(env):
    """One 3-trial TPE search through the CLI parser (2-epoch budget)."""
    storage = f"sqlite:///{env / 'optuna.db'}"
    settings = _settings(env, "tpe", lr_range=[0.01, 0.5], n_startup_trials=2, budget_epochs=2)
    rc = _cli("tiny", "--profile", "smoke", "--trials", "3", "--storage", storage,
              "--search-file", settings, "--seed", "0")
    return {"rc": rc, "storage": storage, "settings": settings}


def test_search_records_best_lr_and_nested_runs(searched, env):
    assert searched["rc"] == 0
    study = optuna.load_study(study_name=STUDY, storage=searched["storage"])
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert all(0.01 <= t.params["lr"] <= 0.5 for t in trials)
    best = min(trials, key=lambda t: (t.value, t.number))

    tuned = yaml.safe_load((env / "tuned" / "tiny.yaml").read_text())["best"]["g/a"]
    assert tuned["lr"] == pytest.approx(best.params["lr"], rel=1e-5)
    assert tuned["val_error"] == pytest.approx(best.value, abs=1e-3)
    assert (tuned["trials"], tuned["study"], tuned["profile"], tuned["budget_epochs"]) == \
        (3, STUDY, "smoke", 2)

    cl = _client()
    parent = _parent(cl, searched["storage"])
    assert parent.info.run_name == "lr-search/g/a"
    assert parent.data.tags["search"] == "true" and parent.data.tags["study"] == STUDY
    assert float(parent.data.tags["best_lr"]) == pytest.approx(best.params["lr"], rel=1e-12)
    assert parent.info.status == "FINISHED"
    kids = _children(cl, parent.info.run_id)
    assert len(kids) == 3
    for run in kids:
        tags = run.data.tags
        n = int(run.data.params["trial_number"])
        assert tags["study"] == STUDY and tags["trial_state"] == "COMPLETE"
        assert tags["search"] == "true"
        assert float(run.data.params["lr"]) == pytest.approx(trials[n].params["lr"], rel=1e-12)
        curve = cl.get_metric_history(run.info.run_id, "val_error")
        assert [m.step for m in sorted(curve, key=lambda m: m.step)] == [1, 2]
        assert run.data.metrics["final_val_error"] == pytest.approx(trials[n].value)
    # the analysis selects final runs by these tags: search runs must not carry them
    for run in [parent, *kids]:
        assert not {"variant", "group", "config_hash"} & set(run.data.tags)


def test_rerun_adds_trials_to_the_same_study_and_parent_run(searched, env):
    assert _cli("tiny", "--trials", "2", "--storage", searched["storage"],
                "--search-file", searched["settings"]) == 0
    study = optuna.load_study(study_name=STUDY, storage=searched["storage"])
    assert [t.number for t in study.get_trials()] == [0, 1, 2, 3, 4]
    cl = _client()
    parent = _parent(cl, searched["storage"])  # still exactly one parent run
    assert parent.data.tags["n_trials"] == "5"
    assert len(_children(cl, parent.info.run_id)) == 5


def test_run_with_tuned_lr_uses_the_recorded_value(searched, env):
    from experiments.__main__ import main

    lr = yaml.safe_load((env / "tuned" / "tiny.yaml").read_text())["best"]["g/a"]["lr"]
    assert main(["run", "tiny", "--profile", "smoke", "--lr", "tuned", "--seeds", "1"]) == 0
    cl = _client()
    final = [r for r in _runs(cl) if "variant" in r.data.tags]
    assert len(final) == 1
    assert final[0].data.tags["lr_source"] == "tuned"
    assert float(final[0].data.params["optim.lr"]) == lr
    assert final[0].data.tags["eval_split"] == "test"  # the final run, not the search, tests


def test_a_terrible_lr_is_pruned(env):
    storage = f"journal:{env / 'prune.journal'}"
    settings = _settings(env, "grid", grid=[1e-6, 0.1, 0.05], budget_epochs=3,
                         pruner="median", pruner_options={"n_startup_trials": 1})
    assert _cli("tiny", "--storage", storage, "--search-file", settings, "--no-record") == 0
    study = optuna.load_study(study_name=STUDY, storage=search.make_storage(storage))
    trials = study.get_trials()
    assert len(trials) == 3  # default with a grid: every point once
    assert sorted(t.params["lr"] for t in trials) == [1e-6, 0.05, 0.1]
    # GridSampler(seed=0) visits 0.05, 0.1, 1e-6 (optuna 5): 1e-6 comes after a good lr
    assert trials[0].params["lr"] != 1e-6, "grid order changed: pick another grid or seed"
    terrible = next(t for t in trials if t.params["lr"] == 1e-6)
    assert terrible.state.name == "PRUNED"
    assert max(terrible.intermediate_values) < 3
    assert any(t.state.name == "COMPLETE" for t in trials)
    cl = _client()
    parent = _parent(cl, storage)
    states = {r.data.params["lr"]: r.data.tags["trial_state"]
              for r in _children(cl, parent.info.run_id)}
    assert states[repr(1e-6)] == "PRUNED"
    assert parent.data.tags["n_pruned"] == str(sum(t.state.name == "PRUNED" for t in trials))
    # the grid is done: a rerun adds nothing
    assert _cli("tiny", "--storage", storage, "--search-file", settings, "--no-record") == 0
    assert len(optuna.load_study(study_name=STUDY, storage=search.make_storage(storage))
               .get_trials()) == 3


def test_search_never_reads_the_test_set(env, monkeypatch):
    class NoTestSet:
        """A data set whose test split raises on access."""

        def __init__(self, ds):
            self._ds = ds

        def __getattr__(self, name):
            if name == "test":
                raise AssertionError("the lr search read the test set")
            return getattr(self._ds, name)

    calls = []

    def guarded(*args, **kwargs):
        calls.append(args)
        return NoTestSet(load_dataset(*args, **kwargs))

    # the two places a search loads its data: counting its images, and fit
    monkeypatch.setattr(device_data, "load_dataset", guarded)
    monkeypatch.setattr(settings_mod, "load_dataset", guarded)
    # the guard works: evaluating on the test split does touch it
    cfg = resolve_config({"model": {"name": "cifar_resnet", "options": {"depth": 8}},
                          "data": {"name": "synthetic",
                                   "options": {"n_train": 64, "image_size": 12}}})
    with pytest.raises(AssertionError, match="read the test set"):
        prepare_data(cfg, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="val_size"):
        settings_mod.require_validation_split(cfg)

    rows = search.lr_search("tiny", "smoke", trials=2, budget_epochs=1, record=False,
                            storage=f"journal:{env / 'notest.journal'}")
    assert calls and rows[0]["COMPLETE"] == 2


def _check_workers(storage: str, env: Path) -> None:
    t0 = time.perf_counter()
    settings = _settings(env, "workers", budget_epochs=1, n_startup_trials=2)
    assert _cli("tiny", "--trials", "4", "--workers", "2", "--storage", storage,
                "--search-file", settings, "--no-record") == 0
    study = optuna.load_study(study_name=STUDY, storage=search.make_storage(storage))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # none lost, none duplicated
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(t.user_attrs["worker"] for t in trials) == [0, 0, 1, 1]  # 2 each
    cl = _client()
    kids = _children(cl, _parent(cl, storage).info.run_id)
    assert sorted(int(r.data.params["trial_number"]) for r in kids) == [0, 1, 2, 3]
    print(f"2 workers on {storage.split(':')[0]}: {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow  # > 9 s; `pytest -m slow` runs it
def test_two_workers_share_a_journal_study(env):
    _check_workers(f"journal:{env / 'workers.journal'}", env)


# ---------------------------------------------------------------------------------------------
# PostgreSQL: a throwaway server on 127.0.0.1
# ---------------------------------------------------------------------------------------------


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return versions[-1] if versions else None


@pytest.fixture
def postgres_url():
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in "
                    "/usr/lib/postgresql/*/bin; .ci/run installs them with apt-get")
    pytest.importorskip("psycopg2", reason="the postgres driver comes with the dev extra")
    # not under pytest's tmp dir (mode 0700): as root the server runs as another user
    root = Path(tempfile.mkdtemp(prefix="convnets-pg-"))
    run_as: dict = {}
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pw = pwd.getpwnam("nobody")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    data, port = root / "data", _free_port()
    try:
        subprocess.run([initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, timeout=120, **run_as)
        subprocess.run([pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
                        "-o", f"-h 127.0.0.1 -p {port} -k {root} -F", "start"],
                       check=True, capture_output=True, timeout=90, **run_as)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {err}\n{getattr(err, 'stderr', '')}\n{log}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60, **run_as)
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # > 9 s; `pytest -m slow` runs it
def test_two_workers_share_a_postgresql_study(env, postgres_url):
    _check_workers(postgres_url, env)
