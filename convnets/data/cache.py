"""The decoded-array cache: one ``torch.save`` file per data set, keyed on its source files
(names, sizes, inode change times) and verified (shapes, sha256 of tensors and metadata) on every load."""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .dataset import DatasetError, _sha256
from .paths import _is_writable_dir, default_data_dir

CACHE_DIRNAME = ".convnets-cache"
# 2: the file carries a digest of all of its content (class names included), not only the
# pixel and label tensors; a format-1 file is stale and is rebuilt
_CACHE_FORMAT = 2
_SPLIT_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
_DIGEST_KEY = "content_sha256"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "data"


def _cache_path(primary: Path, stem: str) -> Path | None:
    """Cache file for data under ``primary``, or a fallback under the default data dir."""
    local = primary / CACHE_DIRNAME
    if _is_writable_dir(local if local.exists() else primary) and primary.is_dir():
        return local / f"{stem}.pt"
    try:
        where = str(primary.resolve())
    except OSError:
        where = str(primary)
    fallback = default_data_dir() / CACHE_DIRNAME
    if _is_writable_dir(fallback):
        tag = hashlib.sha256(where.encode()).hexdigest()[:10]
        return fallback / f"{stem}-{_safe(primary.name)}-{tag}.pt"
    return None


def _file_entry(path: Path, base: Path) -> tuple[str, int, int]:
    st = path.stat()
    try:
        rel = path.relative_to(base).as_posix()
    except ValueError:
        rel = path.as_posix()
    return rel, st.st_size, st.st_ctime_ns


def _source_key(entries: Sequence[tuple[str, int, int]], extra: str = "") -> str:
    """Fingerprint of source files: count, total size, and every (name, size, ctime).

    The inode change time, not the modification time: ``cp -p``, ``rsync -t``, ``tar -x`` and
    ``touch -r`` restore an old mtime after the content changed (two same-size images swapped
    between class folders, one label byte edited), but every write, rename or restore of a
    file sets its ctime to the present, which no user command can set back. The cost: a cache
    is rebuilt after its files are copied or extracted again even when their bytes are the
    same (the CIFAR-10 JPEG folder: one decode of its 60,000 files)."""
    h = hashlib.sha256(extra.encode())
    for rel, size, ctime in entries:
        h.update(f"{rel}\0{size}\0{ctime}\n".encode())
    return f"{len(entries)}:{sum(e[1] for e in entries)}:{h.hexdigest()}"


def _content_digest(blob: dict[str, Any]) -> str:
    """Digest of everything in a cache file except the digest itself: every non-tensor entry
    (format, source key, class names, shapes, the tensors' own sha256) as canonical JSON. The
    tensors are covered through ``sha256``, which ``_read_cache`` verifies against them."""
    meta = {k: v for k, v in blob.items() if k not in _SPLIT_KEYS and k != _DIGEST_KEY}
    text = json.dumps(meta, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_cache(path: Path, key: str) -> dict[str, Any] | None:
    """Verified cache payload; None when the cache is stale (sources changed)."""
    delete = f"delete {path} and load again to rebuild it"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file cannot be trusted
        raise DatasetError(f"cache file {path} is unreadable ({type(e).__name__}: {e}); "
                           f"{delete}") from e
    if not isinstance(blob, dict) or "format" not in blob:
        raise DatasetError(f"cache file {path} is not a convnets data cache; {delete}")
    if blob["format"] != _CACHE_FORMAT or blob.get("source_key") != key:
        return None
    try:
        tensors = [blob[k] for k in _SPLIT_KEYS]
        shapes = blob["shapes"]
        sha = blob["sha256"]
        classes = list(blob["classes"])
    except (KeyError, TypeError) as e:
        raise DatasetError(f"cache file {path} lacks an entry ({e}); {delete}") from e
    for k, t, dtype in zip(_SPLIT_KEYS, tensors, (torch.uint8, torch.int64) * 2, strict=True):
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or \
                list(t.shape) != list(shapes.get(k, ())):
            got = (f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor)
                   else type(t).__name__)
            raise DatasetError(f"cache file {path}: {k} is {got}, expected {dtype} "
                               f"{list(shapes.get(k, ()))}; {delete}")
    extra = sorted(k for k, v in blob.items() if isinstance(v, torch.Tensor)
                   and k not in _SPLIT_KEYS)
    if extra or _sha256(*tensors) != sha or blob.get(_DIGEST_KEY) != _content_digest(blob):
        raise DatasetError(f"cache file {path} fails its sha256 check (modified or corrupt); "
                           f"{delete}")
    out = dict(zip(_SPLIT_KEYS, (t.contiguous() for t in tensors), strict=True))
    out["classes"] = classes
    out["sha256"] = sha
    return out


def _write_cache(path: Path, key: str, payload: dict[str, Any]) -> None:
    blob = {
        "format": _CACHE_FORMAT,
        "source_key": key,
        "classes": list(payload["classes"]),
        "shapes": {k: list(payload[k].shape) for k in _SPLIT_KEYS},
        "sha256": payload["sha256"],
        **{k: payload[k] for k in _SPLIT_KEYS},
    }
    blob[_DIGEST_KEY] = _content_digest(blob)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not write the data cache {path} ({e}); the data set will be "
                      "decoded again next time", RuntimeWarning, stacklevel=3)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _cached_load(
    cache: Path | None, key: str, build: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Payload (four split tensors + classes + sha256) from the cache, else built and cached."""
    if cache is not None and cache.exists():
        payload = _read_cache(cache, key)
        if payload is not None:
            return payload
    payload = build()
    for k in _SPLIT_KEYS:
        payload[k] = payload[k].contiguous()
    payload["sha256"] = _sha256(*(payload[k] for k in _SPLIT_KEYS))
    if cache is not None:
        _write_cache(cache, key, payload)
    return payload
