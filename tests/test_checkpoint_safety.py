"""Checkpoints are read with the weights-only unpickler: a planted file cannot run code."""

from __future__ import annotations

import pytest
import torch

from convnets.train import fit, load_checkpoint, read_checkpoint_meta

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
    with pytest.raises(RuntimeError, match=r"run\.pt holds objects outside the weights-only"):
        fit(TINY, checkpoint=ckpt, progress=False)
    assert read_checkpoint_meta(ckpt) == {}  # unreadable counts as no checkpoint
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
