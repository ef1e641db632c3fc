"""Parameter and multiply-accumulate counts.

MACs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per
multiply-accumulate for convolutions and matrix products (and nothing for BN, ReLU, pooling
or additions), so MACs = FLOPs / 2. This is the convention of the papers' "multiply-adds"
(He et al. 2015, Table 1) and of torchvision's "GFLOPS" column.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convnets.models.registry import build_model


def count_params(module: nn.Module) -> int:
    """Trainable and frozen parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in module.parameters())


@dataclass
class StageRow:
    name: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


def complexity(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, int]:
    """Parameters and MACs of one forward pass of a single example of ``input_size`` (C, H, W)."""
    rows = stage_table(model, input_size)
    return {"params": count_params(model), "macs": sum(r.macs for r in rows)}


def registered_complexity(name: str, options: dict, input_size: tuple[int, ...]) -> dict[str, int]:
    """``complexity`` of the registered model ``name`` built with ``options``, plus ``layers``
    (its convolution, linear and batch-norm layers: the kernels a step launches per layer).

    Counted once per (name, options, input size) in a process: counting runs the model under
    the flop counter, and listings (``experiments shifts``, the bench) ask for the same few
    models many times."""
    return dict(_registered(name, json.dumps(options, sort_keys=True), tuple(input_size)))


@functools.cache
def _registered(name: str, options: str, input_size: tuple[int, ...]) -> tuple:
    model = build_model(name, **json.loads(options))
    layers = sum(isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) for m in model.modules())
    return tuple(dict(complexity(model, input_size), layers=layers).items())


def stage_table(model: nn.Module, input_size: tuple[int, ...]) -> list[StageRow]:
    """Per top-level child: output shape, parameters and MACs for one example.

    Model families are written so that their top-level children are the stages in forward
    order; MACs outside any child (a functional op in ``forward``) are reported as a row
    named ``(other)``.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    children = list(model.named_children())
    for name, child in children:

        def hook(_m, _inp, out, name=name):
            if isinstance(out, torch.Tensor):
                shapes[name] = tuple(out.shape[1:])

        handles.append(child.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, *input_size, device=device)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    total = sum(counts.get("Global", {}).values()) // 2
    rows = []
    for name, child in children:
        macs = sum(counts.get(f"{root}.{name}", {}).values()) // 2
        rows.append(StageRow(name, shapes.get(name, ()), count_params(child), macs))
    other = total - sum(r.macs for r in rows)
    own_params = count_params(model) - sum(r.params for r in rows)
    if other or own_params:
        rows.append(StageRow("(other)", (), own_params, other))
    return rows
