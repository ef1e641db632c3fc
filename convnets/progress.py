"""The training progress display: a tqdm bar on a terminal, plain lines in logs.

Imports only the standard library (and tqdm when on a terminal); it reads the host clock and
never a device tensor, so showing progress never forces a device synchronisation.
"""

from __future__ import annotations

import math
import sys
import time

from tqdm import tqdm

from convnets.names import eval_error


class Progress:
    """tqdm bar on a terminal, else plain lines. Inside an epoch it is refreshed from the host
    clock alone (every ``every`` seconds: iterations done, images/s, ETA) so that it never
    forces a device synchronisation; the loss and errors appear at each epoch's end."""

    def __init__(self, total: int, enabled: bool, initial: int = 0, every: float = 2.0):
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.bar = None
        self.total = total
        self.every = every if self.tty else 30.0  # plain logs: a line every 30 s
        self.last = time.perf_counter()
        if self.tty:
            self.bar = tqdm(total=total, initial=initial, unit="it", leave=False,
                            dynamic_ncols=True)

    def tick(self, iteration: int, steps_done: int, batch: int, t0: float) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.every:
            return
        self.last = now
        per_step = (now - t0) / max(steps_done, 1)
        text = (f"{batch / per_step:.0f} img/s, "
                f"ETA {hms((self.total - iteration) * per_step)}")
        if self.bar is not None:
            self.bar.update(iteration - self.bar.n)
            self.bar.set_postfix_str(text)
        else:
            print(f"  it {iteration:>6d}/{self.total} {text}", flush=True)

    def update(self, m: dict, split: str) -> None:
        """Show an epoch's end: its metrics ``m`` (``split``: the evaluation set's name)."""
        ev = m.get(eval_error(split))
        ev_s = f" {split}_err {ev:5.2f}%" if ev is not None else ""
        if self.bar is not None:
            self.bar.update(m["iteration"] - self.bar.n)
            self.bar.set_postfix_str(
                f"loss {m['train_loss']:.3f} err {m['train_error']:.2f}%{ev_s} "
                f"{m['images_per_sec']:.0f} img/s"
            )
        elif self.enabled:
            print(
                f"  epoch {m['epoch']:>4d} it {m['iteration']:>6d}/{self.total} "
                f"loss {m['train_loss']:.4f} train_err {m['train_error']:5.2f}%{ev_s} "
                f"lr {m['lr']:.4g} {m['images_per_sec']:.0f} img/s",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def hms(seconds: float) -> str:
    """``seconds`` as h:mm:ss (``?`` if not finite)."""
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
