"""Bad data and run-length faults are stopped before any run opens: one line, nothing created,
no MLflow run (each case failed on the main of 2026-12-02: a 12-60 line traceback, a FAILED
run, a created data folder, or a silently accepted warm-up)."""

from __future__ import annotations

import shutil
import textwrap

import pytest

import experiments.commands as commands
from convnets.data import DatasetError, load_dataset
from experiments.__main__ import main
from tests.data_formats import write_imagefolder, write_mnist

SPEC = textwrap.dedent("""
    name: {name}
    claim: Tiny claim for the tests.
    citation: Nobody 2026, Table 0
    recipe:
      data: {{name: {data}, options: {{{opts}}}}}
      schedule: {{unit: epochs, length: 2, drops: [0.5], warmup_iterations: {warmup}}}
      batch_size: 4
    groups:
      - name: G
        model: {model}
        baseline: base
        variants:
          base: {{options: {options}}}
    profiles:
      smoke: {{seeds: 1}}
    """)


@pytest.fixture
def no_runs(tmp_path, monkeypatch):
    db = tmp_path / "store" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setattr(commands, "run_jobs", lambda *a, **k: pytest.fail("a run started"))
    return db


def _spec(tmp_path, data, warmup=0, model="cifar_resnet", options="{depth: 8}"):
    path = tmp_path / "pf.yaml"
    opts = "" if data == "synthetic" else "cache: false"
    path.write_text(SPEC.format(name="pf", data=data, warmup=warmup, model=model,
                                options=options, opts=opts))
    return str(path)


def _refused(capsys, args, *needles):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # the message alone, no traceback
    for needle in needles:
        assert needle in err[0], err[0]


def test_an_empty_test_class_folder_is_an_error(tmp_path):
    """Failed on the main of 2026-12-02: the test split was evaluated on the other classes."""
    root = tmp_path / "imgs"
    write_imagefolder(root)
    shutil.rmtree(root / "test" / "dog")
    (root / "test" / "dog").mkdir()
    with pytest.raises(DatasetError, match=r"test/dog has no \.jpg/\.jpeg/\.png images"):
        load_dataset(f"imagefolder:{root}", cache=False)


def test_non_image_files_are_counted(tmp_path, capfd):
    root = tmp_path / "imgs"
    write_imagefolder(root)
    (root / "train" / "cat" / "notes.txt").write_text("x")
    (root / "test" / "dog" / "Thumbs.db").write_text("x")
    ds = load_dataset(f"imagefolder:{root}", cache=False)
    assert len(ds.train) == 6 and len(ds.test) == 4
    assert "2 file(s) that are not .jpg/.jpeg/.png images skipped" in capfd.readouterr().err


def test_an_empty_image_folder_is_refused_before_any_run(tmp_path, no_runs, capsys):
    root = tmp_path / "imgs"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    _refused(capsys, ["run", _spec(tmp_path, f"imagefolder:{root}"), "--profile", "smoke"],
             "pf G/base/seed0", "has no class folders")
    assert not no_runs.exists()


@pytest.mark.parametrize("damage, needle", [
    ("truncate", "truncated"), ("magic", "not an idx file"), ("labels", "label")])
def test_corrupt_mnist_is_refused_before_any_run(tmp_path, no_runs, capsys, damage, needle):
    data = tmp_path / "data"
    write_mnist(data, "MNIST", gz=False)
    raw = data / "MNIST" / "raw"
    if damage == "truncate":
        f = raw / "train-images-idx3-ubyte"
        f.write_bytes(f.read_bytes()[:100])
    elif damage == "magic":
        f = raw / "t10k-labels-idx1-ubyte"
        f.write_bytes(b"\x01\x02" + f.read_bytes()[2:])
    else:
        f = raw / "train-labels-idx1-ubyte"
        b = bytearray(f.read_bytes())
        b[-1] = 77  # class 77 of 10
        f.write_bytes(bytes(b))
    spec = _spec(tmp_path, "mnist", model="mnist_resnet", options="{}")
    assert main(["run", spec, "--profile", "smoke", "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0].lower(), err
    assert not no_runs.exists()


def test_a_missing_data_dir_is_named_and_not_created(tmp_path, no_runs, capsys):
    missing = tmp_path / "nowhere"
    _refused(capsys, ["run", _spec(tmp_path, "mnist", model="mnist_resnet", options="{}"),
                      "--profile", "smoke", "--data-dir", str(missing)],
             str(missing), "does not exist")
    assert not missing.exists() and not no_runs.exists()


def test_a_warmup_longer_than_an_epoch_schedule_is_refused(tmp_path, no_runs, capsys):
    """synthetic 512 training images at batch 4 for 2 epochs = 256 iterations."""
    spec = _spec(tmp_path, "synthetic", warmup=300)
    _refused(capsys, ["run", spec, "--profile", "smoke"], "'schedule.warmup_iterations' (300)",
             "256 iterations: 2 epochs of 128 steps")
    assert not no_runs.exists()


def test_a_result_of_data_that_changed_since_is_refused(tmp_path, monkeypatch, capsys):
    """Failed on the main of 2026-12-03: `mnist` enters the config hash by name, so after its
    files changed the finished run was skipped and its old error reported as the answer."""
    db = tmp_path / "store" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("CONVNETS_CHECKPOINTS", str(tmp_path / "ckpt"))
    data = tmp_path / "data"
    write_mnist(data, "MNIST", gz=False)
    spec = _spec(tmp_path, "mnist", model="mnist_resnet", options="{}")
    args = ["run", spec, "--profile", "smoke", "--data-dir", str(data),
            "--set", "runtime.precision=fp32"]
    assert main(args) == 0
    assert main(args) == 0  # unchanged data: the finished run is the answer
    assert "FINISHED (skipped)" in capsys.readouterr().out

    f = data / "MNIST" / "raw" / "train-images-idx3-ubyte"
    b = bytearray(f.read_bytes())
    b[-1] ^= 0xFF  # one pixel of the last training image
    f.write_bytes(bytes(b))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "pf G/base/seed0" in err[0] and "changed since" in err[0] and "--force" in err[0]

    assert main(args + ["--force"]) == 0  # trains again, on the data as they are now
    from mlflow.tracking import MlflowClient

    cl = MlflowClient(f"sqlite:///{db}")
    runs = cl.search_runs([cl.get_experiment_by_name("pf").experiment_id])
    sums = {r.data.tags["dataset_checksum"] for r in runs if r.info.status == "FINISHED"}
    assert len(runs) == 2 and len(sums) == 2


def test_an_unfinished_run_does_not_resume_on_data_that_changed_since(tmp_path, monkeypatch,
                                                                       capsys):
    """Failed on the main of 2026-12-04: the run stopped after its first epoch resumed from its
    checkpoint on the changed files, one run trained on two data sets. Now the runner refuses it
    before any run opens, and ``fit`` itself refuses such a checkpoint."""
    from convnets.checkpoint import CheckpointError
    from convnets.train import fit
    from experiments.runner import checkpoint_path
    from experiments.spec import expand, load_spec

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    monkeypatch.setenv("CONVNETS_CHECKPOINTS", str(tmp_path / "ckpt"))
    data = tmp_path / "data"
    write_mnist(data, "MNIST", gz=False)
    spec = _spec(tmp_path, "mnist", model="mnist_resnet", options="{}")
    (job,) = expand(load_spec(spec), "smoke", data_dir=str(data),
                    sets=[("runtime.precision", "fp32")])
    ckpt = checkpoint_path(job)

    def stop(metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(job.config, checkpoint=ckpt, progress=False, on_epoch_end=stop)
    assert ckpt.exists()
    f = data / "MNIST" / "raw" / "train-images-idx3-ubyte"
    b = bytearray(f.read_bytes())
    b[-1] ^= 0xFF
    f.write_bytes(bytes(b))

    args = ["run", spec, "--profile", "smoke", "--data-dir", str(data),
            "--set", "runtime.precision=fp32"]
    assert main(args) == 2
    # (the store is new here, so MLflow's lines of creating it come first)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "mlflow" not in line]
    assert len(err) == 1 and "pf G/base/seed0" in err[0] and "two data sets" in err[0], err
    with pytest.raises(CheckpointError, match="two data sets"):
        fit(job.config, checkpoint=ckpt, progress=False)
    assert main(args + ["--force"]) == 0  # from scratch, on the data as they are now
    assert not ckpt.exists()
