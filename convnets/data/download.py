"""Downloads through torchvision, and the messages that say what to do when data are missing
(``--data-dir``, ``$CONVNETS_DATA``, ``--dataset synthetic``, archives not yet extracted)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .dataset import DatasetError
from .paths import ENV_DATA_DIR, _is_writable_dir


def _ways_out(extra: str = "") -> str:
    return (
        "Ways out: pass --data-dir DIR (or set the environment variable "
        f"{ENV_DATA_DIR}=DIR) pointing at a copy of the data, or use --dataset synthetic for an "
        f"offline smoke run.{extra}"
    )


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or repr(exc)
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _download(what: str, where: Path, fetch: Callable[[], Any], extra: str = "") -> None:
    """Run a torchvision download; any network or file failure becomes a DatasetError."""
    if not _is_writable_dir(where):
        raise DatasetError(f"{what} was not found in {where}, and that folder is read-only, so "
                           "it cannot be downloaded there. " + _ways_out(extra))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fetch()
    except (OSError, RuntimeError, ValueError, EOFError) as e:
        # URLError is an OSError; torchvision reports failed mirrors and bad md5s as RuntimeError
        raise DatasetError(
            f"{what} was not found in {where} and could not be downloaded ({_one_line(e)}). "
            + _ways_out(extra)
        ) from e


def _missing(what: str, where: str, extra: str = "") -> DatasetError:
    return DatasetError(f"{what} was not found (looked for {where}) and download=False. "
                        "Allow the download (download=True), or: " + _ways_out(extra))


def _nearby_hint(root: Path, keyword: str) -> str:
    """Names in ``root`` that look like the wanted data set (an archive not extracted, ...)."""
    try:
        near = sorted(p.name for p in root.iterdir()
                      if keyword in p.name.lower() and not p.name.startswith("."))
    except OSError:
        return ""
    if not near:
        return ""
    tail = " (extract archives first)." if any(".tar" in n or n.endswith(".zip")
                                               for n in near) else "."
    return f" Found in {root}: {', '.join(near)}{tail}"
