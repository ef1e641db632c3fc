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

from convnets.models.registry import build_on_meta


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

    The model is built and run on the meta device (shapes only: no weight is initialised, no
    convolution computes) and its MACs are read off its Conv2d and Linear layers
    (``layer_macs``), the only layers the flop counter counts in these families; the tests
    hold the two counts equal for every registered model. Counted once per (name, options,
    input size) in a process: listings (``experiments shifts``, the bench) ask for the same
    few models many times."""
    return dict(_registered(name, json.dumps(options, sort_keys=True), tuple(input_size)))


@functools.cache
def _registered(name: str, options: str, input_size: tuple[int, ...]) -> tuple:
    model = build_on_meta(name, options)
    layers = sum(isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) for m in model.modules())
    return tuple({"params": count_params(model), "macs": layer_macs(model, input_size),
                  "layers": layers}.items())


def layer_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """MACs of one example's forward pass, summed over the model's Conv2d and Linear layers
    from their output shapes: a convolution's output element costs (in / groups) * kh * kw
    multiply-adds, a linear one's ``in_features``. It skips the flop counter's dispatch of
    every operator, several times faster on meta; functional matrix products in a
    ``forward`` would be missed, which the tests rule out model by model."""
    total = 0

    def count(m, _inp, out):
        nonlocal total
        per = (m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
               if isinstance(m, nn.Conv2d) else m.in_features)
        total += out[0].numel() * per

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    # batch norm keeps its input's shape and has no MACs; on meta it runs PyTorch's Python
    # decomposition, nine tenths of the pass: the count passes its input through instead
    norms = [m for m in model.modules()
             if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))]
    for m in norms:
        m.forward = _same
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=param.device if param is not None else None))
    finally:
        for h in handles:
            h.remove()
        for m in norms:
            del m.forward
        model.train(was_training)
    return total


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


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
