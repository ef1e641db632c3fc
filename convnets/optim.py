"""The papers' SGD: parameter groups (per-layer and bias learning rates, bias decay), the
optimizer, the step learning-rate schedule with its warm-up, and the iteration plan of a run.

Imports torch, ``convnets.config`` and ``convnets.runtime``; never the trainer, the data or
the models (it sees a model only through ``named_parameters``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from convnets.config import ConfigError
from convnets.runtime import Runtime


def param_groups(model, o: dict, tensors: dict[str, torch.Tensor] | None = None) -> list[dict]:
    """Parameter groups with an ``lr_mult`` each (applied by ``make_step``) and their decay.

    A parameter's multiplier is that of the first ``optim.lr_mult`` prefix its name starts
    with (else 1), times ``optim.bias_lr_mult`` for 1-D parameters (biases, BN scale and
    shift); 1-D parameters get no weight decay when ``optim.bias_decay`` is false, and a
    constant lr (``fixed_lr``: ``optim.lr`` times their multiplier) when
    ``optim.bias_lr_schedule`` is false. Parameters of equal (multiplier, decay, fixed)
    share a group, in model order. ``tensors``: see ``make_optimizer``.
    """
    groups: dict[tuple[float, float, bool], list] = {}
    for name, p in model.named_parameters():
        mult = next((float(m) for pre, m in o["lr_mult"] if name.startswith(pre)), 1.0)
        wd, fixed = o["weight_decay"], False
        if p.ndim <= 1:
            mult *= float(o["bias_lr_mult"])
            wd = wd if o["bias_decay"] else 0.0
            fixed = not o["bias_lr_schedule"]
        groups.setdefault((mult, wd, fixed), []).append(p if tensors is None else tensors[name])
    out = []
    for (m, wd, fixed), ps in groups.items():
        g = {"params": ps, "lr_mult": m, "weight_decay": wd}
        if fixed:
            g["fixed_lr"] = float(o["lr"]) * m
        out.append(g)
    return out


def make_optimizer(model, cfg: dict, rt: Runtime,
                   tensors: dict[str, torch.Tensor] | None = None) -> torch.optim.SGD:
    """The run's SGD over ``model``'s parameters, in groups when the recipe asks for them.

    ``tensors``: what SGD updates instead of the parameters, by parameter name (the K seeds'
    parameters stacked along a new leading dimension, ``convnets.multiseed``); they are
    grouped as the model's own parameters are, so the optimizer's groups and state indices are
    those of a single run's."""
    o = cfg["optim"]
    extra = {"fused": True} if rt.fused_sgd else {}
    plain = (not o["lr_mult"] and o["bias_lr_mult"] == 1 and o["bias_decay"]
             and o["bias_lr_schedule"])
    if plain:
        params = [p if tensors is None else tensors[n] for n, p in model.named_parameters()]
    else:
        params = param_groups(model, o, tensors)
    return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"],
                           nesterov=o["nesterov"], weight_decay=o["weight_decay"], **extra)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's ``lr`` on every group: times its ``lr_mult`` (``optim.lr_mult``,
    ``optim.bias_lr_mult``), or the group's ``fixed_lr``, which the schedule leaves alone."""
    for g in optimizer.param_groups:
        g["lr"] = g["fixed_lr"] if "fixed_lr" in g else lr * g.get("lr_mult", 1.0)


@dataclass(frozen=True)
class StepSchedule:
    """Step learning-rate schedule in iterations, with an optional constant warm-up.

    The warm-up is either a fixed ``warmup_iterations`` (IM appendix) or, with
    ``warmup_until_error`` set, He et al. 2015's rule (Sec. 4.2, ResNet-110): lr ``warmup_lr``
    until the training error of the last ``warmup_window`` batches, pooled, is below
    ``warmup_until_error`` %, and never longer than ``warmup_iterations`` (the cap). The rule
    needs the batches' error counts, passed to :meth:`observe` after each update; only
    while warm does it read them on the host (one synchronisation per warm iteration).
    Milestones count from iteration 0 either way (the paper drops at 32k and 48k).
    """

    base_lr: float
    total: int
    milestones: tuple[int, ...]
    gamma: float = 0.1
    warmup_iterations: int = 0
    warmup_lr: float = 0.01
    warmup_until_error: float | None = None
    warmup_window: int = 20
    #: mutable rule state: "end" (first iteration after warm-up, None while warm), "window"
    state: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        rule = self.warmup_until_error is not None
        self.state.setdefault("end", None if rule else self.warmup_iterations)
        self.state.setdefault("window", [])

    @property
    def warmup_end(self) -> int | None:
        """Iteration at which the lr left warm-up (None: still warm, rule undecided)."""
        return self.state["end"]

    def lr(self, iteration: int) -> float:
        """Learning rate used for the update of (0-based) ``iteration``."""
        end = self.state["end"]
        if iteration < (self.warmup_iterations if end is None else end):
            return self.warmup_lr
        drops = sum(iteration >= m for m in self.milestones)
        return self.base_lr * self.gamma**drops

    def observe(self, iteration: int, n_wrong, batch: int) -> None:
        """Feed the error count of the update of ``iteration``; ends a rule-based warm-up."""
        if self.state["end"] is not None:
            return
        window = self.state["window"]
        window.append(int(n_wrong))
        del window[: -self.warmup_window]
        running = 100.0 * sum(window) / (len(window) * batch)
        if len(window) == self.warmup_window and running < self.warmup_until_error:
            self.state["end"] = iteration + 1
        elif iteration + 1 >= self.warmup_iterations:
            self.state["end"] = self.warmup_iterations  # the cap

    def state_dict(self) -> dict:
        return copy.deepcopy(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state.update(copy.deepcopy(state))


def make_schedule(cfg: dict, steps_per_epoch: int) -> StepSchedule:
    s = cfg["schedule"]
    per = steps_per_epoch if s["unit"] == "epochs" else 1
    total = int(round(s["length"] * per))
    milestones = tuple(int(round(d * s["length"] * per)) for d in s["drops"])
    return StepSchedule(
        base_lr=float(cfg["optim"]["lr"]),
        total=total,
        milestones=milestones,
        gamma=float(s["gamma"]),
        warmup_iterations=int(s["warmup_iterations"]),
        warmup_lr=float(s["warmup_lr"]),
        warmup_until_error=(None if s["warmup_until_error"] is None
                            else float(s["warmup_until_error"])),
        warmup_window=int(s["warmup_window"]),
    )


def plan_iterations(cfg: dict, n_train: int, batch: int) -> tuple[int, StepSchedule, int]:
    """(steps per epoch, schedule, epochs) for ``n_train`` images at global ``batch``.

    Iteration-based sampling with full batches only: an epoch is n_train // batch steps over a
    fresh permutation (the remainder of each permutation is skipped, so shapes are static).
    """
    if batch > n_train:
        raise ConfigError(f"'batch_size' {batch} exceeds the {n_train} training images")
    steps_per_epoch = n_train // batch
    sched = make_schedule(cfg, steps_per_epoch)
    return steps_per_epoch, sched, math.ceil(sched.total / steps_per_epoch)

