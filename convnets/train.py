"""One training run: ``fit(config)``, the one loop for one process or the K of a DDP run, with
the step and the evaluation it trains and measures with.

``fit`` knows nothing of spec files or MLflow: it takes a config dict and an optional logger
(see ``convnets.tracking.RunLogger``), and returns the run's results. The same code runs on CPU
and GPU; the fast-path switches (``runtime.*``) never change what is trained. Its parts live in
``convnets.config`` (the config), ``convnets.runtime`` (device, precision, seeding, ranks),
``convnets.optim`` (SGD and schedule), ``convnets.checkpoint``, ``convnets.results`` and
``convnets.progress``, and the data on the device in ``convnets.device_data``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from convnets.augment import to_float
from convnets.checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from convnets.config import ConfigError, resolve_config
from convnets.device_data import DeviceData, epoch_data, prepare_data
from convnets.models import build_model
from convnets.models.common import use_ghost_batchnorm
from convnets.models.registry import get_entry
from convnets.optim import make_optimizer, plan_iterations
from convnets.parallel import data_parallel
from convnets.progress import Progress
from convnets.results import DeadlineReached, NullLogger, RunResult, build_result, check_finite
from convnets.runtime import Runtime, World, data_seed, resolve_runtime, seed_everything

__all__ = ["CompileTrial", "evaluate", "fit", "make_step"]

#: the clock deadlines are read from (``time.time``; tests replace it)
_clock = time.time


# ---------------------------------------------------------------------------------------------
# Step and evaluation
# ---------------------------------------------------------------------------------------------


def evaluate(model, data: DeviceData, rt: Runtime, cfg: dict) -> tuple[float, torch.Tensor]:
    """Error (%) and predictions on the evaluation set; model left in train mode."""
    model.eval()
    preds = []
    with torch.no_grad(), rt.autocast:
        for i in range(0, data.eval_x.shape[0], cfg["eval_batch_size"]):
            x = to_float(data.eval_x[i : i + cfg["eval_batch_size"]], data.mean, data.std,
                         cfg["data"]["resize"], rt.channels_last)
            preds.append(model(x).argmax(1))
    model.train()
    pred = torch.cat(preds)
    err = (pred != data.eval_y).float().mean().item() * 100.0
    return err, pred


def make_step(model, optimizer, rt: Runtime, mean, std, resize: int | None):
    """The training step shared by ``fit`` and ``convnets.bench``.

    ``step(x_uint8, y, lr)`` does one SGD update and returns the batch loss and the number of
    misclassified examples as device tensors (no host synchronisation). Normalisation, the
    forward pass, the loss and the error count form one function, compiled as a whole when
    ``rt.compile`` is set (so the uint8 -> float conversion fuses into it).
    """

    def forward_loss(xb: torch.Tensor, yb: torch.Tensor):
        x = to_float(xb, mean, std, resize, rt.channels_last)
        with rt.autocast:
            out = model(x)
            loss = F.cross_entropy(out, yb)
        return loss, (out.argmax(1) != yb).sum()

    fwd = torch.compile(forward_loss, mode=rt.compile) if rt.compile else forward_loss
    cudagraphs = rt.compile == "reduce-overhead"
    if rt.compile and rt.compile_auto:
        fwd = _eager_if_compile_fails(fwd, forward_loss)

    def step(xb: torch.Tensor, yb: torch.Tensor, lr: float):
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        for g in optimizer.param_groups:
            # per-layer rates (optim.lr_mult); fixed_lr: a group the schedule leaves alone
            g["lr"] = g["fixed_lr"] if "fixed_lr" in g else lr * g.get("lr_mult", 1.0)
        loss, wrong = fwd(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach().float(), wrong

    return step


def _eager_if_compile_fails(compiled, eager):
    """``compiled``, unless its first call raises (no C++ compiler, an inductor bug): then a
    warning, and ``eager`` for that call and every later one. Dynamo compiles a frame before
    running it, so the failed call changed no state (weights, BN statistics)."""
    chosen = []

    def call(xb, yb):
        if chosen:
            return chosen[0](xb, yb)
        try:
            out = compiled(xb, yb)
        except Exception as e:  # noqa: BLE001 - whatever stopped the compilation
            first = str(e).splitlines()[0][:200] if str(e) else ""
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {first}); this run trains "
                          "eagerly (runtime.compile: auto; set it to false to skip the attempt)",
                          RuntimeWarning, stacklevel=2)
            chosen.append(eager)
            return eager(xb, yb)
        chosen.append(compiled)
        return out

    return call


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def fit(
    cfg: dict,
    *,
    logger=None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
    dataset=None,
    checkpoint_meta: dict | None = None,
    deadline: float | None = None,
    world: World | None = None,
    trace: list | None = None,
) -> RunResult | None:
    """Train one run as ``cfg`` says and return its curve, final metrics and predictions.

    Args:
        cfg: config (see ``convnets.config.DEFAULTS``); resolved and validated here.
        logger: receives ``log_epoch(step, metrics)`` once per epoch (batched, one call).
        checkpoint: file written atomically at every epoch end; if it exists, the run resumes
            from it and ends with the same metrics as an uninterrupted run (bitwise on CPU).
        progress: a progress bar on a terminal, plain lines otherwise.
        on_epoch_end: called with the epoch's metrics (tests use it to interrupt a run).
        dataset: an already loaded ``convnets.data.Dataset`` (skips loading).
        checkpoint_meta: stored in the checkpoint as ``meta`` (the runner keeps the MLflow run
            id there, so a checkpoint resumes only the run that wrote it).
        deadline: a ``time.time()`` value; once passed, the run stops at the next iteration
            boundary, writes a mid-epoch checkpoint and raises ``DeadlineReached``.
        world: the processes training this run (``convnets.runtime.World``); default: those
            of the initialised process group, i.e. this process alone without one. With K
            processes ``batch_size`` is the global batch, each rank trains its slice of it
            (DDP averages the gradients, batch norm is synchronised), and only rank 0 logs,
            evaluates and writes the checkpoint, which every rank resumes from.
        trace: if a list, this rank's training-set indices of every step are appended to it.

    Returns:
        the ``RunResult``; ``None`` on ranks other than 0 of a K-process run.

    Raises:
        DivergedError: the training loss became non-finite (the checkpoint is kept).
        DeadlineReached: ``deadline`` passed (the checkpoint resumes the run exactly).
    """
    cfg = resolve_config(cfg)
    world = world or World.current()
    per_rank = world.per_rank(cfg, deadline)
    logger = logger if logger is not None and world.main else NullLogger()
    placed, name = world.place(cfg["runtime"]), cfg["model"]["name"]
    family = get_entry(name).family
    rt = resolve_runtime(placed, model=name, family=family)
    seed_everything(int(cfg["seed"]))  # the same initial weights on every rank
    data = prepare_data(cfg, rt.device, dataset)
    if world.size == 1:  # compile: auto depends on the run's length (DDP + compile: unmeasured)
        total = plan_iterations(cfg, data.train_x.shape[0], cfg["batch_size"])[1].total
        rt = resolve_runtime(placed, model=name, iterations=total, family=family)
    rt = _checkpoint_precision(rt, cfg, checkpoint)
    module, model = _build_model(cfg, data, rt, world)
    optimizer = make_optimizer(module, cfg, rt)
    run = _Run(cfg, world, rt, data, module, optimizer, checkpoint, checkpoint_meta)
    step = _step_of(model, optimizer, rt, data, cfg, run)
    err, pred = _train_epochs(run, step, logger, progress, deadline, trace, on_epoch_end)
    if not world.main:
        return None
    if pred is None:  # resumed from a checkpoint of the finished run
        err, pred = evaluate(module, data, rt, cfg)
    extra, trial = {}, run.trial
    if trial is not None:
        extra["compile_trial"] = trial.summary()
        if trial.choice == "eager":
            rt = dataclasses.replace(rt, compile=None)
    return build_result(run.history, err, pred, data, rt, run.sched, run.steps_per_epoch,
                        run.wall_time(), **world.info(per_rank), **extra)


def _step_of(model, optimizer, rt: Runtime, data: DeviceData, cfg: dict, run: _Run):
    """The training step; with ``compile: auto`` on a CPU, a ``CompileTrial`` between the
    compiled and the eager step, decided on this machine (kept on ``run`` for its checkpoint)."""
    step = make_step(model, optimizer, rt, data.mean, data.std, cfg["data"]["resize"])
    if rt.compile and rt.compile_auto and rt.device.type == "cpu":
        eager = make_step(model, optimizer, dataclasses.replace(rt, compile=None), data.mean,
                          data.std, cfg["data"]["resize"])
        run.trial = CompileTrial(step, eager, run.compile_choice)
        step = run.trial.step
    return step


def _train_epochs(run: _Run, step, logger, progress: bool, deadline: float | None,
                  trace: list | None, on_epoch_end) -> tuple:
    """Every epoch left: train, evaluate when due (rank 0), checkpoint, then log. Returns the
    last evaluation's (error, predictions); (None, None) when none ran (nothing was left)."""
    cfg, data, world = run.cfg, run.data, run.world
    bar = Progress(run.sched.total, progress and world.main, initial=run.iteration)
    err = pred = None
    try:
        for epoch in range(run.epoch, run.n_epochs):
            metrics = run.train_epoch(epoch, step, bar, deadline, trace)
            last = epoch == run.n_epochs - 1
            if world.main and (last or (epoch + 1) % cfg["eval_every"] == 0):
                err, pred = evaluate(run.module, data, run.rt, cfg)
                metrics[f"{data.eval_split}_error"] = err
            run.history.append(metrics)
            # checkpoint first, then log: a crash in between re-runs nothing already logged
            run.save(epoch=epoch + 1, iteration=run.iteration)
            logger.log_epoch(run.iteration, metrics)
            bar.update(metrics, data.eval_split)
            if on_epoch_end:
                on_epoch_end(metrics)
    finally:
        bar.close()
    return err, pred


class CompileTrial:
    """``compile: auto`` on a CPU, timed on the machine that runs instead of taken from the
    CPUs a bench once saw (on an AVX2-only EPYC compiling made ResNet-20 slower: 222 vs 321
    images/s; on two others it was faster). The first ``WARMUP`` steps run compiled (the
    compilation itself is not timed), then compiled and eager steps alternate until each has
    ``STEPS`` timings, and the faster median trains the rest of the run. Both steps update the
    same weights with the same arithmetic (only its order may differ), so the trial's steps
    are ordinary training steps. The choice is kept in the checkpoint, so a resumed run goes
    on as it began, and recorded on the run (``resolved.compile_trial``)."""

    WARMUP, STEPS = 2, 5

    def __init__(self, compiled, eager, choice: str | None = None):
        self.steps = {"compiled": compiled, "eager": eager}
        self.choice = choice
        self.times: dict[str, list[float]] = {"compiled": [], "eager": []}
        self.calls = 0
        self.resumed = choice is not None

    def step(self, xb, yb, lr):
        if self.choice:
            return self.steps[self.choice](xb, yb, lr)
        self.calls += 1
        if self.calls <= self.WARMUP:
            return self.steps["compiled"](xb, yb, lr)
        which = "compiled" if self.calls % 2 else "eager"
        t0 = time.perf_counter()
        out = self.steps[which](xb, yb, lr)
        out[0].item()  # wait for the step (CPU: already done)
        self.times[which].append(time.perf_counter() - t0)
        if min(len(t) for t in self.times.values()) >= self.STEPS:
            med = {k: sorted(t)[len(t) // 2] for k, t in self.times.items()}
            self.choice = min(med, key=med.get)
        return out

    def summary(self) -> str:
        if self.resumed and not any(self.times.values()):
            return f"{self.choice} (chosen before the run was resumed)"
        med = {k: 1000 * sorted(t)[len(t) // 2] for k, t in self.times.items() if t}
        timing = ", ".join(f"{k} {v:.0f} ms/step" for k, v in med.items())
        return f"{self.choice or 'compiled'} ({timing}; medians of {self.STEPS} steps each)"


def _checkpoint_precision(rt: Runtime, cfg: dict, checkpoint: str | Path | None) -> Runtime:
    """A run keeps one precision: resumed from a bf16 checkpoint on a machine where ``auto``
    means fp32 (or the other way round) it goes on in the checkpoint's precision, saying so,
    so the precision it records is the one all of it was trained in. An explicit precision
    that differs from the checkpoint's is refused."""
    if not checkpoint or not Path(checkpoint).exists():
        return rt
    was = load_checkpoint(checkpoint).get("precision")
    now = "bf16" if rt.bf16 else "fp32"
    if was is None or was == now:
        return rt
    if cfg["runtime"]["precision"] != "auto":
        raise ConfigError(f"checkpoint {checkpoint} was trained in {was}, but "
                          f"'runtime.precision' asks for {now}: a run is trained in one "
                          "precision; use precision auto to resume it")
    print(f"  resuming in {was}, the precision of checkpoint {checkpoint} (auto would choose "
          f"{now} here)", flush=True)
    return dataclasses.replace(rt, bf16=was == "bf16")


def _build_model(cfg: dict, data: DeviceData, rt: Runtime, world: World):
    """(the model, what the step calls): the same module in one process; in K, the module
    with synchronised batch norm and DDP (gradients averaged over ranks) around it."""
    model = build_model(cfg["model"]["name"], num_classes=data.num_classes,
                        **cfg["model"]["options"]).to(rt.device)
    use_ghost_batchnorm(model, cfg["bn_group"])
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if world.size == 1:
        return model, model
    return data_parallel(model, rt.device)


def _same_data(path: Path, state: dict, checksum: str | None) -> None:
    """A run resumes only on the data it started on: ``CheckpointError`` if the checkpoint was
    written training on data with another checksum (a named data set enters the config hash by
    name, so its files can change under an unfinished run)."""
    was = state.get("dataset_checksum")
    if was and checksum and was != checksum:
        raise CheckpointError(f"checkpoint {path} was written training on data with checksum "
                              f"{was[:12]}, but the data set now has checksum {checksum[:12]}: "
                              "resuming would train one run on two data sets")


class _Run:
    """What a checkpoint holds between epochs (epoch, iteration, history, generators, schedule),
    and one epoch of training on this rank's slices of the global batches."""

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
            self.partial = state.get("partial")  # stopped inside an epoch by a deadline
            self.compile_choice = state.get("compile_choice")
            self.sched.load_state_dict(state.get("schedule", {}))
        self.wall0 = time.perf_counter()

    def wall_time(self) -> float:
        return self.wall_before + time.perf_counter() - self.wall0

    def save(self, **state: Any) -> None:
        """Write the checkpoint (rank 0 only) with ``state`` (epoch, iteration, ...)."""
        if self.path and self.world.main:
            save_checkpoint(self.path, self.module, self.optimizer, self.data_gen,
                            self.rt.device, history=self.history, config=self.cfg,
                            meta=self.meta, schedule=self.sched.state_dict(),
                            world_size=self.world.size, wall_time_s=self.wall_time(),
                            precision="bf16" if self.rt.bf16 else "fp32",
                            compile_choice=self.trial.choice if self.trial else None,
                            dataset_checksum=self.data.info.get("dataset_checksum"), **state)

    def train_epoch(self, epoch: int, step, bar: Progress, deadline: float | None,
                    trace: list | None) -> dict:
        """Train ``epoch`` (its rest, after a mid-epoch checkpoint); returns its metrics."""
        t0 = time.perf_counter()
        d, batch, per, sched = self.cfg["data"], self.batch, self.per_rank, self.sched
        first = (self.partial or {}).get("step", 0)
        steps = min(self.steps_per_epoch, sched.total - self.iteration + first)
        gen_before = self.data_gen.get_state()  # a mid-epoch checkpoint redraws this epoch
        # the whole epoch, the same on every rank; its "labels" are the sample indices
        x_all, idx_all = epoch_data(self.data.train_x, self.index, steps * batch,
                                    d["pad"] if d["augment"] else 0, d["augment"],
                                    self.data_gen, self.data.pad_fill)
        y_all = self.data.train_y[idx_all]
        loss_sum, wrong = self._running_sums()
        for s in range(first, steps):
            if deadline is not None and _clock() >= deadline:
                self._stop(epoch, s, gen_before, loss_sum, wrong)
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
        return self._metrics(epoch, steps, first, loss_sum, wrong, lr, t0)

    def _running_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss sum, error count) of the epoch so far: zeros, or a mid-epoch checkpoint's,
        on rank 0 only (scaled as K ranks' per-rank mean losses would sum)."""
        partial, self.partial = self.partial, None
        dev = self.rt.device
        if partial and self.world.main:
            return (partial["loss_sum"].to(dev) * self.world.size, partial["wrong"].to(dev))
        return torch.zeros((), device=dev), torch.zeros((), device=dev, dtype=torch.long)

    def _stop(self, epoch: int, s: int, gen_before: torch.Tensor, loss_sum: torch.Tensor,
              wrong: torch.Tensor) -> None:
        """Write a mid-epoch checkpoint before step ``s`` and raise ``DeadlineReached``."""
        gen_now = self.data_gen.get_state()
        self.data_gen.set_state(gen_before)
        self.save(epoch=epoch, iteration=self.iteration,
                  partial={"step": s, "loss_sum": loss_sum.cpu(), "wrong": wrong.cpu()})
        self.data_gen.set_state(gen_now)
        raise DeadlineReached(self.iteration, self.sched.total)

    def _metrics(self, epoch: int, steps: int, first: int, loss_sum: torch.Tensor,
                 wrong: torch.Tensor, lr: float, t0: float) -> dict:
        """The epoch's metrics from its sums over all ranks (one host synchronisation)."""
        totals = self.world.sum(torch.stack([loss_sum.double(), wrong.double()]))
        train_loss = totals[0].item() / (steps * self.world.size)
        dt = time.perf_counter() - t0
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
