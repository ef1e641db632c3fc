"""A run's checkpoint: written atomically with a digest of its content, read with the
weights-only unpickler and verified against that digest, restored into the model, optimizer,
data generator and global RNGs, and the ``meta`` it was written with.

A checkpoint whose content no longer matches its digest (a flipped byte in a weight, a file
cut short, one written before checkpoints carried a digest) raises ``CheckpointError``; the
runner then keeps it aside (``set_aside``) and starts the run afresh, so a damaged checkpoint
is never resumed into a result.

Imports torch only: what is in a checkpoint beyond those states (epoch, iteration, history,
schedule state, ...) is the trainer's business and passes through as keyword arguments.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch

DIGEST = "digest"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be trusted: unreadable, or its content differs from its digest."""


def content_digest(obj: Any) -> str:
    """sha256 over a checkpoint's content: every tensor's dtype, shape and bytes, every other
    value's repr, in the containers' order (what ``torch.load`` gives back is what was saved)."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{x.dtype}{tuple(x.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"{")
            for k, v in x.items():
                h.update(repr(k).encode() + b":")
                walk(v)
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[" if isinstance(x, list) else b"(")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode() + b";")

    walk(obj)
    return h.hexdigest()


def set_aside(path: Path) -> Path:
    """Rename a checkpoint that failed verification to ``<name>.damaged-<UTC time>.pt`` beside
    it (kept for inspection, never resumed); returns the new path."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = path.with_name(f"{path.stem}.damaged-{stamp}{path.suffix}")
    os.replace(path, kept)
    return kept


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, model, optimizer, data_gen: torch.Generator,
                    device: torch.device, **state: Any) -> None:
    """Everything ``restore_checkpoint`` needs, plus ``state`` (epoch, iteration, history, ...)."""
    content = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "data_gen": data_gen.get_state(),
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        **state,
    }
    _atomic_save({**content, DIGEST: content_digest(content)}, path)


def restore_checkpoint(path: Path, model, optimizer, data_gen: torch.Generator,
                       device: torch.device) -> dict:
    """Load a run's checkpoint into ``model``, ``optimizer``, ``data_gen`` and the RNGs.

    Returns the checkpoint dict (epoch, iteration, history, wall_time_s, meta). Loaded on the
    CPU: RNG states must stay CPU byte tensors; ``load_state_dict`` moves the rest.
    """
    state = load_checkpoint(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    match_param_layout(optimizer)
    data_gen.set_state(state["data_gen"])
    torch.set_rng_state(state["cpu_rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return state


def match_param_layout(optimizer) -> None:
    """Give every per-parameter state tensor of its parameter's shape (SGD's momentum buffer)
    the parameter's memory layout. ``load_state_dict`` keeps the saved strides: a buffer saved
    in NCHW (a CPU run, batched seeds) restored beside channels_last parameters differs in
    strides, which the CPU kernels tolerate and CUDA's fused SGD refuses. (A batched seed's
    optimizer view has no parameter groups: its stacked state is NCHW, as its parameters.)"""
    for group in getattr(optimizer, "param_groups", ()):
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in list(state.items()):
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    if value.stride() != p.stride():
                        state[key] = torch.empty_like(p).copy_(value)
                    assert state[key].stride() == p.stride(), (key, p.shape)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint read with torch's weights-only unpickler and checked against its digest;
    ``CheckpointError`` (naming the path and what is wrong) if it cannot be trusted.

    Checkpoints may sit on a shared disk (docs/scaling.md), and a full unpickler runs any code
    a file names. What ``save_checkpoint`` writes is tensors, RNG byte tensors, state dicts and
    plain containers of numbers and strings, all of which the weights-only unpickler accepts, so
    the allow-list of extra globals stays empty: anything else is refused, not executed.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"checkpoint {path} holds objects outside the weights-only "
                              f"allow-list, so it was not written by convnets.train: "
                              f"{str(err).splitlines()[0]}") from None
    except Exception as err:  # a truncated or garbled zip, an empty file
        raise CheckpointError(f"checkpoint {path} is unreadable: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(state, dict) or DIGEST not in state:
        raise CheckpointError(f"checkpoint {path} carries no content digest (written before "
                              "checkpoints had one, or not by convnets.train): unverifiable")
    digest = state.pop(DIGEST)
    if content_digest(state) != digest:
        raise CheckpointError(f"checkpoint {path} does not match its digest: its content "
                              "changed after it was written")
    return state


def read_checkpoint_meta(path: str | Path) -> dict:
    """The ``meta`` a checkpoint was written with ({} if none); ``CheckpointError`` if the
    checkpoint cannot be trusted."""
    return load_checkpoint(path).get("meta", {})
