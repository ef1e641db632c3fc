"""A run's checkpoint: written atomically, read with the weights-only unpickler, restored into
the model, optimizer, data generator and global RNGs, and the ``meta`` it was written with.

Imports torch only: what is in a checkpoint beyond those states (epoch, iteration, history,
schedule state, ...) is the trainer's business and passes through as keyword arguments.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, model, optimizer, data_gen: torch.Generator,
                    device: torch.device, **state: Any) -> None:
    """Everything ``restore_checkpoint`` needs, plus ``state`` (epoch, iteration, history, ...)."""
    _atomic_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "data_gen": data_gen.get_state(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            **state,
        },
        path,
    )


def restore_checkpoint(path: Path, model, optimizer, data_gen: torch.Generator,
                       device: torch.device) -> dict:
    """Load a run's checkpoint into ``model``, ``optimizer``, ``data_gen`` and the RNGs.

    Returns the checkpoint dict (epoch, iteration, history, wall_time_s, meta). Loaded on the
    CPU: RNG states must stay CPU byte tensors; ``load_state_dict`` moves the rest.
    """
    state = load_checkpoint(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    data_gen.set_state(state["data_gen"])
    torch.set_rng_state(state["cpu_rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return state


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint read with torch's weights-only unpickler.

    Checkpoints may sit on a shared disk (docs/scaling.md), and a full unpickler runs any code
    a file names. What ``save_checkpoint`` writes is tensors, RNG byte tensors, state dicts and
    plain containers of numbers and strings, all of which the weights-only unpickler accepts, so
    the allow-list of extra globals stays empty: anything else is refused, not executed.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise RuntimeError(f"checkpoint {path} holds objects outside the weights-only "
                           f"allow-list, so it was not written by convnets.train (delete it to "
                           f"start afresh): {str(err).splitlines()[0]}") from None


def read_checkpoint_meta(path: str | Path) -> dict:
    """The ``meta`` a checkpoint was written with ({} if none or unreadable)."""
    try:
        return load_checkpoint(path).get("meta", {})
    except Exception:  # a truncated or foreign file: treat as no checkpoint
        return {}

