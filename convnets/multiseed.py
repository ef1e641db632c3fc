"""K seeds of one config trained together as one batched network (``fit_seeds``).

A CIFAR ResNet step at batch 128 is a sliver of a modern GPU, and separate processes on one GPU
take turns rather than overlap. Here the K seeds' parameters, BN buffers and momentum buffers
are stacked along a new leading dimension (``torch.func.stack_module_state``) and one
``vmap``-ed ``functional_call`` runs all K forward passes as one (convolutions become one
grouped convolution), so each kernel launch does K times the work.

Per-seed semantics are those of K separate ``convnets.train.fit`` runs:

* initialisation: seed k's model is built right after ``seed_everything(seed_k)``, as in fit;
* data order and augmentation draws: seed k keeps its own CPU generator (``data_seed``);
* BN: vmap gives every seed its own batch statistics, and the stacked running buffers are
  updated in place slice by slice;
* optimizer: fit's own (``convnets.optim.make_optimizer``, parameter groups included) over
  the stacked tensors, grouped as one model's parameters are; SGD (momentum, weight decay, the
  groups' rates) is elementwise, so it is K SGDs; the gradient of the sum of the K losses
  w.r.t. seed k's slice is the gradient of loss k, since no seed's loss depends on another
  seed's parameters;
* the epoch: every seed is a ``convnets.epochs.RunState``, fit's own, which draws its epoch,
  computes its metrics and divergence check, and ends it with ``end_epoch`` (evaluation,
  checkpoint in fit's format, log), so a seed can resume batched or alone;
* divergence: a seed whose epoch loss is non-finite is reported as ``DivergedError`` and
  dropped; the others go on (its NaNs could not reach them anyway, see above).

What the shared code cannot do for K seeds at once is refused (``unsupported``): a schedule
that reacts to one run's own errors (``schedule.warmup_until_error``: the K seeds share one
learning rate per step), ghost batch norm (``bn_group``) and dropout (per-seed random draws).

Dropout would need per-seed random draws matching the single runs: vmap's default
``randomness="error"`` raises if a model with dropout reaches the step anyway.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state

from convnets.augment import to_float
from convnets.config import resolve_config
from convnets.epochs import RunState, end_epoch, evaluate, prepare_run, resumed_precision
from convnets.models import build_model
from convnets.names import eval_error
from convnets.optim import make_optimizer, set_lr
from convnets.progress import Progress
from convnets.results import DivergedError, NullLogger, build_result
from convnets.runtime import World, seed_everything


class MixedProgressError(ValueError):
    """The seeds' checkpoints stand at different points, so they cannot step together."""


class SeedStack:
    """K models of one architecture as stacked tensors, with a vmap-ed training step."""

    def __init__(self, models: list[torch.nn.Module], cfg: dict, rt, mean, std):
        self.models = models
        self.k = len(models)
        self.params, self.buffers = stack_module_state(models)
        # a parameter-free copy of the architecture: functional_call supplies the tensors
        self.base = copy.deepcopy(models[0]).to("meta")
        # fit's optimizer, groups included, over the stacked tensors: the state of seed k is
        # slice k of every entry, at the indices a single run's optimizer gives them
        self.opt = make_optimizer(self.base, cfg, rt, tensors=self.params)
        self._order = [p for g in self.opt.param_groups for p in g["params"]]
        self.rt, self.mean, self.std, self.resize = rt, mean, std, cfg["data"]["resize"]
        self._fwd = torch.vmap(self._one, in_dims=(0, 0, 0, 0))

    def _one(self, params, buffers, xb, yb):
        x = to_float(xb, self.mean, self.std, self.resize)
        with self.rt.autocast:
            out = functional_call(self.base, (params, buffers), (x,))
            loss = F.cross_entropy(out, yb)
        return loss, (out.argmax(1) != yb).sum()

    def step(self, xb: torch.Tensor, yb: torch.Tensor, lr: float):
        """One SGD update of every seed; ``xb`` is (K, B, C, H, W) uint8, ``yb`` (K, B).

        Returns the K losses (float32) and K error counts, on the device, unsynchronised."""
        set_lr(self.opt, lr)
        loss, wrong = self._fwd(self.params, self.buffers, xb, yb)
        self.opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        self.opt.step()
        return loss.detach().float(), wrong

    @torch.no_grad()
    def unstack(self, k: int) -> torch.nn.Module:
        """Copy seed k's slices back into its own module (for evaluation and checkpoints)."""
        m = self.models[k]
        for name, t in m.named_parameters():
            t.copy_(self.params[name][k])
        for name, t in m.named_buffers():
            t.copy_(self.buffers[name][k])
        return m

    @torch.no_grad()
    def restack(self, k: int) -> None:
        """Copy seed k's own module (restored from its checkpoint) into slice k."""
        m = self.models[k]
        for name, t in m.named_parameters():
            self.params[name][k].copy_(t)
        for name, t in m.named_buffers():
            self.buffers[name][k].copy_(t)

    def optimizer_state(self, k: int) -> dict:
        """Seed k's optimizer state in the format of its single run's optimizer."""
        sd = self.opt.state_dict()
        state = {i: {key: (v[k].clone() if torch.is_tensor(v) and v.dim() > 0 else v)
                     for key, v in s.items()} for i, s in sd["state"].items()}
        return {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])}

    @torch.no_grad()
    def load_optimizer_state(self, k: int, opt_state: dict) -> None:
        """Put a single run's optimizer state (its momentum buffers) into slice k."""
        for i, p in enumerate(self._order):
            s = opt_state["state"].get(i, opt_state["state"].get(str(i)))
            if s is None or s.get("momentum_buffer") is None:
                continue
            st = self.opt.state[p]
            if st.get("momentum_buffer") is None:
                st["momentum_buffer"] = torch.zeros_like(p)
            st["momentum_buffer"][k].copy_(s["momentum_buffer"])


class _SeedOptimizer:
    """Seed k's slice of the stacked optimizer, as ``RunState`` saves and restores it."""

    def __init__(self, stack: SeedStack, k: int):
        self.stack, self.k = stack, k

    def state_dict(self):
        return self.stack.optimizer_state(self.k)

    def load_state_dict(self, state: dict) -> None:
        self.stack.load_optimizer_state(self.k, state)


def build_stack(cfg: dict, seeds: list[int], rt, data) -> SeedStack:
    """Seed k's model is built right after seed_everything(seed_k), as fit builds it."""
    models = []
    for seed in seeds:
        seed_everything(int(seed))
        models.append(build_model(cfg["model"]["name"], num_classes=data.num_classes,
                                  **cfg["model"]["options"]).to(rt.device))
    return SeedStack(models, cfg, rt, data.mean, data.std)


def unsupported(cfg: dict, *, resolved: bool = False) -> str | None:
    """Why ``fit_seeds`` would refuse ``cfg``, or None: the runner checks it before opening
    any run. ``resolved``: ``cfg`` is ``resolve_config``'s (as ``fit``'s)."""
    cfg = cfg if resolved else resolve_config(cfg)
    try:
        _refuse_unsupported(cfg)
    except ValueError as err:
        return str(err)
    with torch.device("meta"):
        model = build_model(cfg["model"]["name"], **cfg["model"]["options"])
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0
           for m in model.modules()):
        return "batched seeds do not support dropout (per-seed random draws)"
    return None


def _refuse_unsupported(cfg: dict) -> None:
    """What one batched step cannot train as K single runs would: refuse rather than train
    another recipe. Everything else (the optimizer and its groups, the schedule, the epoch)
    is fit's own code."""
    unsupported = {
        # the rule ends one run's warm-up on its own errors; K seeds share each step's lr
        "schedule.warmup_until_error": cfg["schedule"]["warmup_until_error"] is not None,
        # ghost batch norm splits each seed's batch; not implemented under vmap
        "bn_group": cfg["bn_group"] is not None,
        # a horizon stops one run inside an epoch; K seeds share each epoch's steps
        "horizon": cfg["horizon"] is not None,
        "horizons": bool(cfg["horizons"]),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"batched seeds do not support {', '.join(bad)}; run the seeds "
                         "separately")


def fit_seeds(cfg: dict, seeds: list[int], *, loggers=None, checkpoints=None,
              checkpoint_metas=None, dataset=None, on_epoch_end=None,
              progress: bool = False, resolved: bool = False) -> list:
    """Train ``cfg`` once per seed, all seeds in one batched network.

    Returns one entry per seed: its ``RunResult`` (as ``fit(dict(cfg, seed=s))`` would return,
    up to floating-point reassociation in the batched kernels), or the ``DivergedError`` that
    ended it. ``checkpoints``/``loggers``/``checkpoint_metas`` are per-seed lists (or None).
    ``on_epoch_end`` is called per seed with its metrics and ``seed_index``.
    ``progress``: one bar (or plain lines) for the batched step: iterations, images/s of all
    seeds together, ETA; at each epoch end the mean loss and error over the seeds still alive.
    ``resolved``: ``cfg`` is ``resolve_config``'s (as ``fit``'s).
    Raises ``MixedProgressError`` if existing checkpoints stand at different points.
    """
    cfg = cfg if resolved else resolve_config(cfg)
    _refuse_unsupported(cfg)
    k_seeds = len(seeds)
    loggers = loggers or [NullLogger() for _ in seeds]
    paths = [Path(p) if p else None for p in (checkpoints or [None] * k_seeds)]
    metas = checkpoint_metas or [{} for _ in seeds]
    rt, data = prepare_run(cfg, cfg["runtime"], dataset)
    # no compiled step; channels_last: vmap's batched convolution runs on NCHW views
    rt = dataclasses.replace(rt, compile=None, channels_last=False)
    rt = _one_precision(rt, cfg, paths)
    stack = build_stack(cfg, seeds, rt, data)
    runs = [RunState(dict(cfg, seed=int(s)), World(), rt, data, stack.models[k],
                     _SeedOptimizer(stack, k), paths[k], metas[k]) for k, s in enumerate(seeds)]
    _same_progress(runs, paths)
    for k in range(k_seeds):
        stack.restack(k)
    results = _train(stack, runs, loggers, on_epoch_end, progress)
    for k, run in enumerate(runs):
        if isinstance(results[k], DivergedError):
            continue
        err, pred = results[k] or evaluate(stack.unstack(k), data, rt, cfg)
        results[k] = build_result(run.history, err, pred, data, rt, run.sched,
                                  run.steps_per_epoch, run.wall_time(), batched_seeds=k_seeds)
    return results


def _one_precision(rt, cfg: dict, paths: list[Path | None]):
    """The seeds' checkpoints' precision (``resumed_precision``), which must be one."""
    chosen = {r.precision: r
              for r in (resumed_precision(rt, cfg, p) for p in paths if p and p.exists())}
    if len(chosen) > 1:
        raise MixedProgressError(f"the seeds' checkpoints were trained in {sorted(chosen)}")
    return next(iter(chosen.values()), rt)


def _same_progress(runs: list[RunState], paths: list[Path | None]) -> None:
    points = {(r.epoch, r.iteration) for r in runs}
    if len(points) > 1:
        raise MixedProgressError(f"per-seed checkpoints stand at epochs "
                                 f"{sorted(e for e, _ in points)}")
    stopped = [str(p) for r, p in zip(runs, paths, strict=True) if r.partial]
    if stopped:  # a deadline stopped that run inside an epoch: it resumes alone
        raise MixedProgressError(f"checkpoints {', '.join(stopped)} stand inside an epoch")


def _train(stack: SeedStack, runs: list[RunState], loggers, on_epoch_end, progress: bool):
    """Every epoch left, all live seeds in one step; per seed, its evaluation of the last
    epoch (error, predictions), None, or the ``DivergedError`` that dropped it."""
    first = runs[0]
    sched, batch, k_seeds = first.sched, first.batch, len(runs)
    alive, results = list(range(k_seeds)), [None] * k_seeds
    bar = Progress(sched.total, progress, initial=first.iteration)
    try:
        for epoch in range(first.epoch, first.n_epochs):
            if not alive:
                break
            t0 = time.perf_counter()
            steps = first.steps_left()
            xs, _, ys = zip(*[r.draw_epoch(steps) for r in runs], strict=True)
            x_all, y_all = torch.stack(xs), torch.stack(ys)
            loss_sum = torch.zeros(k_seeds, device=stack.rt.device)
            wrong = torch.zeros(k_seeds, device=stack.rt.device, dtype=torch.long)
            for s in range(steps):
                lr = sched.lr(first.iteration)
                sl = slice(s * batch, (s + 1) * batch)
                loss, n_wrong = stack.step(x_all[:, sl], y_all[:, sl], lr)
                loss_sum += loss
                wrong += n_wrong
                for r in runs:
                    r.iteration += 1
                bar.tick(first.iteration, s + 1, batch * k_seeds, t0)  # host clock: no sync
            loss_sum, wrong = loss_sum.cpu(), wrong.cpu()  # one sync per epoch
            ended = time.perf_counter()
            for k in list(alive):
                try:
                    # the batched step's throughput, shared by its K seeds
                    metrics = runs[k].epoch_metrics(epoch, steps, 0, loss_sum[k], wrong[k], lr,
                                                    t0, ended)
                except DivergedError as err:
                    results[k] = err
                    alive.remove(k)
                    continue
                stack.unstack(k)
                results[k] = end_epoch(runs[k], epoch, metrics, loggers[k])
                if on_epoch_end:
                    on_epoch_end(dict(metrics, seed_index=k))
            _show_epoch(bar, [runs[k].history[-1] for k in alive], first.data.eval_split)
    finally:
        bar.close()
    return results


def _show_epoch(bar: Progress, last: list[dict], split: str) -> None:
    """The epoch's end on the bar: the mean of the live seeds' metrics."""
    if not last:
        return
    keys = [k for k in ("train_loss", "train_error", eval_error(split)) if k in last[0]]
    m = dict(last[0], **{k: sum(h[k] for h in last) / len(last) for k in keys})
    bar.update(m, split)
