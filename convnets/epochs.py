"""The epoch machinery of a run, shared by ``convnets.train.fit`` (one process, or the K ranks
of a DDP run) and ``convnets.multiseed.fit_seeds`` (K seeds in one batched network).

``RunState`` is what a checkpoint holds between epochs (epoch, iteration, history, the data
generator, the schedule's state) and draws, trains and measures an epoch; ``end_epoch`` is how
every epoch ends (evaluation when due, checkpoint, then log); ``evaluate`` measures the
evaluation split. A batched seed is a ``RunState`` like a single run: its own generator,
history, schedule and checkpoint in fit's format; only its step is shared with the others.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from convnets.augment import to_float
from convnets.checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from convnets.config import ConfigError
from convnets.device_data import DeviceData, epoch_data, prepare_data
from convnets.models.registry import get_entry
from convnets.names import CLEAN_TRAIN_ERROR, HORIZON, eval_error
from convnets.optim import plan_iterations
from convnets.progress import Progress
from convnets.results import DeadlineReached, check_finite
from convnets.runtime import Runtime, World, data_seed, resolve_device, resolve_runtime


def evaluate(model, data: DeviceData, rt: Runtime, cfg: dict) -> tuple[float, torch.Tensor]:
    """Error (%) and predictions on the evaluation set; model left in train mode."""
    return _error_on(model, data.eval_x, data.eval_y, data, rt, cfg)


def clean_train_error(model, data: DeviceData, rt: Runtime, cfg: dict) -> float:
    """Error (%) on the whole training split in eval mode, without augmentation: what the net
    has learnt, unlike the running error of the augmented batches while it was learning."""
    return _error_on(model, data.train_x, data.train_y, data, rt, cfg)[0]


def _error_on(model, x_all, y_all, data: DeviceData, rt: Runtime,
              cfg: dict) -> tuple[float, torch.Tensor]:
    model.eval()
    preds = []
    with torch.no_grad(), rt.autocast:
        for i in range(0, x_all.shape[0], cfg["eval_batch_size"]):
            x = to_float(x_all[i : i + cfg["eval_batch_size"]], data.mean, data.std,
                         cfg["data"]["resize"], rt.channels_last)
            preds.append(model(x).argmax(1))
    model.train()
    pred = torch.cat(preds)
    err = (pred != y_all).float().mean().item() * 100.0
    return err, pred


def prepare_run(cfg: dict, placed: dict, dataset=None, *,
                by_length: bool = True) -> tuple[Runtime, DeviceData]:
    """The runtime and the data of a run: the device first (the data go to it), then, once,
    every ``auto`` switch decided for this model and, with ``by_length``, for the run's length
    (``compile: auto`` depends on it). ``placed``: the ``runtime`` config, placed on this
    rank's device."""
    name = cfg["model"]["name"]
    data = prepare_data(cfg, resolve_device(placed), dataset)
    total = None
    if by_length:  # the iterations this call trains at most: to its horizon
        total = plan_iterations(cfg, data.train_x.shape[0], cfg["batch_size"])[1].total
        total = min(total, cfg["horizon"] or total)
    rt = resolve_runtime(placed, model=name, iterations=total, family=get_entry(name).family)
    return rt, data


def stop_rule(deadline: float | Callable[[], bool] | None) -> Callable[[], bool] | None:
    """Whether to stop before the next step: past a ``time.time()`` value, or whatever a
    function of no arguments says (read once per iteration, before the step)."""
    if deadline is None or callable(deadline):
        return deadline
    return lambda: time.time() >= deadline


def end_epoch(run: RunState, epoch: int, metrics: dict, logger) -> tuple | None:
    """How every epoch ends, in this order: the evaluation when due (the main rank; the last
    epoch always), the history, the checkpoint, then the log (a crash in between re-runs
    nothing already logged). Returns the evaluation's (error, predictions), or None when none
    was due."""
    cfg, data = run.cfg, run.data
    result = None
    last = epoch == run.n_epochs - 1
    if run.world.main and (last or (epoch + 1) % cfg["eval_every"] == 0):
        result = evaluate(run.module, data, run.rt, cfg)
        metrics[eval_error(data.eval_split)] = result[0]
    if run.world.main and last:  # the schedule's end is a horizon too
        metrics[CLEAN_TRAIN_ERROR] = clean_train_error(run.module, data, run.rt, cfg)
    run.history.append(metrics)
    run.save(epoch=epoch + 1, iteration=run.iteration)
    logger.log_epoch(run.iteration, metrics)
    return result


def resumed_precision(rt: Runtime, cfg: dict, checkpoint: str | Path | None) -> Runtime:
    """A run keeps one precision: resumed from a bf16 checkpoint on a machine where ``auto``
    means fp32 (or the other way round) it goes on in the checkpoint's precision, saying so,
    so the precision it records is the one all of it was trained in. An explicit precision
    that differs from the checkpoint's is refused."""
    if not checkpoint or not Path(checkpoint).exists():
        return rt
    was = load_checkpoint(checkpoint).get("precision")
    now = rt.precision
    if was is None or was == now:
        return rt
    if cfg["runtime"]["precision"] != "auto":
        raise ConfigError(f"checkpoint {checkpoint} was trained in {was}, but "
                          f"'runtime.precision' asks for {now}: a run is trained in one "
                          "precision; use precision auto to resume it")
    print(f"  resuming in {was}, the precision of checkpoint {checkpoint} (auto would choose "
          f"{now} here)", flush=True)
    return dataclasses.replace(rt, bf16=was == "bf16")


def _horizons(cfg: dict, total: int) -> tuple[int, frozenset[int]]:
    """(the iteration this call stops at, the horizon marks measured on the way): the run's
    ``horizon`` (the schedule's end when none, or past it) and the ``horizons`` before it."""
    h = cfg["horizon"]
    if h is not None and h > total:
        raise ConfigError(f"'horizon' {h} is past the end of the schedule ({total} iterations)")
    end = total if h is None else h
    marks = {m for m in cfg["horizons"] if m < total}
    if end < total:
        marks.add(end)
    return end, frozenset(marks)


def _same_data(path: Path, state: dict, checksum: str | None) -> None:
    """A run resumes only on the data it started on: ``CheckpointError`` if the checkpoint was
    written training on data with another checksum (a named data set enters the config hash by
    name, so its files can change under an unfinished run)."""
    was = state.get("dataset_checksum")
    if was and checksum and was != checksum:
        raise CheckpointError(f"checkpoint {path} was written training on data with checksum "
                              f"{was[:12]}, but the data set now has checksum {checksum[:12]}: "
                              "resuming would train one run on two data sets")


class RunState:
    """What a checkpoint holds between epochs (epoch, iteration, history, generators, schedule),
    and one epoch of training on this rank's slices of the global batches.

    ``module`` and ``optimizer`` are what the checkpoint saves and restores (for a batched
    seed: its own module, and a view of its slice of the stacked optimizer state)."""

    def __init__(self, cfg: dict, world: World, rt: Runtime, data: DeviceData, module,
                 optimizer, checkpoint: str | Path | None, meta: dict | None):
        self.cfg, self.world, self.rt, self.data = cfg, world, rt, data
        self.module, self.optimizer, self.meta = module, optimizer, meta or {}
        self.batch, self.per_rank = cfg["batch_size"], world.per_rank(cfg)
        n_train = data.train_x.shape[0]
        self.steps_per_epoch, self.sched, self.n_epochs = plan_iterations(cfg, n_train,
                                                                          self.batch)
        self.data_gen = torch.Generator().manual_seed(data_seed(int(cfg["seed"])))
        self.index = torch.arange(n_train, device=rt.device)  # "labels" that trace the samples
        self.history: list[dict[str, float]] = []
        self.epoch, self.iteration, self.wall_before, self.partial = 0, 0, 0.0, None
        self.path = Path(checkpoint) if checkpoint else None
        self.compile_choice, self.trial = None, None  # CompileTrial's choice, kept across resume
        if self.path and self.path.exists():
            state = restore_checkpoint(self.path, module, optimizer, self.data_gen, rt.device)
            _same_data(self.path, state, data.info.get("dataset_checksum"))
            self.epoch, self.iteration = state["epoch"], state["iteration"]
            self.history = state["history"]
            self.wall_before = state.get("wall_time_s", 0.0)
            self.partial = state.get("partial")  # stopped inside an epoch (deadline, horizon)
            self.compile_choice = state.get("compile_choice")
            self.sched.load_state_dict(state.get("schedule", {}))
        self.end, self.marks = _horizons(cfg, self.sched.total)
        self.mark_result: tuple | None = None  # (error, predictions) at the last mark
        self.wall0 = time.perf_counter()

    @property
    def stops_early(self) -> bool:
        """Whether this call stops at a horizon before the schedule's end."""
        return self.end < self.sched.total

    def pending(self, iteration: int) -> bool:
        """Whether ``iteration`` is a horizon mark not yet measured (a run resumed from its
        horizon's checkpoint has measured it)."""
        return iteration in self.marks and not any(
            r.get(HORIZON) == iteration for r in self.history)

    def wall_time(self) -> float:
        return self.wall_before + time.perf_counter() - self.wall0

    def save(self, **state: Any) -> None:
        """Write the checkpoint (rank 0 only) with ``state`` (epoch, iteration, ...)."""
        if self.path and self.world.main:
            save_checkpoint(self.path, self.module, self.optimizer, self.data_gen,
                            self.rt.device, history=self.history, config=self.cfg,
                            meta=self.meta, schedule=self.sched.state_dict(),
                            world_size=self.world.size, wall_time_s=self.wall_time(),
                            precision=self.rt.precision,
                            compile_choice=self.trial.choice if self.trial else None,
                            dataset_checksum=self.data.info.get("dataset_checksum"), **state)

    def steps_left(self, first: int = 0) -> int:
        """Steps of the current epoch (the last one may be short), from step 0."""
        return min(self.steps_per_epoch, self.sched.total - self.iteration + first)

    def draw_epoch(self, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole epoch's (images, sample indices, labels), the same on every rank."""
        d = self.cfg["data"]
        x_all, idx_all = epoch_data(self.data.train_x, self.index, steps * self.batch,
                                    d["pad"] if d["augment"] else 0, d["augment"],
                                    self.data_gen, self.data.pad_fill)
        return x_all, idx_all, self.data.train_y[idx_all]

    def train_epoch(self, epoch: int, step, bar: Progress, stop: Callable[[], bool] | None,
                    trace: list | None, logger=None) -> dict | None:
        """Train ``epoch`` (its rest, after a mid-epoch checkpoint); returns its metrics, or
        None once it stopped at the run's horizon (measured and checkpointed there). A horizon
        mark on the way is measured and logged (``logger``) without touching the run's state:
        the evaluation reads the weights in eval mode and draws no random numbers."""
        t0 = time.perf_counter()
        batch, per, sched = self.batch, self.per_rank, self.sched
        first = (self.partial or {}).get("step", 0)
        steps = self.steps_left(first)
        gen_before = self.data_gen.get_state()  # a mid-epoch checkpoint redraws this epoch
        x_all, idx_all, y_all = self.draw_epoch(steps)
        loss_sum, wrong = self._running_sums()
        for s in range(first, steps):
            row = self.mark(s, loss_sum, wrong) if self.pending(self.iteration) else None
            at_end = self.iteration == self.end and self.stops_early
            if at_end:  # checkpoint before the log, as an epoch ends
                self._save_inside(epoch, s, gen_before, loss_sum, wrong)
            if row is not None and logger is not None:
                logger.log_epoch(self.iteration, row)
            if at_end:
                return None
            if stop is not None and stop():
                self._save_inside(epoch, s, gen_before, loss_sum, wrong)
                raise DeadlineReached(self.iteration, self.sched.total)
            lo = s * batch + self.world.rank * per  # this rank's slice of the global batch
            lr = sched.lr(self.iteration)
            loss, n_wrong = step(x_all[lo : lo + per], y_all[lo : lo + per], lr)
            if trace is not None:
                trace.append(idx_all[lo : lo + per].cpu())
            loss_sum += loss
            wrong += n_wrong
            sched.observe(self.iteration, n_wrong, batch)  # host sync only while warm
            self.iteration += 1
            bar.tick(self.iteration, s + 1 - first, batch, t0)  # host clock only: no sync
        return self.epoch_metrics(epoch, steps, first, loss_sum, wrong, lr, t0)

    def _running_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss sum, error count) of the epoch so far: zeros, or a mid-epoch checkpoint's,
        on rank 0 only (scaled as K ranks' per-rank mean losses would sum)."""
        partial, self.partial = self.partial, None
        dev = self.rt.device
        if partial and self.world.main:
            return (partial["loss_sum"].to(dev) * self.world.size, partial["wrong"].to(dev))
        return torch.zeros((), device=dev), torch.zeros((), device=dev, dtype=torch.long)

    def _save_inside(self, epoch: int, s: int, gen_before: torch.Tensor, loss_sum: torch.Tensor,
                     wrong: torch.Tensor) -> None:
        """Write a mid-epoch checkpoint before step ``s`` (the epoch is redrawn on resume)."""
        gen_now = self.data_gen.get_state()
        self.data_gen.set_state(gen_before)
        self.save(epoch=epoch, iteration=self.iteration,
                  partial={"step": s, "loss_sum": loss_sum.cpu(), "wrong": wrong.cpu()})
        self.data_gen.set_state(gen_now)

    def mark(self, s: int, loss_sum: torch.Tensor, wrong: torch.Tensor) -> dict:
        """Measure the run at a horizon mark, before step ``s`` of the current epoch: a curve
        row (``names.CURVE_COLUMNS``) appended to the history and returned. The running loss
        and error cover the last whole epoch and the ``s`` steps of this one (sums over all
        ranks); the evaluation error and the clean training error are the main rank's."""
        totals = self.world.sum(torch.stack([loss_sum.double(), wrong.double()]))
        epochs = [r for r in self.history if HORIZON not in r]
        prev = epochs[-1] if epochs else None
        prev_steps = self.steps_per_epoch if prev else 0
        n = prev_steps + s
        prev_wrong = round(prev["train_error"] * prev_steps * self.batch / 100) if prev else 0
        prev_loss = prev["train_loss"] * prev_steps if prev else 0.0
        row = {
            "epoch": round(self.iteration / self.steps_per_epoch, 4),
            "iteration": self.iteration,
            "train_loss": (prev_loss + totals[0].item() / self.world.size) / n,
            "train_error": (prev_wrong + totals[1].item()) * 100.0 / (n * self.batch),
            "lr": self.sched.lr(self.iteration - 1),
            "train_window": n,
            HORIZON: self.iteration,
        }
        if self.world.main:
            self.mark_result = evaluate(self.module, self.data, self.rt, self.cfg)
            row[eval_error(self.data.eval_split)] = self.mark_result[0]
            row[CLEAN_TRAIN_ERROR] = clean_train_error(self.module, self.data, self.rt,
                                                       self.cfg)
        self.history.append(row)
        return row

    def epoch_metrics(self, epoch: int, steps: int, first: int, loss_sum: torch.Tensor,
                      wrong: torch.Tensor, lr: float, t0: float,
                      ended: float | None = None) -> dict:
        """The epoch's metrics from its sums over all ranks (one host synchronisation);
        ``DivergedError`` if its loss is not finite. ``ended``: when its steps ended
        (``perf_counter``; default: once the sums are read, which waits for the device)."""
        totals = self.world.sum(torch.stack([loss_sum.double(), wrong.double()]))
        train_loss = totals[0].item() / (steps * self.world.size)
        dt = (time.perf_counter() if ended is None else ended) - t0
        check_finite(train_loss, epoch, self.iteration, steps, lr)  # every rank stops together
        metrics = {
            "epoch": epoch + 1,
            "iteration": self.iteration,
            "train_loss": train_loss,
            "train_error": totals[1].item() * 100.0 / (steps * self.batch),
            "lr": lr,
            "images_per_sec": (steps - first) * self.batch / dt,
            "epoch_time_s": dt,
        }
        if self.sched.warmup_iterations and self.sched.warmup_end is not None:
            metrics["warmup_end_iteration"] = self.sched.warmup_end
        return metrics
