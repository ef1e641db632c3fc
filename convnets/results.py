"""What a run gives back (``RunResult``, built by ``build_result``) and the two ways it stops
early (``DivergedError``, ``DeadlineReached``), plus ``NullLogger``, the logger of no tracking.

Imports torch, numpy and ``convnets.runtime``; never the trainer (the types of
``build_result``'s arguments are named for reading only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from convnets.names import CLEAN_TRAIN_ERROR, HORIZON, final_error
from convnets.runtime import Runtime, device_name

if TYPE_CHECKING:
    from convnets.device_data import DeviceData
    from convnets.optim import StepSchedule


@dataclass
class RunResult:
    """A finished run: its per-epoch history, final metrics, predictions and provenance."""

    history: list[dict[str, float]]
    final: dict[str, float]
    predictions: np.ndarray  # predicted class per evaluation example, dataset order
    targets: np.ndarray
    eval_split: str
    info: dict[str, Any] = field(default_factory=dict)


class NullLogger:
    """Logger used when none is given: does nothing."""

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None: ...


class DivergedError(RuntimeError):
    """The training loss became non-finite."""


class DeadlineReached(RuntimeError):
    """The run was stopped at an iteration boundary because its deadline passed; the
    checkpoint (if any) holds the exact state, so rerunning resumes to the same result."""

    def __init__(self, iteration: int, total: int):
        super().__init__(f"deadline reached at iteration {iteration} of {total}")
        self.iteration, self.total = iteration, total


def check_finite(train_loss: float, epoch: int, iteration: int, steps: int, lr: float) -> None:
    """Raise ``DivergedError`` if the epoch's mean training loss is not finite."""
    if not math.isfinite(train_loss):
        raise DivergedError(
            f"training loss became non-finite ({train_loss}) in epoch {epoch + 1} "
            f"(iterations {iteration - steps}-{iteration}, lr {lr:g})"
        )


def build_result(history: list[dict], err: float, pred: torch.Tensor, data: DeviceData,
                 rt: Runtime, sched: StepSchedule, steps_per_epoch: int, wall_time_s: float,
                 **info: Any) -> RunResult:
    """The run's final metrics and provenance from its last epoch and evaluation."""
    last = history[-1]
    final = {
        final_error(data.eval_split): err,
        "final_train_error": last["train_error"],
        "final_train_loss": last["train_loss"],
        "wall_time_s": wall_time_s,
    }
    if last.get(CLEAN_TRAIN_ERROR) is not None:
        final["final_clean_train_error"] = last[CLEAN_TRAIN_ERROR]
    info.setdefault(HORIZON, sched.total)  # the iteration it reached
    info = dict(data.info, eval_split=data.eval_split, steps_per_epoch=steps_per_epoch,
                total_iterations=sched.total, device=device_name(rt.device),
                precision=rt.precision, channels_last=rt.channels_last,
                compile=rt.compile, fused_sgd=rt.fused_sgd, **info)
    return RunResult(history=history, final=final, predictions=pred.cpu().numpy(),
                     targets=data.eval_y.cpu().numpy(), eval_split=data.eval_split, info=info)

