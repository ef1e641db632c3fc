"""Data-parallel training of one run: torchrun + DistributedDataParallel.

    torchrun --nproc_per_node=2 -m convnets.distributed --config cfg.yaml [--experiment NAME]

This module holds the process group and the launchers; it has no training loop (and what a
K-process run changes in the model, synchronised batch norm and the DDP wrapper, is
``convnets.parallel``'s). Every rank runs ``convnets.train.fit``, the one loop, whose
``world`` (``convnets.runtime.World``) is this process group, so K processes train what one
process would:

* every rank draws the epoch's permutation and augmentation from the same seeded CPU generator
  (the one ``fit`` uses) and takes its own contiguous slice of each global batch: rank r of K
  trains on samples ``[s*B + r*B/K, s*B + (r+1)*B/K)`` of step s (B = ``batch_size``, the global
  batch; it must be divisible by K);
* gradients are averaged by DDP, and batch norm is synchronised, so the statistics are those of
  the global batch (2 processes x 64 normalise like 1 x 128; ``convnets.parallel``);
* the per-epoch train loss / error are all-reduced; rank 0 evaluates (on the unwrapped model),
  logs to MLflow and writes checkpoints; every rank can resume from the checkpoint.

Backend: nccl on CUDA (one GPU per rank, ``cuda:$LOCAL_RANK``), gloo on CPU.

Launch with torchrun (above), or from Python with :func:`launch` (``torch.multiprocessing``,
one node), which the experiment runner can use for ``--ddp K``.

Imports the trainer (``fit``); nothing below it imports this module.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from convnets import tracking
from convnets.config import ConfigError, resolve_config
from convnets.names import final_error
from convnets.results import DivergedError, RunResult
from convnets.runtime import rank, thread_share, world_size
from convnets.train import fit

__all__ = ["init_from_env", "launch", "main"]

# ---------------------------------------------------------------------------------------------
# Process group
# ---------------------------------------------------------------------------------------------


def init_from_env() -> torch.device:
    """Join the process group torchrun (or :func:`launch`) describes in the environment; returns
    this rank's device (``cuda:$LOCAL_RANK`` when CUDA is visible, else CPU)."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return device


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, nprocs: int, port: int, cfg: dict, run_id: str | None,
             checkpoint: str | None, progress: bool, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nprocs))
    if not torch.cuda.is_available():
        torch.set_num_threads(thread_share(nprocs))
    init_from_env()
    logger = None
    if run_id and local_rank == 0:
        logger = tracking.RunLogger(tracking.client(), run_id)
    try:
        result = fit(cfg, logger=logger, checkpoint=checkpoint, progress=progress,
                     checkpoint_meta={"run_id": run_id} if run_id else None, resolved=True)
        payload: dict[str, Any] = {"result": result}
    except DivergedError as err:
        payload = {"diverged": str(err)}
    finally:
        dist.destroy_process_group()
    if local_rank == 0:
        torch.save(payload, out)


def launch(cfg: dict, nprocs: int, *, run_id: str | None = None,
           checkpoint: str | Path | None = None, progress: bool = True,
           resolved: bool = False) -> RunResult:
    """Train ``cfg`` on ``nprocs`` local processes (one per GPU on CUDA); rank 0 logs epochs into
    MLflow run ``run_id`` if given. Returns rank 0's result; raises ``DivergedError`` as ``fit``.
    The caller logs the final result and ends the run (as the experiment runner does)."""
    if torch.cuda.is_available() and nprocs > torch.cuda.device_count():
        raise ConfigError(f"--ddp {nprocs} needs {nprocs} GPUs, {torch.cuda.device_count()} "
                          "visible")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.pt")
        mp.spawn(_spawned, nprocs=nprocs, join=True,
                 args=(nprocs, free_port(), cfg if resolved else resolve_config(cfg), run_id,
                       str(checkpoint) if checkpoint else None, progress, out))
        # our own result file in a private temp dir (a RunResult dataclass), never a
        # checkpoint from a shared disk: the full unpickler is safe here
        payload = torch.load(out, weights_only=False)
    if "diverged" in payload:
        raise DivergedError(payload["diverged"])
    return payload["result"]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="torchrun --nproc_per_node=K -m convnets.distributed")
    p.add_argument("--config", required=True, help="trainer config (YAML), as convnets.train")
    p.add_argument("--experiment", default="ddp", help="MLflow experiment (default: ddp)")
    p.add_argument("--run-name", default=None)
    p.add_argument("--run-id", default=None, help="log into this existing MLflow run")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (resumes if present)")
    p.add_argument("--no-mlflow", action="store_true", help="log nothing")
    p.add_argument("--trace", default=None,
                   help="folder: every rank writes rank<R>.pt with its sample indices per step")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _open_run(args: argparse.Namespace, cfg: dict, world: int):
    """Rank 0's MLflow run (``convnets.tracking.TrackedRun``): ``--run-id`` resumed, else new."""
    cl = tracking.client()
    if args.run_id:  # the caller's run (its experiment is the run's own)
        return tracking.TrackedRun.start(cl, "", run_id=args.run_id)
    tags = {"ddp_world_size": str(world), "config_source": str(args.config)}
    return tracking.TrackedRun.start(cl, tracking.experiment_id(cl, args.experiment),
                                     run_name=args.run_name or f"ddp-{world}x", tags=tags,
                                     config=cfg)


def main(argv: list[str] | None = None) -> int:
    """torchrun entry: ``torchrun --nproc_per_node=K -m convnets.distributed --config C``."""
    args = _parse(argv)
    cfg = resolve_config(yaml.safe_load(Path(args.config).read_text()) or {})
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(thread_share(int(os.environ.get(
            "LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))))
    init_from_env()
    me, world = rank(), world_size()
    run = _open_run(args, cfg, world) if me == 0 and not args.no_mlflow else None
    trace: list | None = [] if args.trace else None
    result, code = None, 0
    try:
        result = fit(cfg, logger=run.logger if run else None, checkpoint=args.checkpoint,
                     progress=not args.no_progress, trace=trace,
                     checkpoint_meta={"run_id": run.run_id} if run else None, resolved=True)
    except BaseException as err:  # diverged (on every rank: the loss is all-reduced), or not
        if run:
            run.fail_with(err)
        if not isinstance(err, DivergedError):
            raise
        code = 1
        print(f"rank {me}: {err}", file=sys.stderr, flush=True)
    finally:
        if args.trace:
            Path(args.trace).mkdir(parents=True, exist_ok=True)
            torch.save({"indices": trace, "rank": me, "world_size": world,
                        "history": result.history if result else None,
                        "final": result.final if result else None},
                       Path(args.trace) / f"rank{me}.pt")
        dist.destroy_process_group()
    if run and result is not None:
        run.finish(result, cfg)
    if me == 0 and result is not None:
        split = result.eval_split
        print(f"done: {world} processes, final {split} error "
              f"{result.final[final_error(split)]:.2f}%, train loss "
              f"{result.final['final_train_loss']:.4f}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
