"""Checkpoints are read with the weights-only unpickler (a planted file cannot run code) and
verified against their digest (a damaged one is never resumed)."""

from __future__ import annotations

import functools
import zipfile

import mlflow
import pytest
import torch

import experiments.runner as runner
from convnets.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_meta
from convnets.config import ConfigError
from convnets.names import tracking_uri
from convnets.train import fit
from experiments.__main__ import main
from experiments.spec import expand, load_spec
from tests.test_experiments import _write

TINY = {
    "model": {"name": "cifar_resnet", "options": {"depth": 8}},
    "data": {"name": "synthetic", "options": {"n_train": 64, "n_test": 32, "image_size": 8}},
    "schedule": {"unit": "epochs", "length": 2},
    "batch_size": 32,
}


class _Planted:
    """Unpickling this object with the full unpickler creates the file ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(ckpt, marker):
    torch.save({"model": {}, "meta": {"run_id": "x"}, "payload": _Planted(marker)}, ckpt)


def test_a_checkpoint_naming_code_is_refused_not_run(tmp_path):
    ckpt, marker = tmp_path / "run.pt", tmp_path / "pwned"
    _plant(ckpt, marker)
    with pytest.raises(CheckpointError, match=r"run\.pt holds objects outside the weights-only"):
        fit(TINY, checkpoint=ckpt, progress=False)
    with pytest.raises(CheckpointError):
        read_checkpoint_meta(ckpt)
    assert not marker.exists()


def test_the_trainers_own_checkpoint_loads_weights_only(tmp_path):
    ckpt = tmp_path / "run.pt"

    class Stop(Exception):
        pass

    def stop(metrics):
        raise Stop

    with pytest.raises(Stop):
        fit(TINY, checkpoint=ckpt, progress=False, on_epoch_end=stop,
            checkpoint_meta={"run_id": "abc"})
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # no allow-list needed
    assert state["epoch"] == 1 and state["iteration"] == 2
    assert load_checkpoint(ckpt)["meta"] == read_checkpoint_meta(ckpt) == {"run_id": "abc"}
    assert fit(TINY, checkpoint=ckpt, progress=False).history[-1]["epoch"] == 2


def _stop_after_epoch_1(tmp_path):
    ckpt = tmp_path / "run.pt"

    def stop(metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(TINY, checkpoint=ckpt, progress=False, on_epoch_end=stop)
    return ckpt


def _flip_a_weight_byte(ckpt) -> None:
    """Change one byte inside the first tensor record, leaving the zip's structure intact
    (torch's reader does not check the records' CRCs)."""
    with zipfile.ZipFile(ckpt) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
        assert info.compress_type == zipfile.ZIP_STORED
    raw = bytearray(ckpt.read_bytes())
    local = info.header_offset
    name_len = int.from_bytes(raw[local + 26:local + 28], "little")
    extra_len = int.from_bytes(raw[local + 28:local + 30], "little")
    at = local + 30 + name_len + extra_len + 5
    raw[at] ^= 0x40
    ckpt.write_bytes(bytes(raw))


def test_a_checkpoint_with_a_changed_weight_is_refused(tmp_path):
    """Failed on the main of 2026-12-02: the changed checkpoint loaded and was resumed."""
    ckpt = _stop_after_epoch_1(tmp_path)
    assert load_checkpoint(ckpt)["epoch"] == 1  # intact: verifies
    _flip_a_weight_byte(ckpt)
    torch.load(ckpt, map_location="cpu", weights_only=True)  # still a loadable zip
    with pytest.raises(CheckpointError, match="does not match its digest"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("damage", ["truncate", "no-digest"])
def test_unreadable_and_undigested_checkpoints_are_refused(tmp_path, damage):
    ckpt = _stop_after_epoch_1(tmp_path)
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
        match = "unreadable"
    else:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        state.pop("digest")
        torch.save(state, ckpt)
        match = "no content digest"
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(ckpt)


def test_the_runner_sets_a_damaged_checkpoint_aside_and_restarts(mlflow_store, tmp_path,
                                                                 monkeypatch, capsys):
    """Failed on the main of 2026-12-02: the run resumed from the damaged checkpoint and ended
    FINISHED with another loss and error than an uninterrupted run."""
    spec = _write(tmp_path, "damaged")
    job = expand(load_spec(spec), "smoke", seeds=1, only=["base"])[0]
    ckpt = runner.checkpoint_path(job)

    def interrupt(metrics):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "fit", functools.partial(fit, on_epoch_end=interrupt))
    args = ["run", spec, "--profile", "smoke", "--variant", "base", "--seeds", "1"]
    assert main(args) == 130 and ckpt.exists()
    _flip_a_weight_byte(ckpt)
    monkeypatch.setattr(runner, "fit", fit)
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {ckpt} does not match its digest" in out and "from scratch" in out
    kept = list(ckpt.parent.glob(f"{ckpt.stem}.damaged-*.pt"))
    assert len(kept) == 1  # kept aside for inspection, not deleted
    mlflow.set_tracking_uri(tracking_uri())
    runs = mlflow.search_runs(experiment_names=["damaged"], output_format="pandas")
    done = runs[runs["status"] == "FINISHED"]
    assert len(done) == 1 and sorted(runs["status"]) == ["FINISHED", "KILLED"]
    ref = fit(job.config, progress=False)  # the restart equals an uninterrupted run
    assert done["metrics.final_test_error"].iloc[0] == ref.final["final_test_error"]
    assert done["metrics.final_train_loss"].iloc[0] == pytest.approx(
        ref.final["final_train_loss"], rel=0, abs=0)


def test_a_run_keeps_the_precision_of_its_checkpoint(tmp_path):
    """Precision is outside the config hash, so a run stopped on a CPU with native bf16 may
    be resumed on one where auto means fp32: it goes on in bf16 (a run is one precision, and
    records it), and an explicit other precision is refused."""
    bf16 = {**TINY, "runtime": {"precision": "bf16", "allow_slow_bf16": True}}
    ckpt = tmp_path / "run.pt"

    def stop(metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(bf16, checkpoint=ckpt, progress=False, on_epoch_end=stop)
    assert load_checkpoint(ckpt)["precision"] == "bf16"
    with pytest.raises(ConfigError, match="trained in bf16.*asks for fp32"):
        fit({**TINY, "runtime": {"precision": "fp32"}}, checkpoint=ckpt, progress=False)
    resumed = fit(TINY, checkpoint=ckpt, progress=False)  # precision auto
    assert resumed.info["precision"] == "bf16"
    whole = fit(bf16, progress=False)
    assert resumed.final["final_test_error"] == whole.final["final_test_error"]


def test_momentum_restored_beside_channels_last_parameters_takes_their_layout(tmp_path):
    """Failed on the main of 2026-12-07: a momentum buffer saved in NCHW kept its strides when
    restored into a channels_last model (CUDA's fused SGD refuses that)."""
    from convnets.checkpoint import restore_checkpoint, save_checkpoint
    from convnets.models import build_model

    def make(channels_last: bool):
        torch.manual_seed(0)
        m = build_model("cifar_resnet", depth=8)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        return m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)

    m, opt = make(False)
    m(torch.randn(4, 3, 16, 16)).sum().backward()
    opt.step()
    path = tmp_path / "ck.pt"
    save_checkpoint(path, m, opt, torch.Generator(), torch.device("cpu"))
    m2, opt2 = make(True)
    restore_checkpoint(path, m2, opt2, torch.Generator(), torch.device("cpu"))
    convs = [p for p in m2.parameters() if p.ndim == 4]
    assert convs and all(opt2.state[p]["momentum_buffer"].stride() == p.stride() for p in convs)
    saved = dict(zip([n for n, _ in m.named_parameters()], opt.state.values(), strict=True))
    for (name, p) in m2.named_parameters():
        assert torch.equal(opt2.state[p]["momentum_buffer"], saved[name]["momentum_buffer"])
