"""One training run: ``fit(config)``, the one loop for one process or the K of a DDP run, and
the step it trains with.

``fit`` knows nothing of spec files or MLflow: it takes a config dict and an optional logger
(see ``convnets.tracking.RunLogger``), and returns the run's results. The same code runs on CPU
and GPU; the fast-path switches (``runtime.*``) never change what is trained. Its parts live in
``convnets.config`` (the config), ``convnets.runtime`` (device, precision, seeding, ranks),
``convnets.optim`` (SGD and schedule), ``convnets.epochs`` (the epoch machinery and the
evaluation, shared with the batched seeds of ``convnets.multiseed``), ``convnets.checkpoint``,
``convnets.results`` and ``convnets.progress``, and the data on the device in
``convnets.device_data``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from convnets.augment import to_float
from convnets.config import resolve_config
from convnets.device_data import DeviceData
from convnets.epochs import (
    RunState,
    end_epoch,
    evaluate,
    prepare_run,
    resumed_precision,
    stop_rule,
)
from convnets.models import build_model
from convnets.models.common import use_ghost_batchnorm
from convnets.optim import make_optimizer, set_lr
from convnets.parallel import data_parallel
from convnets.progress import Progress
from convnets.results import NullLogger, RunResult, build_result
from convnets.runtime import Runtime, World, seed_everything

__all__ = ["CompileTrial", "fit", "make_step"]

# ---------------------------------------------------------------------------------------------
# Step and evaluation
# ---------------------------------------------------------------------------------------------


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
        set_lr(optimizer, lr)
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
    deadline: float | Callable[[], bool] | None = None,
    world: World | None = None,
    trace: list | None = None,
    resolved: bool = False,
) -> RunResult | None:
    """Train one run as ``cfg`` says and return its curve, final metrics and predictions.

    Args:
        cfg: config (see ``convnets.config.DEFAULTS``); resolved and validated here unless
            ``resolved`` says ``resolve_config`` made it (a runner's job: resolved once, by
            ``experiments.spec.expand``, and never changed since). Its
            ``horizon`` stops the run at that iteration of the schedule (evaluated and
            checkpointed there); a later call with a larger one goes on from that checkpoint.
        logger: receives ``log_epoch(step, metrics)`` once per epoch (batched, one call).
        checkpoint: file written atomically at every epoch end; if it exists, the run resumes
            from it and ends with the same metrics as an uninterrupted run (bitwise on CPU).
        progress: a progress bar on a terminal, plain lines otherwise.
        on_epoch_end: called with the epoch's metrics (tests use it to interrupt a run).
        dataset: an already loaded ``convnets.data.Dataset`` (skips loading).
        checkpoint_meta: stored in the checkpoint as ``meta`` (the runner keeps the MLflow run
            id there, so a checkpoint resumes only the run that wrote it).
        deadline: a ``time.time()`` value, or a function of no arguments that says whether to
            stop now (read before every step); once passed (or true), the run stops at that
            iteration boundary, writes a mid-epoch checkpoint and raises ``DeadlineReached``.
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
    cfg = cfg if resolved else resolve_config(cfg)
    world = world or World.current()
    per_rank = world.per_rank(cfg, deadline)
    logger = logger if logger is not None and world.main else NullLogger()
    seed_everything(int(cfg["seed"]))  # the same initial weights on every rank
    # compile: auto by the run's length in one process (DDP + compile: unmeasured)
    rt, data = prepare_run(cfg, world.place(cfg["runtime"]), dataset, by_length=world.size == 1)
    rt = resumed_precision(rt, cfg, checkpoint)
    module, model = _build_model(cfg, data, rt, world)
    optimizer = make_optimizer(module, cfg, rt)
    run = RunState(cfg, world, rt, data, module, optimizer, checkpoint, checkpoint_meta)
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
                        run.wall_time(), horizon=run.iteration, **world.info(per_rank), **extra)


def _step_of(model, optimizer, rt: Runtime, data: DeviceData, cfg: dict, run: RunState):
    """The training step; with ``compile: auto`` on a CPU, a ``CompileTrial`` between the
    compiled and the eager step, decided on this machine (kept on ``run`` for its checkpoint)."""
    step = make_step(model, optimizer, rt, data.mean, data.std, cfg["data"]["resize"])
    if rt.compile and rt.compile_auto and rt.device.type == "cpu":
        eager = make_step(model, optimizer, dataclasses.replace(rt, compile=None), data.mean,
                          data.std, cfg["data"]["resize"])
        run.trial = CompileTrial(step, eager, run.compile_choice)
        step = run.trial.step
    return step


def _train_epochs(run: RunState, step, logger, progress: bool, deadline,
                  trace: list | None, on_epoch_end) -> tuple:
    """Every epoch left: train, evaluate when due (rank 0), checkpoint, then log; or up to the
    run's horizon. Returns the last evaluation's (error, predictions), the horizon's when it
    stopped there; (None, None) when none ran (nothing was left)."""
    bar = Progress(run.end, progress and run.world.main, initial=run.iteration)
    err = pred = None
    stop = stop_rule(deadline)
    try:
        for epoch in range(run.epoch, run.n_epochs):
            metrics = run.train_epoch(epoch, step, bar, stop, trace, logger)
            if metrics is None:  # stopped at the run's horizon, measured there
                return run.mark_result or (None, None)
            evaluated = end_epoch(run, epoch, metrics, logger)
            if evaluated:
                err, pred = evaluated
            bar.update(metrics, run.data.eval_split)
            if on_epoch_end:
                on_epoch_end(metrics)
    finally:
        bar.close()
    return err, pred


class CompileTrial:
    """``compile: auto`` on a CPU, timed on the machine that runs instead of taken from the
    CPUs a bench once saw (on an AVX2-only EPYC compiling made ResNet-20 slower, on two other
    CPUs faster: docs/measurements.md). The first ``WARMUP`` steps run compiled (the
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


def _build_model(cfg: dict, data: DeviceData, rt: Runtime, world: World):
    """(the model, what the step calls): the same module in one process; in K, the module
    with synchronised batch norm (per-rank groups under ``bn_group``) and DDP (gradients
    averaged over ranks) around it."""
    model = build_model(cfg["model"]["name"], num_classes=data.num_classes,
                        **cfg["model"]["options"]).to(rt.device)
    use_ghost_batchnorm(model, cfg["bn_group"])
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if world.size == 1:
        return model, model
    return data_parallel(model, rt.device, sync_bn=cfg["bn_group"] is None)
