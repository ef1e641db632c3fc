"""Values a recipe cannot mean and inputs that would be silently wrong are refused before
anything runs (each test failed on the main of 2026-12-07)."""

from __future__ import annotations

import shutil

import pytest

from analysis import ledger
from analysis import runs as io
from convnets.config import ConfigError, config_hash, resolve_config
from convnets.data import DatasetError, load_dataset
from tests.data_formats import write_imagefolder

BASE = {"model": {"name": "cifar_resnet", "options": {"depth": 8}}}


@pytest.mark.parametrize("momentum", [1.0, 1.5])
def test_momentum_of_one_or_more_is_refused(momentum):
    with pytest.raises(ConfigError, match=r"'optim.momentum' must be in \[0, 1\)"):
        resolve_config(dict(BASE, optim={"momentum": momentum}))


@pytest.mark.parametrize("spelling", ["CIFAR10", "cifar-10", " cifar10", "Cifar_10"])
def test_a_data_sets_spellings_are_one_config(spelling):
    assert config_hash(dict(BASE, data={"name": spelling})) == config_hash(BASE)
    assert resolve_config(dict(BASE, data={"name": spelling}))["data"]["name"] == "cifar10"


def test_synthetic_spelled_otherwise_is_the_same_config():
    opts = {"n_train": 64, "n_test": 32, "image_size": 8}
    a = dict(BASE, data={"name": "Synthetic", "options": opts})
    assert config_hash(a) == config_hash(dict(BASE, data={"name": "synthetic", "options": opts}))


def test_a_one_class_image_folder_is_refused(tmp_path):
    write_imagefolder(tmp_path)
    shutil.rmtree(tmp_path / "train" / "dog")
    shutil.rmtree(tmp_path / "test" / "dog")
    with pytest.raises(DatasetError, match="at least 2 classes"):
        load_dataset(f"imagefolder:{tmp_path}", cache=False)


def test_set_seed_is_refused_pointing_to_seed(capsys):
    from experiments.__main__ import main

    assert main(["run", "degradation", "--set", "seed=5", "--dry-run"]) == 2
    assert "--seed S" in capsys.readouterr().err


def test_a_part_id_cannot_leave_the_ledger(tmp_path):
    data = io.load_snapshot(ledger.list_parts()[0])
    with pytest.raises(ledger.PartError, match="part id '../../x'"):
        ledger.write_part(data, tmp_path / "ledger", part_id="../../x", device="cpu")
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("flag", [["--partition", "gpu\n#SBATCH --mem=1T"],
                                  ["--sbatch=--qos=low\nrm"]])
def test_a_slurm_value_cannot_add_a_line_to_the_batch_script(flag, capsys):
    from experiments.__main__ import main

    assert main(["run", "degradation", "--launcher", "slurm", *flag, "--dry-run"]) == 2
    assert "newlines" in capsys.readouterr().err


def _record_many(variant: str, n: int) -> None:
    from experiments.tuned import record_best

    for i in range(n):
        row = {"variant": variant, "best_lr": 0.1 + i * 1e-4, "dataset": "cifar10",
               "dataset_checksum": "x", "best_val_error": 10.0, "trials": 1, "study": "s"}
        record_best("race", [row], profile="smoke", budget_epochs=1, storage="sqlite:///x.db")


def test_two_searches_recording_at_once_keep_both_and_leave_valid_yaml(tmp_path, monkeypatch):
    """Failed on the main of 2026-12-07: one shared temp name and no lock, so one writer's
    variants were lost (or the file was left invalid)."""
    import multiprocessing

    import yaml

    monkeypatch.setenv("CONVNETS_TUNED_DIR", str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(v, 40)) for v in ("a/x", "b/y", "c/z")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    best = yaml.safe_load((tmp_path / "race.yaml").read_text())["best"]
    assert set(best) == {"a/x", "b/y", "c/z"}
    assert best["a/x"]["lr"] == pytest.approx(0.1 + 39e-4)


@pytest.mark.parametrize("value, message", [
    ("runtime.device=mps", "no Apple GPU (MPS) is available"),
    ("data.resize=100000", "data.resize 100000: one batch of 64 images"),
    ("optim.lr=[1,", "the value is not valid YAML"),
])
def test_bad_set_values_get_one_line_before_any_run(tmp_path, monkeypatch, capsys, value,
                                                    message):
    """Failed on the main of 2026-12-07: each opened an MLflow run and ended FAILED with a
    traceback (or printed a YAML traceback)."""
    import torch

    from experiments.__main__ import main

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = ["run", "degradation", "--profile", "smoke", "--seeds", "1", "--variant",
            "resnet20", "--set", value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "mlflow.db").exists()  # no store, so no run, was opened


def test_a_greyscale_folder_into_a_three_channel_net_is_refused_before_any_run(tmp_path,
                                                                               monkeypatch,
                                                                               capsys):
    """Failed on the main of 2026-12-07: the run opened and crashed with a shape traceback."""
    import numpy as np
    from PIL import Image

    from experiments.__main__ import main

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "grey" / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((8, 8), 40 * i, np.uint8), mode="L").save(
                    tmp_path / "grey" / split / cls / f"{i}.png")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["run", "degradation", "--profile", "smoke", "--seeds", "1", "--variant",
                 "resnet20", "--dataset", f"imagefolder:{tmp_path / 'grey'}",
                 "--set", "batch_size=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 1-channel images, the model 'cifar_resnet' takes 3" in err[0]
    assert not (tmp_path / "mlflow.db").exists()


def test_an_lr_search_storage_no_database_takes_is_one_line(tmp_path, monkeypatch, capsys):
    """Failed on the main of 2026-12-07: SQLAlchemy's NoSuchModuleError traceback."""
    from experiments.__main__ import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["lr-search", "degradation", "--profile", "smoke", "--storage",
                 "foo://bar"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--storage 'foo://bar': not a storage Optuna can open" in err[0]
    assert not (tmp_path / "mlflow.db").exists()


def test_ctrl_c_during_the_preflight_is_one_line(tmp_path, monkeypatch, capsys):
    """Failed on the main of 2026-12-07: Ctrl-C while the data were checked printed a
    traceback."""
    import experiments.commands as commands
    from experiments.__main__ import main

    def interrupted(jobs):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "check_jobs_data", interrupted)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["run", "degradation", "--profile", "smoke", "--seeds", "1"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["interrupted before any run started; nothing was changed"]


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_a_checkpoint_folder_that_cannot_be_written_is_one_line_before_any_run(
        tmp_path, monkeypatch, capsys, where):
    """Failed on the main of 2026-12-07: the run opened, trained to its first checkpoint and
    ended FAILED with a traceback. (Root writes into a mode-0500 folder regardless, so the
    read-only case is a folder whose writes the kernel refuses to anyone: /proc.)"""
    import os

    import torch

    from experiments.__main__ import main

    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    folder = {"a file": blocker, "under a file": blocker / "ckpt"}.get(where)
    if folder is None:
        folder = tmp_path / "ro"
        if os.geteuid() == 0:
            folder = "/proc/self/convnets-ckpt"
        else:
            folder.mkdir(mode=0o500)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setenv("CONVNETS_CHECKPOINTS", str(folder))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["run", "degradation", "--profile", "smoke", "--seeds", "1", "--variant",
                 "resnet20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the checkpoint folder {folder} cannot be written" in err[0], err
    assert not (tmp_path / "mlflow.db").exists()  # no store, so no run, was opened


def test_a_dry_run_on_a_missing_image_folder_is_one_line(tmp_path, monkeypatch, capsys):
    """Failed on the main of 2026-12-07: `run ... --dataset imagefolder:/missing --dry-run`
    printed a DatasetError traceback (an image folder's config key is its content)."""
    from experiments.__main__ import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for launcher in ("local", "slurm"):
        assert main(["run", "degradation", "--profile", "smoke", "--seeds", "1", "--dataset",
                     f"imagefolder:{tmp_path / 'missing'}", "--launcher", launcher,
                     "--dry-run"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "image folder" in err[0] and "does not exist" in err[0], err
