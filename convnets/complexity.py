"""Parameter and multiply-accumulate counts.

MACs are those of the convolutions and linear layers (nothing for BN, ReLU, pooling or
additions), read off each layer's output shape in one forward pass: the convention of the
papers' "multiply-adds" (He et al. 2015, Table 1) and of torchvision's "GFLOPS" column. The
tests hold them equal, stage by stage, to ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs
per multiply-accumulate) for every registered model.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import torch
from torch import nn

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
    (``_forward_counts``)."""
    return sum(_forward_counts(model, input_size)[0].values())


def _forward_counts(model: nn.Module, input_size: tuple[int, ...]
                    ) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    """One forward pass of a single zero example (no grad, eval mode, the model left as it
    was): the MACs of each Conv2d and Linear layer by qualified name, from its output shape (a
    convolution's output element costs (in / groups) * kh * kw multiply-adds, a linear one's
    ``in_features``), and each top-level child's output shape (C, H, W).

    Counting layers skips the flop counter's dispatch of every operator (and its import of
    torch._dynamo, seconds at start-up); functional matrix products in a ``forward`` would be
    missed, which the tests rule out model by model. Batch norm keeps its input's shape and
    has no MACs; on meta it runs PyTorch's Python decomposition, nine tenths of the pass, so
    the count passes its input through instead."""
    macs: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def count(name):
        def hook(m, _inp, out):
            per = (m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                   if isinstance(m, nn.Conv2d) else m.in_features)
            macs[name] = macs.get(name, 0) + out[0].numel() * per
        return hook

    def shape(name):
        def hook(_m, _inp, out):
            if isinstance(out, torch.Tensor):
                shapes[name] = tuple(out.shape[1:])
        return hook

    handles = [m.register_forward_hook(count(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles += [c.register_forward_hook(shape(n)) for n, c in model.named_children()]
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
    return macs, shapes


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def stage_table(model: nn.Module, input_size: tuple[int, ...]) -> list[StageRow]:
    """Per top-level child: output shape, parameters and MACs for one example.

    Model families are written so that their top-level children are the stages in forward
    order; parameters outside any child are reported as a row named ``(other)``.
    """
    macs, shapes = _forward_counts(model, input_size)
    rows = []
    for name, child in model.named_children():
        own = sum(v for k, v in macs.items() if k.split(".")[0] == name)
        rows.append(StageRow(name, shapes.get(name, ()), count_params(child), own))
    own_params = count_params(model) - sum(r.params for r in rows)
    if own_params:
        rows.append(StageRow("(other)", (), own_params, 0))
    return rows
