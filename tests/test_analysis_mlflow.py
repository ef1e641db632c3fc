"""MLflow round trip: collect -> snapshot -> tables from the snapshot equal tables from MLflow."""

import filecmp
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.entities import Metric, Param

from analysis import runs as io
from analysis import tables
from analysis.__main__ import main
from convnets.names import REPO_ROOT, tracking_uri

VARIANTS = [("plain", "plain-20", "plain-20", "", "", 8.0),
            ("plain", "plain-56", "plain-20", "", "higher", 9.0),
            ("ResNet", "resnet-20", "resnet-20", "8.75", "", 8.0),
            ("ResNet", "resnet-56", "resnet-20", "6.97", "lower", 7.0)]


def _log_run(client, exp_id, tmp, group, variant, base, paper, expected, mu, seed, status,
             kind="diverged"):
    rng = np.random.default_rng(seed * 10 + len(variant))
    tags = dict(experiment="degradation", claim="Deeper plain nets train worse; ResNets do not.",
                citation="He et al. 2016, CVPR", variant=variant, group=group, baseline=base,
                paper_error=paper, expected=expected, seed=str(seed), profile="quick",
                config_hash=f"{variant}-cfg", dataset="cifar10",
                dataset_label="CIFAR-10 (JPEG q75 copy)", dataset_checksum="abc",
                git_commit=f"{seed}" * 40, git_dirty="false", torch_version="2.11",
                cuda_version="", device="cpu", eval_split="test", lr_source="paper")
    run_id = client.create_run(exp_id, tags=tags, run_name=f"{variant}-s{seed}").info.run_id
    rows, metrics = [], []
    for epoch in range(1, 4):
        it = epoch * 50
        rows.append(dict(epoch=epoch, iteration=it, train_loss=1 / epoch,
                         train_error=mu + 20 / epoch, test_error=mu + 22 / epoch + rng.random(),
                         lr=0.1, images_per_sec=1e3, epoch_time_s=1.0))
    if status == "FINISHED":
        # one number stated three times, as a real run states it: the final error is the
        # error of the stored predictions and the last evaluation of the curve
        target = np.arange(400) % 10
        pred = np.where(rng.random(400) < 1 - (mu + rng.normal(0, 0.2)) / 100, target,
                        (target + 1) % 10)
        final = float((pred != target).mean() * 100)
        rows[-1]["test_error"] = final
        metrics += [Metric(k, v, 0, 0) for k, v in dict(
            final_test_error=final, final_train_error=mu - 5, final_train_loss=0.1,
            wall_time_s=3.0).items()]
    for row in rows:
        metrics += [Metric(k, v, 0, row["iteration"]) for k, v in row.items()
                    if k != "iteration"]
    client.log_batch(run_id, metrics=metrics, params=[Param("optim.lr", "0.1")])
    if status == "FINISHED":
        path = tmp / "curve.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        client.log_artifact(run_id, str(path))
        np.savez(tmp / "predictions.npz", pred=pred, target=target)
        client.log_artifact(run_id, str(tmp / "predictions.npz"))
        cfg = {"model": {"name": variant}, "data": {"name": "cifar10",
                                                    "data_dir": "/home/someone/data"}}
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
        client.log_artifact(run_id, str(tmp / "config.yaml"))
    else:
        client.set_tag(run_id, "failure_reason", "loss is nan")
        client.set_tag(run_id, "failure_kind", kind)
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("degradation", artifact_location=(tmp / "art").as_uri())
    for seed in (0, 1, 2):
        for spec in VARIANTS:
            _log_run(client, exp_id, tmp, *spec, seed, "FINISHED")
    _log_run(client, exp_id, tmp, *VARIANTS[1], 3, "FAILED")
    _log_run(client, exp_id, tmp, *VARIANTS[3], 3, "FAILED", kind="error")  # a crash
    _log_run(client, exp_id, tmp, *VARIANTS[1], 4, "KILLED")
    return uri, tmp


def test_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{REPO_ROOT / 'mlflow.db'}"
    assert tracking_uri().startswith("sqlite:////")  # absolute path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////x/y.db")
    assert tracking_uri() == "sqlite:////x/y.db"


def test_collect_casts_and_counts(store):
    runs = io.collect(store[0])
    # 12 finished + 2 failed + the KILLED run, which the tables count but never compare
    assert len(runs) == 15
    assert runs["status"].value_counts().to_dict() == {"FINISHED": 12, "FAILED": 2, "KILLED": 1}
    assert str(runs["seed"].dtype) == "Int64" and runs["final_error"].dtype == float
    assert runs["git_dirty"].dtype == bool
    ok = runs[runs["status"] == "FINISHED"]
    assert ok["curve_uri"].str.endswith("/curve.csv").all()
    assert ok["predictions_uri"].str.endswith("/predictions.npz").all()
    failed = runs[runs["status"] == "FAILED"].iloc[0]
    assert failed["failure_kind"] == "diverged" and np.isnan(failed["final_error"])


@pytest.mark.slow  # tables built twice with figures: about 15-30 s; make test keeps the runner-to-tables end-to-end test
def test_snapshot_tables_equal_mlflow_tables(store, tmp_path, capsys):
    uri, _ = store
    data = io.load_mlflow(uri)
    assert len(data.curves) == 36 and len(data.preds) == 12
    io.export_snapshot(data, tmp_path / "data")
    snap = io.load_snapshot(tmp_path / "data")
    pd.testing.assert_frame_equal(snap.runs, data.runs)
    assert all(np.array_equal(snap.preds[k], data.preds[k]) for k in data.preds)
    with np.load(tmp_path / "data" / "predictions.npz") as npz:
        assert npz["pred__" + next(iter(data.preds))].dtype == np.uint8
        assert sum(k.startswith("target__") for k in npz.files) == 1  # shared targets

    a = tables.write_all(snap, tmp_path / "from_snapshot")
    b = tables.write_all(data, tmp_path / "from_mlflow", log_uri=uri)
    names = sorted(p.name for p in a if p.suffix in (".csv", ".md"))
    assert names == sorted(p.name for p in b if p.suffix in (".csv", ".md"))
    assert "degradation.csv" in names and "degradation.paired.csv" in names
    _, mismatch, errors = filecmp.cmpfiles(a[0].parent, b[0].parent, names, shallow=False)
    assert not mismatch and not errors
    table = pd.read_csv(tmp_path / "from_mlflow" / "degradation.csv").set_index("variant")
    assert table.loc["plain-56", "n_failed"] == 1 and table.loc["plain-56", "n"] == 3
    assert table.loc["resnet-56", "n_failed"] == 0  # a crash is not a result
    md = (tmp_path / "from_mlflow" / "degradation.md").read_text()
    assert "Profile: quick" in md and "CIFAR-10 (JPEG q75 copy)" in md
    assert "Runs: 13 (12 finished, 1 failed)" in md and "1 crashed run(s)" in md
    assert (tmp_path / "from_mlflow" / "figures" / "degradation_curves.pdf").stat().st_size > 0

    # the figures went to a run named `analysis`, which collect ignores
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("degradation")
    found = client.search_runs([exp.experiment_id], "attributes.run_name = 'analysis'")
    assert len(found) == 1
    logged = {f.path for f in client.list_artifacts(found[0].info.run_id, "figures")}
    assert "figures/degradation_curves.png" in logged
    assert len(io.collect(uri)) == 15  # the analysis run is not one of them

    # the CLI over the same store and snapshot
    main(["--tracking-uri", uri, "collect"])
    assert "plain-56" in capsys.readouterr().out
    main(["--tracking-uri", uri, "export", "--out", str(tmp_path / "cli")])
    assert (tmp_path / "cli" / "runs.csv").read_text() == (tmp_path / "data" / "runs.csv").read_text()
    with pytest.raises(SystemExit):  # no snapshot there: a clear error, not a traceback
        main(["tables", "--source", "snapshot", "--snapshot", str(tmp_path / "none"),
              "--out", str(tmp_path / "x")])


def test_a_part_holds_each_config_and_no_path_of_the_machine(store, tmp_path):
    """From 2026-12-03 a part holds each config hash's resolved config (configs.json), so the
    next change of the hash rule can be recomputed from the part; runs.csv names no file:// URI
    of the machine that ran (failed on the main of 2026-12-02)."""
    from analysis import ledger

    uri, _ = store
    part = ledger.write_part(io.load_mlflow(uri), tmp_path, device="test CPU", part_id="p1")
    assert ledger.validate_part(part)["files"]["configs.json"]
    configs = json.loads((part / "configs.json").read_text())
    assert set(configs) == {f"{v[1]}-cfg" for v in VARIANTS}
    assert configs["plain-56-cfg"]["model"] == {"name": "plain-56"}
    assert configs["plain-56-cfg"]["data"]["data_dir"] is None
    text = (part / "runs.csv").read_text()
    assert "file://" not in text and "/home/someone" not in (part / "configs.json").read_text()
    assert ledger.load_ledger(tmp_path).configs == configs


def test_export_new_writes_only_what_the_ledger_lacks(tmp_path, capsys):
    """A store outlives its export: ``export --part --new`` writes the runs no part holds as they
    are (new runs, and a run extended to a later horizon since), and nothing when nothing is
    new."""
    from mlflow import MlflowClient

    from analysis import ledger

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("degradation", artifact_location=(tmp_path / "art").as_uri())
    first = [_log_run(client, exp, tmp_path, *VARIANTS[0], seed, "FINISHED") for seed in (0, 1)]
    client.set_tag(first[0], "horizon", "1600")
    parts = tmp_path / "ledger"
    export = ["--tracking-uri", uri, "export", "--part", "--ledger", str(parts), "--device",
              "test CPU"]
    main([*export, "--part-id", "p1"])
    with pytest.raises(SystemExit):
        main([*export, "--new", "--part-id", "p2"])
    assert "nothing new" in capsys.readouterr().err and not (parts / "p2").exists()
    client.set_tag(first[0], "horizon", "3200")  # extended since
    later = _log_run(client, exp, tmp_path, *VARIANTS[2], 0, "FINISHED")
    main([*export, "--new", "--part-id", "p3"])
    p3 = ledger.validate_part(parts / "p3")
    assert p3["n_runs"] == 2
    assert set(pd.read_csv(parts / "p3" / "runs.csv")["run_id"]) == {first[0], later}
    with pytest.warns(UserWarning, match="counted once, from p3"):  # the extended run
        held = ledger.load_ledger(parts).runs.set_index("run_id")
    assert len(held) == 3 and str(held.loc[first[0], "horizon"]) == "3200"
