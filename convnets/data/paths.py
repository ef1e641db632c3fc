"""Where data live by default (``$CONVNETS_DATA`` or ``~/.cache/convnets/data``), and whether
a folder may be written into (for caches and downloads)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

ENV_DATA_DIR = "CONVNETS_DATA"


def default_data_dir() -> Path:
    """``$CONVNETS_DATA`` if set, else ``~/.cache/convnets/data``."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "convnets" / "data"


def _is_writable_dir(path: Path) -> bool:
    """True if files may be created in ``path`` (or its nearest existing ancestor).

    A folder without any write permission bit counts as read-only even for root, so shared
    read-only copies of the data are never written into.
    """
    p = path
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    try:
        mode = p.stat().st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) and bool(mode & 0o222) and os.access(p, os.W_OK | os.X_OK)
