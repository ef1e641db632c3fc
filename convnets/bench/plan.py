"""The bench's rows, planned up front and measured one by one, each written out as it is done.

Every row has a key (section | model | configuration). The plan fixes the full list before the
first measurement, so the table can say at any moment which rows are done, which failed and
which were not reached. After each row the whole markdown file is rewritten (atomically:
temporary file + rename), so a bench killed by a time limit leaves a valid table of the rows
done, headed "partial: N of M rows". The measured rows are also kept as JSON in an HTML
comment at the end of the file; ``--resume`` reads them back and measures only the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convnets.bench.measure import Peak, Result, Spec, synthetic, train_flops


def _flags(bf16=False, fused_sgd=False, channels_last=False, compile=None) -> dict:
    return dict(bf16=bf16, fused_sgd=fused_sgd, channels_last=channels_last, compile=compile)


# one technique at a time; each row names its full set of techniques
LADDER = [
    ("trainer: fp32", _flags()),
    ("trainer: bf16", _flags(bf16=True)),
    ("trainer: bf16, fused SGD", _flags(bf16=True, fused_sgd=True)),
    ("trainer: bf16, fused SGD, channels_last",
     _flags(bf16=True, fused_sgd=True, channels_last=True)),
    ("trainer: bf16, fused SGD, compile", _flags(bf16=True, fused_sgd=True, compile="default")),
    ("trainer: bf16, fused SGD, channels_last, compile",
     _flags(bf16=True, fused_sgd=True, channels_last=True, compile="default")),
    ("trainer: bf16, fused SGD, channels_last, CUDA graphs",
     _flags(bf16=True, fused_sgd=True, channels_last=True, compile="reduce-overhead")),
]
#: the K-runs rows and the thread rows use the eager bf16 step with fused SGD: K compilations
#: at once would dominate the bench, and vmap's batched step runs eagerly
K_FLAGS = LADDER[2][1]


STATE_RE = re.compile(r"<!-- bench-state (.*) -->\s*\Z", re.S)


@dataclass
class Row:
    section: str  # "peak", "model" or "kruns"
    model: str
    config: str
    measure: Callable[[], Peak | Result]
    spec: Spec | None = None  # model rows: for the FLOPs per image

    @property
    def key(self) -> str:
        return f"{self.section} | {self.model} | {self.config}"


@dataclass
class State:
    """What the table shows: the plan's keys, and every row measured, failed or resumed."""

    env: dict
    size: str
    timing: dict
    keys: list[str]
    done: dict[str, Peak | Result] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    earlier: str | None = None  # the date of the run the resumed rows come from
    running: bool = True
    rendered_by: str | None = None  # `--render`: the commit that rewrote the table


    def to_json(self) -> str:
        def enc(r):
            return {"type": type(r).__name__, **dataclasses.asdict(r)}

        return json.dumps({"env": self.env, "size": self.size, "timing": self.timing,
                           "done": {k: enc(r) for k, r in self.done.items()},
                           "failed": self.failed})


def load_state(path: Path) -> dict | None:
    """The measured rows a previous run left in ``path`` (None if it holds none)."""
    if not path.exists():
        return None
    m = STATE_RE.search(path.read_text())
    if not m:
        return None
    data = json.loads(m.group(1))
    types = {"Peak": Peak, "Result": Result}
    data["done"] = {k: types[v.pop("type")](**v) for k, v in data["done"].items()}
    data.setdefault("failed", {})
    return data


def rerender(state: State, earlier: dict | None, commit: str) -> State:
    """``state`` (this plan's keys) filled with every row and failure of ``earlier``, as it
    was measured, to be rendered again by this code: nothing is measured."""
    if earlier is None:
        raise SystemExit("--render: the output holds no bench state to render")
    state.env, state.size, state.timing = earlier["env"], earlier["size"], earlier["timing"]
    state.done = dict(earlier["done"])
    state.failed = {k: v for k, v in earlier["failed"].items() if k not in state.done}
    state.keys = [k for k in state.keys if k in state.done or k in state.failed] + [
        k for k in state.done if k not in state.keys]
    state.running, state.rendered_by = False, commit
    return state


def resume_from(state: State, earlier: dict | None) -> None:
    """Take over the rows of an earlier run of the same device, size and timing."""
    if earlier is None:
        print("--resume: no earlier bench state in the output; measuring every row")
        return
    same = (earlier["env"].get("device"), earlier["size"], earlier["timing"]) == (
        state.env.get("device"), state.size, state.timing)
    if not same:
        raise SystemExit("--resume: the output was measured on another device, size or "
                         "timing; run without --resume (or with another --out)")
    for key in state.keys:
        if key in earlier["done"]:
            state.done[key] = earlier["done"][key]
            state.resumed.append(key)
    state.earlier = earlier["env"].get("date")
    print(f"--resume: {len(state.resumed)} of {len(state.keys)} rows from the run of "
          f"{state.earlier}", flush=True)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _echo(row: Row, r) -> None:
    if isinstance(r, Peak):
        print(f"   {r.precision} matmul {r.n}x{r.n}: {r.gflops:,.0f} GFLOP/s", flush=True)
        return
    extra = f" (first step {r.compile_s:.1f}s)" if r.compile_s else ""
    print(f"   {row.model:22s} {r.config:46s} {r.images_per_sec:10.1f} img/s{extra}",
          flush=True)


def execute(rows: list[Row], state: State, render: Callable[[State], str],
            out: Path | None) -> State:
    """Measure every row not already done; rewrite ``out`` after each one."""
    section = None
    for row in rows:
        if row.key in state.done:
            continue
        if (row.section, row.model) != section:
            section = (row.section, row.model)
            print(f"== {row.section}: {row.model}", flush=True)
        try:
            r = row.measure()
        except Exception as err:  # a failing configuration must not lose the rest
            state.failed[row.key] = f"{type(err).__name__}: {err}"[:300]
            print(f"   {row.config} failed: {state.failed[row.key]}", flush=True)
        else:
            if row.spec is not None:
                r.config = row.config  # the plan's name for the row, also in the key
                r.flops_per_image = train_flops(row.spec)
            state.done[row.key] = r
            _echo(row, r)
        finally:
            if "compile" in row.config or "CUDA graphs" in row.config:
                torch.compiler.reset()  # each configuration compiles from scratch
        if out is not None:
            write_atomic(out, render(state))
    state.running = False
    if out is not None:
        write_atomic(out, render(state))
    return state


@functools.lru_cache(maxsize=4)
def data_for(n: int, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """One synthetic data set per (size, image shape), shared by that model's rows."""
    return synthetic(n, shape)
