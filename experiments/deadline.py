"""Deadlines for time-boxed campaigns (Slurm wall time, preemptible machines, GPU leases).

``--deadline`` (or ``$CONVNETS_DEADLINE``) is a number of seconds from now (``480``, ``8m``,
``2h``), a clock time today, UTC (``21:30``), or an ISO 8601 time (``2026-12-01T21:30:00Z``).
Before a job starts, its time is estimated from the wall time of a finished run of the same
config (another seed); a job that would end after the deadline is not started (``run
--partial`` starts it anyway). A started job stops at the first iteration boundary past the
deadline with an exact checkpoint.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass
from pathlib import Path

ENV = "CONVNETS_DEADLINE"
#: seconds added to a job's estimate for process start, data loading and evaluation
START_OVERHEAD_S = 15.0


@dataclass(frozen=True)
class Deadline:
    at: float  # time.time() value
    #: start runs that cannot finish by ``at`` too (``run --partial``): on a machine whose disk
    #: outlives the deadline, their checkpoints carry the work to the next call
    partial: bool = False

    def left(self) -> float:
        return self.at - time.time()

    def passed(self) -> bool:
        """Whether a started run stops now (``fit`` asks before every step)."""
        return time.time() >= self.at

    def refuse(self, client, exp_id: str, config_hash: str, checkpoint: Path,
               iterations: int | None = None) -> str:
        """Why a job must not start now ('' if it may); ``iterations``: how far it trains (its
        horizon), None: to the end."""
        left = self.left()
        if left <= 0:
            return "deadline passed"
        if self.partial:
            return ""
        est = estimate_seconds(client, exp_id, config_hash, iterations)
        if est is None:
            return ""
        if checkpoint.exists():  # resuming: only the rest of the run is left, start it
            return ""
        if est + START_OVERHEAD_S > left:
            return f"needs about {est + START_OVERHEAD_S:.0f} s, {left:.0f} s left"
        return ""


def estimate_seconds(client, exp_id: str, config_hash: str,
                     iterations: int | None = None) -> float | None:
    """Wall time of a finished run of this config (any seed), scaled from the iteration it
    reached to ``iterations`` (None: as it ran), or None if there is none."""
    runs = client.search_runs([exp_id], f"tags.config_hash = '{config_hash}' and "
                              "attributes.status = 'FINISHED'", max_results=5)
    times = []
    for r in runs:
        t, reached = r.data.metrics.get("wall_time_s"), r.data.tags.get("horizon")
        if t and iterations and reached:
            t *= iterations / int(reached)
        if t:
            times.append(t)
    return max(times) if times else None


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_deadline(text: str | None, now: float | None = None) -> Deadline | None:
    """``Deadline`` from the forms in the module docstring; ``ValueError`` names the value."""
    if text is None or str(text).strip() == "":
        return None
    text, now = str(text).strip(), time.time() if now is None else now
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh]?)", text)
    if m:
        return Deadline(now + float(m.group(1)) * _UNITS[m.group(2)])
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text)
    if m:
        day = dt.datetime.fromtimestamp(now, dt.UTC)
        at = day.replace(hour=int(m.group(1)), minute=int(m.group(2)), second=0, microsecond=0)
        if at.timestamp() <= now:
            at += dt.timedelta(days=1)
        return Deadline(at.timestamp())
    try:
        at = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"deadline {text!r}: expected seconds (480, 8m, 2h), a UTC clock time "
                         "(21:30) or an ISO 8601 time (2026-12-01T21:30:00Z)") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return Deadline(at.timestamp())
