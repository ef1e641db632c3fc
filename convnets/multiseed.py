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
* optimizer: SGD (momentum, weight decay, lr) is elementwise, so one SGD over the stacked
  tensors is K SGDs; the gradient of the sum of the K losses w.r.t. seed k's slice is the
  gradient of loss k, since no seed's loss depends on another seed's parameters;
* checkpoint: one file per seed in fit's own format (unstacked model and optimizer state, the
  seed's generator), so a seed can resume batched or alone;
* divergence: a seed whose epoch loss is non-finite is reported as ``DivergedError`` and
  dropped; the others go on (its NaNs could not reach them anyway, see above).

Dropout would need per-seed random draws matching the single runs, so models with dropout are
rejected (vmap's default ``randomness="error"`` raises).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state

from convnets.augment import to_float
from convnets.checkpoint import load_checkpoint, save_checkpoint
from convnets.config import resolve_config
from convnets.device_data import epoch_data, prepare_data
from convnets.models import build_model
from convnets.optim import plan_iterations
from convnets.progress import Progress
from convnets.results import DivergedError, NullLogger, build_result, check_finite
from convnets.runtime import data_seed as _data_seed
from convnets.runtime import resolve_runtime, seed_everything
from convnets.train import evaluate


class MixedProgressError(ValueError):
    """The seeds' checkpoints stand at different epochs, so they cannot step together."""


class SeedStack:
    """K models of one architecture as stacked tensors, with a vmap-ed training step."""

    def __init__(self, models: list[torch.nn.Module], cfg: dict, rt, mean, std):
        self.models = models
        self.k = len(models)
        self.params, self.buffers = stack_module_state(models)
        # a parameter-free copy of the architecture: functional_call supplies the tensors
        self.base = copy.deepcopy(models[0]).to("meta")
        o = cfg["optim"]
        extra = {"fused": True} if rt.fused_sgd else {}
        # one SGD over the stacked tensors: same ordering as model.parameters(), so the state
        # of seed k is slice k of every entry
        self.opt = torch.optim.SGD(list(self.params.values()), lr=o["lr"],
                                   momentum=o["momentum"], nesterov=o["nesterov"],
                                   weight_decay=o["weight_decay"], **extra)
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
        for g in self.opt.param_groups:
            g["lr"] = lr
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

    def optimizer_state(self, k: int) -> dict:
        """Seed k's optimizer state in the format of an SGD over its own model."""
        sd = self.opt.state_dict()
        state = {i: {key: (v[k].clone() if torch.is_tensor(v) and v.dim() > 0 else v)
                     for key, v in s.items()} for i, s in sd["state"].items()}
        return {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])}

    @torch.no_grad()
    def load(self, k: int, model_state: dict, opt_state: dict) -> None:
        """Put a single-run checkpoint of seed k into slice k."""
        for name, t in self.params.items():
            t[k].copy_(model_state[name])
        for name, t in self.buffers.items():
            t[k].copy_(model_state[name])
        for i, p in enumerate(self.params.values()):
            s = opt_state["state"].get(i, opt_state["state"].get(str(i)))
            if s is None or s.get("momentum_buffer") is None:
                continue
            st = self.opt.state[p]
            if st.get("momentum_buffer") is None:
                st["momentum_buffer"] = torch.zeros_like(p)
            st["momentum_buffer"][k].copy_(s["momentum_buffer"])


class _OptView:
    """Duck-typed optimizer for ``save_checkpoint``: seed k's state."""

    def __init__(self, stack: SeedStack, k: int):
        self.stack, self.k = stack, k

    def state_dict(self):
        return self.stack.optimizer_state(self.k)


def _restore(stack: SeedStack, paths: list[Path | None], gens: list[torch.Generator]):
    """Load every existing per-seed checkpoint; returns (epoch, iteration, histories, walls)."""
    states = [load_checkpoint(p) if p and p.exists() else None for p in paths]
    epochs = {s["epoch"] if s else 0 for s in states}
    if len(epochs) > 1:
        raise MixedProgressError(f"per-seed checkpoints stand at epochs {sorted(epochs)}")
    if not any(states):
        return 0, 0, [[] for _ in paths], [0.0] * len(paths)
    for k, s in enumerate(states):
        stack.load(k, s["model"], s["optimizer"])
        gens[k].set_state(s["data_gen"])
    torch.set_rng_state(states[0]["cpu_rng"])  # unused by training; restored as fit does
    return (states[0]["epoch"], states[0]["iteration"], [s["history"] for s in states],
            [s.get("wall_time_s", 0.0) for s in states])


def build_stack(cfg: dict, seeds: list[int], rt, data) -> SeedStack:
    """Seed k's model is built right after seed_everything(seed_k), as fit builds it."""
    models = []
    for seed in seeds:
        seed_everything(int(seed))
        models.append(build_model(cfg["model"]["name"], num_classes=data.num_classes,
                                  **cfg["model"]["options"]).to(rt.device))
    return SeedStack(models, cfg, rt, data.mean, data.std)


def unsupported(cfg: dict) -> str | None:
    """Why ``fit_seeds`` would refuse ``cfg`` (a recipe key it does not implement, or dropout),
    or None: the runner checks it before opening any run."""
    cfg = resolve_config(cfg)
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
    """Recipe keys the batched step does not implement yet: refuse rather than train another
    recipe than the K single runs would."""
    o, s = cfg["optim"], cfg["schedule"]
    unsupported = {
        "bn_group": cfg["bn_group"] is not None,
        "schedule.warmup_until_error": s["warmup_until_error"] is not None,
        "optim.lr_mult": bool(o["lr_mult"]),
        "optim.bias_lr_mult": o["bias_lr_mult"] != 1.0,
        "optim.bias_decay": o["bias_decay"] is not True,
        # fit keeps 1-D parameters at a fixed rate then (optim.param_groups' fixed_lr)
        "optim.bias_lr_schedule": o["bias_lr_schedule"] is not True,
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"batched seeds do not support {', '.join(bad)} yet; run the seeds "
                         "separately")


def fit_seeds(cfg: dict, seeds: list[int], *, loggers=None, checkpoints=None,
              checkpoint_metas=None, dataset=None, on_epoch_end=None,
              progress: bool = False) -> list:
    """Train ``cfg`` once per seed, all seeds in one batched network.

    Returns one entry per seed: its ``RunResult`` (as ``fit(dict(cfg, seed=s))`` would return,
    up to floating-point reassociation in the batched kernels), or the ``DivergedError`` that
    ended it. ``checkpoints``/``loggers``/``checkpoint_metas`` are per-seed lists (or None).
    ``progress``: one bar (or plain lines) for the batched step: iterations, images/s of all
    seeds together, ETA; at each epoch end the mean loss and error over the seeds still alive.
    Raises ``MixedProgressError`` if existing checkpoints stand at different epochs.
    """
    cfg = resolve_config(cfg)
    _refuse_unsupported(cfg)
    k_seeds = len(seeds)
    loggers = loggers or [NullLogger() for _ in seeds]
    paths = [Path(p) if p else None for p in (checkpoints or [None] * k_seeds)]
    metas = checkpoint_metas or [{} for _ in seeds]
    rt = resolve_runtime(cfg["runtime"])
    # channels_last: vmap's batched convolution runs on (K*B)-stacked NCHW views
    rt.channels_last = False
    data = prepare_data(cfg, rt.device, dataset)
    stack = build_stack(cfg, seeds, rt, data)
    batch = cfg["batch_size"]
    steps_per_epoch, sched, n_epochs = plan_iterations(cfg, data.train_x.shape[0], batch)
    gens = [torch.Generator().manual_seed(_data_seed(int(s))) for s in seeds]
    start, iteration, histories, walls = _restore(stack, paths, gens)
    alive = list(range(k_seeds))
    results: list = [None] * k_seeds
    pad = cfg["data"]["pad"] if cfg["data"]["augment"] else 0
    wall0 = time.perf_counter()
    bar = Progress(sched.total, progress, initial=iteration)
    try:
        for epoch in range(start, n_epochs):
            if not alive:
                break
            t0 = time.perf_counter()
            steps = min(steps_per_epoch, sched.total - iteration)
            xs, ys = zip(*[epoch_data(data.train_x, data.train_y, steps * batch, pad,
                                      cfg["data"]["augment"], g, data.pad_fill) for g in gens],
                             strict=True)
            x_all, y_all = torch.stack(xs), torch.stack(ys)
            loss_sum = torch.zeros(k_seeds, device=rt.device)
            wrong = torch.zeros(k_seeds, device=rt.device, dtype=torch.long)
            for s in range(steps):
                lr = sched.lr(iteration)
                sl = slice(s * batch, (s + 1) * batch)
                loss, n_wrong = stack.step(x_all[:, sl], y_all[:, sl], lr)
                loss_sum += loss
                wrong += n_wrong
                iteration += 1
                bar.tick(iteration, s + 1, batch * k_seeds, t0)  # host clock only: no sync
            dt = time.perf_counter() - t0
            losses, wrongs = loss_sum.tolist(), wrong.tolist()  # one sync per epoch
            for k in list(alive):
                try:
                    check_finite(losses[k] / steps, epoch, iteration, steps, lr)
                except DivergedError as err:
                    results[k] = err
                    alive.remove(k)
                    continue
                _end_epoch(stack, k, cfg, data, rt, epoch, n_epochs, iteration, steps, lr, dt,
                           losses[k] / steps, wrongs[k] * 100.0 / (steps * batch), histories[k],
                           paths[k], metas[k], gens[k], loggers[k],
                           walls[k] + time.perf_counter() - wall0, on_epoch_end, results)
            _show_epoch(bar, [histories[k][-1] for k in alive], data.eval_split)
    finally:
        bar.close()
    for k in alive:
        err, pred = results[k] if isinstance(results[k], tuple) else evaluate(
            stack.unstack(k), data, rt, cfg)
        results[k] = build_result(histories[k], err, pred, data, rt, sched, steps_per_epoch,
                                  walls[k] + time.perf_counter() - wall0,
                                  batched_seeds=k_seeds)
    return results


def _show_epoch(bar: Progress, last: list[dict], split: str) -> None:
    """The epoch's end on the bar: the mean of the live seeds' metrics."""
    if not last:
        return
    keys = [k for k in ("train_loss", "train_error", f"{split}_error") if k in last[0]]
    m = dict(last[0], **{k: sum(h[k] for h in last) / len(last) for k in keys})
    bar.update(m, split)


def _end_epoch(stack, k, cfg, data, rt, epoch, n_epochs, iteration, steps, lr, dt, loss, err,
               history, path, meta, gen, logger, wall, on_epoch_end, results) -> None:
    """What fit does at an epoch end, for seed k: metrics, evaluation, checkpoint, log."""
    metrics = {"epoch": epoch + 1, "iteration": iteration, "train_loss": loss,
               "train_error": err, "lr": lr,
               # the batched step's throughput, shared by its K seeds
               "images_per_sec": steps * cfg["batch_size"] / dt, "epoch_time_s": dt}
    model = stack.unstack(k)
    if epoch == n_epochs - 1 or (epoch + 1) % cfg["eval_every"] == 0:
        ev, pred = evaluate(model, data, rt, cfg)
        metrics[f"{data.eval_split}_error"] = ev
        if epoch == n_epochs - 1:
            results[k] = (ev, pred)
    history.append(metrics)
    if path:  # checkpoint first, then log, as fit does
        save_checkpoint(path, model, _OptView(stack, k), gen, rt.device, epoch=epoch + 1,
                        iteration=iteration, history=history, config=cfg, meta=meta,
                        wall_time_s=wall)
    logger.log_epoch(iteration, metrics)
    if on_epoch_end:
        on_epoch_end(dict(metrics, seed_index=k))
