"""Datasets: files on disk -> uint8 image tensors and int64 labels.

Every loader returns a :class:`Dataset` whose splits hold the *whole* split as one CPU tensor
``uint8 (N, C, H, W)``; augmentation, normalisation and batching belong to the trainer.

Supported names (see :func:`list_datasets`):

``cifar10``, ``cifar100``
    The python pickle batches (``cifar-10-batches-py/``, ``cifar-100-python/``) under
    ``data_dir``. torchvision downloads them only when the folder is absent; the batches are
    then read here (no md5 check on files already present).
``mnist``, ``fashion_mnist``
    The IDX files (plain or ``.gz``) under ``<data_dir>/<MNIST|FashionMNIST>/raw/``, parsed here;
    torchvision downloads them only when they are absent.
``imagefolder:PATH``
    ``PATH/{train,test}/<class>/*.{jpg,jpeg,png}``: classes sorted by name, files sorted
    numerically (``2.jpg`` before ``10.jpg``), decoded with ``torchvision.io``.
``synthetic``
    A deterministic, learnable, offline data set for smoke runs.

Decoded file-based data sets are cached (``torch.save``) in ``<data_dir>/.convnets-cache/``
(``PATH/.convnets-cache/`` for an image folder), or under :func:`default_data_dir` when that
place is read-only. A cache is keyed on the source files (names, sizes, mtimes) and rebuilt
when they change; its tensors are verified against the stored shapes and sha256 on every load.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import os
import pickle
import re
import stat
import struct
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Dataset",
    "DatasetError",
    "ImageSet",
    "channel_stats",
    "check_dataset_name",
    "default_data_dir",
    "list_datasets",
    "load_dataset",
    "pixel_mean",
    "stratified_split",
]

ENV_DATA_DIR = "CONVNETS_DATA"
CACHE_DIRNAME = ".convnets-cache"
# 2: the file carries a digest of all of its content (class names included), not only the
# pixel and label tensors; a format-1 file is stale and is rebuilt
_CACHE_FORMAT = 2
_IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
_DECODE_CHUNK = 1024


class DatasetError(RuntimeError):
    """A data set cannot be found, downloaded, read or trusted; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------------


@dataclass(repr=False)
class ImageSet:
    """One split: ``images`` uint8 (N, C, H, W), CPU, contiguous; ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageSet(images={str(self.images.dtype).removeprefix('torch.')}"
            f"{list(self.images.shape)}, labels={str(self.labels.dtype).removeprefix('torch.')}"
            f"{list(self.labels.shape)})"
        )


@dataclass(repr=False)
class Dataset:
    """A loaded data set: both splits in memory, class names and a content checksum."""

    name: str
    label: str
    train: ImageSet
    test: ImageSet
    classes: list[str]
    #: first 16 hex digits of sha256 over train images, train labels, test images, test labels
    checksum: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, label={self.label!r}, train={self.train!r}, "
            f"test={self.test!r}, num_classes={self.num_classes}, checksum={self.checksum!r})"
        )


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """``$CONVNETS_DATA`` if set, else ``~/.cache/convnets/data``."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "convnets" / "data"


def list_datasets() -> list[str]:
    """Names :func:`load_dataset` accepts (``imagefolder:PATH`` takes a folder path)."""
    return sorted(_LOADERS) + ["imagefolder:PATH"]


def check_dataset_name(name: Any, options: dict[str, Any]) -> None:
    """Raise ``DatasetError`` for a name or option ``load_dataset`` would refuse, without
    reading any data (spec validation calls it before a run starts)."""
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"dataset name must be a non-empty string, got {name!r}; known: "
                           f"{', '.join(list_datasets())}")
    options = {k: v for k, v in options.items() if v is not None}
    raw = name.strip()
    if raw.lower().startswith("imagefolder:"):
        if not raw.split(":", 1)[1].strip():
            raise DatasetError(f"dataset {name!r} names no folder; use imagefolder:PATH")
        _check_options("imagefolder", options, _IMAGEFOLDER_OPTIONS)
        return
    key = _ALIASES.get(raw.lower().replace("-", "_"), raw.lower().replace("-", "_"))
    if key not in _LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    _check_options(key, options, _LOADERS[key][1])


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = True,
    **options: Any,
) -> Dataset:
    """Load a data set by name; see the module docstring for names and on-disk layouts.

    Args:
        name: ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``, ``synthetic`` or
            ``imagefolder:PATH``.
        data_dir: where the data lives (or is downloaded to); default :func:`default_data_dir`.
        download: let torchvision fetch a missing data set.
        **options: per data set. All: ``label`` (table label). File-based: ``cache`` (bool,
            default True). ``imagefolder``: ``mode`` ("unchanged", "rgb", "gray").
            ``synthetic``: ``n_train``, ``n_test``, ``num_classes``, ``image_size``,
            ``channels``, ``noise``, ``seed``. An option given as None takes its default.

    Raises:
        DatasetError: unknown name or option, data missing and not downloadable, corrupt files,
            or a cache that fails verification.
    """
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"dataset name must be a non-empty string, got {name!r}; known: "
                           f"{', '.join(list_datasets())}")
    root = Path(data_dir).expanduser() if data_dir not in (None, "") else default_data_dir()
    options = {k: v for k, v in options.items() if v is not None}
    raw = name.strip()
    if raw.lower().startswith("imagefolder:"):
        path = raw.split(":", 1)[1]
        _check_options("imagefolder", options, _IMAGEFOLDER_OPTIONS)
        return _load_imagefolder(path, root if data_dir not in (None, "") else None, **options)
    key = _ALIASES.get(raw.lower().replace("-", "_"), raw.lower().replace("-", "_"))
    if key not in _LOADERS:
        hint = " (an image folder is named imagefolder:PATH)" if Path(raw).is_dir() else ""
        raise DatasetError(
            f"unknown dataset {name!r}{hint}; known: {', '.join(list_datasets())}"
        )
    loader, allowed = _LOADERS[key]
    _check_options(key, options, allowed)
    return loader(root, download, **options)


def stratified_split(
    labels: torch.Tensor, val_size: int = 5000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out ``val_size`` samples, each class in proportion to its frequency.

    Per-class quotas use the largest-remainder rule (ties go to the lower class label), so
    they sum to ``val_size`` exactly; within a class the held-out samples are drawn with a
    generator seeded by ``seed``. Returns ``(train_idx, val_idx)``: sorted, disjoint int64
    indices that together cover ``range(len(labels))``. Deterministic for a given input.
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex \
            or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    n = int(labels.numel())
    if isinstance(val_size, bool) or not hasattr(val_size, "__index__"):
        raise ValueError(f"val_size must be an integer count of samples, got {val_size!r}")
    val_size = int(val_size)
    if not 0 <= val_size <= n:
        raise ValueError(f"val_size={val_size} must be between 0 and the number of samples ({n})")
    labels = labels.detach().to("cpu", torch.int64)
    classes, counts = torch.unique(labels, sorted=True, return_counts=True)
    counts_l = [int(c) for c in counts]
    quota = [val_size * c // n for c in counts_l] if n else []
    remainder = [val_size * c % n for c in counts_l] if n else []
    missing = val_size - sum(quota)
    for i in sorted(range(len(counts_l)), key=lambda i: (-remainder[i], i))[:missing]:
        quota[i] += 1
    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    for cls, q in zip(classes.tolist(), quota, strict=True):
        members = torch.nonzero(labels == cls).squeeze(1)
        perm = torch.randperm(members.numel(), generator=gen)
        picked.append(members[perm[:q]])
    is_val = torch.zeros(n, dtype=torch.bool)
    if picked:
        is_val[torch.cat(picked)] = True
    val_idx = torch.nonzero(is_val).squeeze(1)
    train_idx = torch.nonzero(~is_val).squeeze(1)
    return train_idx, val_idx


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of (N, C, H, W) images, on their own scale.

    For uint8 (0-255) the sums come exactly from per-channel 256-bin histograms (one float
    division at the end); other dtypes accumulate in float64, chunk by chunk.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("channel_stats expects a tensor of shape (N, C, H, W), got "
                         f"{getattr(images, 'shape', type(images))}")
    n, c, h, w = images.shape
    count = n * h * w
    if count == 0:
        raise ValueError("channel_stats needs at least one pixel")
    images = images.detach().cpu()
    means, stds = [], []
    if images.dtype == torch.uint8:
        # exact: a 256-bin histogram per channel gives integer sums of x and x^2
        values = torch.arange(256, dtype=torch.int64)
        for ch in range(c):
            hist = torch.bincount(images[:, ch].reshape(-1), minlength=256)
            s1 = int((hist * values).sum())
            s2 = int((hist * values * values).sum())
            means.append(s1 / count)
            stds.append(math.sqrt(max((count * s2 - s1 * s1) / (count * count), 0.0)))
        return tuple(means), tuple(stds)
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    step = max(1, (1 << 22) // max(1, c * h * w))
    for i in range(0, n, step):
        x = images[i : i + step].to(torch.float64)
        s1 += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
    for a, b in zip(s1.tolist(), s2.tolist(), strict=True):
        means.append(a / count)
        stds.append(math.sqrt(max(b / count - (a / count) ** 2, 0.0)))
    return tuple(means), tuple(stds)


def pixel_mean(images: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean image (C, H, W), float64, of (N, C, H, W) images on their own scale.

    He et al. 2015 (Sec. 4.2) subtract "the per-pixel mean"; for uint8 the sum over images is
    exact (int64), so the mean is the exact rational value rounded once to float64.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("pixel_mean expects a tensor of shape (N, C, H, W), got "
                         f"{getattr(images, 'shape', type(images))}")
    if images.shape[0] == 0:
        raise ValueError("pixel_mean needs at least one image")
    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        total = torch.zeros(images.shape[1:], dtype=torch.int64)
        for i in range(0, images.shape[0], 4096):
            total += images[i : i + 4096].to(torch.int64).sum(0)
        return total.to(torch.float64) / images.shape[0]
    return images.to(torch.float64).mean(0)


# ---------------------------------------------------------------------------------------------
# Shared helpers: options, checks, checksum, cache
# ---------------------------------------------------------------------------------------------


def _check_options(dataset: str, options: dict[str, Any], allowed: frozenset[str]) -> None:
    bad = sorted(set(options) - allowed)
    if bad:
        raise DatasetError(
            f"option{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))} not valid for "
            f"dataset {dataset!r}; valid options: {', '.join(sorted(allowed)) or 'none'}"
        )


def _check_split(images: torch.Tensor, labels: torch.Tensor, num_classes: int, src: str) -> None:
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{src}: {images.shape[0]} images but {labels.shape[0]} labels; "
                           "the files are corrupt or do not belong together")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DatasetError(f"{src}: labels span {int(labels.min())}..{int(labels.max())}, "
                           f"outside 0..{num_classes - 1} ({num_classes} classes)")


def _sha256(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


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
    return rel, st.st_size, st.st_mtime_ns


def _source_key(entries: Sequence[tuple[str, int, int]], extra: str = "") -> str:
    """Fingerprint of source files: count, total size, and every (name, size, mtime)."""
    h = hashlib.sha256(extra.encode())
    for rel, size, mtime in entries:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return f"{len(entries)}:{sum(e[1] for e in entries)}:{h.hexdigest()}"


_SPLIT_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
_DIGEST_KEY = "content_sha256"


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


def _to_dataset(name: str, label: str, payload: dict[str, Any]) -> Dataset:
    return Dataset(
        name=name,
        label=label,
        train=ImageSet(payload["train_images"], payload["train_labels"]),
        test=ImageSet(payload["test_images"], payload["test_labels"]),
        classes=list(payload["classes"]),
        checksum=payload["sha256"][:16],
    )


def _ways_out(extra: str = "") -> str:
    return (
        "Ways out: pass --data-dir DIR (or set the environment variable "
        f"{ENV_DATA_DIR}=DIR) pointing at a copy of the data, or use dataset=synthetic for an "
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


def _cifar_hint(root: Path) -> str:
    return (" For CIFAR-10 an ImageFolder copy also works: dataset=imagefolder:PATH with "
            "PATH/{train,test}/<class>/*.jpg." + _nearby_hint(root, "cifar"))


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickle batches)
# ---------------------------------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only builds dicts, lists, strings, numbers and numpy arrays."""

    _ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the pickle")
        candidates = [module]
        if module.startswith("numpy._core"):
            candidates.append("numpy.core" + module[len("numpy._core"):])
        elif module.startswith("numpy.core"):
            candidates.insert(0, "numpy._core" + module[len("numpy.core"):])
        for mod in candidates:
            try:
                return super().find_class(mod, name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot import {module}.{name}")


def _read_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e}") from e
    except Exception as e:  # noqa: BLE001 - EOFError, UnpicklingError, ValueError, ...
        raise DatasetError(
            f"{path} is not a readable CIFAR pickle batch (truncated or corrupt: "
            f"{type(e).__name__}: {e}); delete {path.parent} and download again, or point "
            "--data-dir at a good copy"
        ) from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_batch(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    d = _read_pickle(path)
    for k in ("data", label_key):
        if k not in d:
            raise DatasetError(f"{path}: no {k!r} entry (keys: {', '.join(map(str, d))})")
    data = d["data"]
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(data, dtype=np.uint8)
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.size % 3072 or (data.ndim == 2 and data.shape[1] != 3072):
        raise DatasetError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 "
                           "(N, 3072) rows of 32x32 RGB")
    n = data.size // 3072
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(n, 3, 32, 32).copy())
    try:
        labels_np = np.asarray(d[label_key])
        if labels_np.dtype.kind not in "iu" or labels_np.ndim != 1:
            raise ValueError(f"{labels_np.dtype} {labels_np.shape}")
    except ValueError as e:
        raise DatasetError(f"{path}: {label_key!r} is not a list of integers ({e})") from e
    labels = torch.from_numpy(labels_np.astype(np.int64))
    if labels.shape[0] != n:
        raise DatasetError(f"{path}: {n} images but {labels.shape[0]} labels (truncated or "
                           "corrupt batch)")
    return images, labels


def _find_cifar(root: Path, folder: str, probe: str) -> Path | None:
    for d in (root / folder, root):
        if (d / probe).is_file():
            return d
    return None


def _load_cifar(variant: str, root: Path, download: bool, **opts: Any) -> Dataset:
    if variant == "cifar10":
        folder, train_files, test_file, meta_file = (
            "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
            "batches.meta")
        label_key, names_key, label, cls = "labels", "label_names", "CIFAR-10", "CIFAR10"
    else:
        folder, train_files, test_file, meta_file = ("cifar-100-python", ["train"], "test",
                                                     "meta")
        label_key, names_key, label, cls = "fine_labels", "fine_label_names", "CIFAR-100", \
            "CIFAR100"
    what = f"{label} ({folder}/)"
    hint = _cifar_hint(root) if variant == "cifar10" else ""
    base = _find_cifar(root, folder, meta_file)
    if base is None:
        if not (root / folder).exists() and download:
            def fetch() -> None:
                import torchvision  # imported only to download: it is slow to import

                getattr(torchvision.datasets, cls)(root=str(root), train=False, download=True)

            _download(what, root, fetch, hint)
            base = _find_cifar(root, folder, meta_file)
        if base is None:
            if download:
                raise DatasetError(f"{what}: {root / folder} exists but lacks {meta_file}; "
                                   f"delete it to download again. " + _ways_out(hint))
            raise _missing(what, str(root / folder / meta_file), hint)
    files = [base / f for f in (*train_files, test_file, meta_file)]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise DatasetError(f"{what}: {base} lacks {', '.join(absent)}; delete the folder to "
                           f"download again, or " + _ways_out(hint))

    def build() -> dict[str, Any]:
        meta = _read_pickle(base / meta_file)
        classes = meta.get(names_key)
        if not isinstance(classes, list) or not classes:
            raise DatasetError(f"{base / meta_file}: no {names_key!r} list of class names")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in classes]
        parts = [_cifar_batch(base / f, label_key) for f in train_files]
        tr_x = torch.cat([p[0] for p in parts])
        tr_y = torch.cat([p[1] for p in parts])
        te_x, te_y = _cifar_batch(base / test_file, label_key)
        _check_split(tr_x, tr_y, len(classes), f"{base} (train batches)")
        _check_split(te_x, te_y, len(classes), str(base / test_file))
        return {"train_images": tr_x, "train_labels": tr_y, "test_images": te_x,
                "test_labels": te_y, "classes": classes}

    cache = _cache_path(root, variant) if opts.get("cache", True) else None
    key = _source_key([_file_entry(f, base) for f in files], variant)
    payload = _cached_load(cache, key, build)
    return _to_dataset(variant, opts.get("label", label), payload)


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX files)
# ---------------------------------------------------------------------------------------------

_IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte", 3),
    "train_labels": ("train-labels-idx1-ubyte", 1),
    "test_images": ("t10k-images-idx3-ubyte", 3),
    "test_labels": ("t10k-labels-idx1-ubyte", 1),
}


def _read_idx(path: Path, ndim: int) -> torch.Tensor:
    """Parse an IDX file (optionally gzip-compressed) of unsigned bytes."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"cannot read {path} ({type(e).__name__}: {e}); the file is "
                           "truncated or corrupt: delete it and download again") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path} is not an IDX file (magic {raw[:4].hex() or 'missing'}, "
                           "expected 0000 08 0N)")
    if raw[2] != 0x08:
        raise DatasetError(f"{path}: IDX element type 0x{raw[2]:02x} is not supported "
                           "(expected 0x08, unsigned byte)")
    if raw[3] != ndim:
        raise DatasetError(f"{path}: IDX file has {raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise DatasetError(f"{path}: IDX header says shape {tuple(dims)} ({expected} bytes) but "
                           f"the file holds {len(raw)} bytes; it is truncated or corrupt")
    if math.prod(dims) == 0:
        return torch.empty(dims, dtype=torch.uint8)
    return torch.frombuffer(bytearray(memoryview(raw)[header:]), dtype=torch.uint8).reshape(dims)


def _find_idx(root: Path, cls_name: str) -> tuple[dict[str, Path], list[Path]]:
    """IDX files found (preferring uncompressed), and the folders searched."""
    searched = [root / cls_name / "raw", root / "raw", root]
    best: dict[str, Path] = {}
    for d in searched:
        found = {}
        for key, (base, _) in _IDX_FILES.items():
            for fname in (base, base + ".gz"):
                if (d / fname).is_file():
                    found[key] = d / fname
                    break
        if len(found) == len(_IDX_FILES):
            return found, searched
        if len(found) > len(best):
            best = found
    return best, searched


_MNIST_CLASSES = {  # the class names torchvision's MNIST / FashionMNIST use
    "mnist": ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six",
              "7 - seven", "8 - eight", "9 - nine"],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
}


def _load_mnist(variant: str, root: Path, download: bool, **opts: Any) -> Dataset:
    cls_name, label = {"mnist": ("MNIST", "MNIST"),
                       "fashion_mnist": ("FashionMNIST", "Fashion-MNIST")}[variant]
    what = f"{label} (IDX files in {cls_name}/raw/)"
    hint = _nearby_hint(root, cls_name.lower())
    found, searched = _find_idx(root, cls_name)
    if len(found) < len(_IDX_FILES):
        if download:
            def fetch() -> None:
                import torchvision  # imported only to download: it is slow to import

                getattr(torchvision.datasets, cls_name)(root=str(root), train=False,
                                                        download=True)

            _download(what, root, fetch, hint)
            found, searched = _find_idx(root, cls_name)
        if len(found) < len(_IDX_FILES):
            missing = [b for k, (b, _) in _IDX_FILES.items() if k not in found]
            if download:
                raise DatasetError(f"{what}: still missing {', '.join(missing)} (.gz or not) "
                                   f"in {searched[0]} after the download. " + _ways_out(hint))
            raise _missing(what, f"{', '.join(missing)}[.gz] in "
                                 f"{' or '.join(map(str, searched))}", hint)
    files = [found[k] for k in _SPLIT_KEYS]
    classes = list(_MNIST_CLASSES[variant])

    def build() -> dict[str, Any]:
        payload: dict[str, Any] = {"classes": classes}
        for key in _SPLIT_KEYS:
            t = _read_idx(found[key], _IDX_FILES[key][1])
            payload[key] = t.unsqueeze(1).contiguous() if t.ndim == 3 else t.to(torch.int64)
        for split in ("train", "test"):
            x, y = payload[f"{split}_images"], payload[f"{split}_labels"]
            _check_split(x, y, len(classes),
                         f"{found[f'{split}_images']} + {found[f'{split}_labels'].name}")
        return payload

    cache = _cache_path(root, variant) if opts.get("cache", True) else None
    key = _source_key([_file_entry(f, root) for f in files], variant)
    payload = _cached_load(cache, key, build)
    return _to_dataset(variant, opts.get("label", label), payload)


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------

_IMAGEFOLDER_OPTIONS = frozenset({"label", "cache", "mode"})


_DIGITS = re.compile(r"([0-9]+)")


def _natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``2.jpg`` < ``10.jpg`` < ``b1.jpg``."""
    parts = _DIGITS.split(name)
    return tuple((1, p.lower()) if i % 2 == 0 else (0, int(p)) for i, p in enumerate(parts)), name


def _list_images(folder: Path, prefix: str) -> list[tuple[str, tuple[str, int, int]]]:
    """Image files of ``folder`` in numeric-aware name order, with (relative name, size, mtime)."""
    found = []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith(".") or os.path.splitext(e.name)[1].lower() \
                    not in _IMAGE_EXTENSIONS or not e.is_file():
                continue
            st = e.stat()
            found.append((_natural_key(e.name), e.path,
                          (f"{prefix}/{e.name}", st.st_size, st.st_mtime_ns)))
    found.sort(key=lambda t: t[0])
    return [(p, entry) for _, p, entry in found]


def _decode_files(
    files: Sequence[str], mode: str, shape: tuple[int, ...] | None, ref: str | None
) -> tuple[torch.Tensor, tuple[int, ...] | None, str | None]:
    """Decode ``files`` into one uint8 (N, C, H, W) tensor; all must have ``shape``."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    read_mode = {"unchanged": ImageReadMode.UNCHANGED, "rgb": ImageReadMode.RGB,
                 "gray": ImageReadMode.GRAY}[mode]

    def decode_one(path: str, data: torch.Tensor, jpeg: bool) -> torch.Tensor:
        try:
            if jpeg:
                img = decode_jpeg(data, mode=read_mode)
            else:
                img = decode_image(data, mode=read_mode)
        except (RuntimeError, ValueError) as e:
            raise DatasetError(f"cannot decode image {path}: {e}".strip()) from e
        if img.dtype != torch.uint8:
            raise DatasetError(f"{path}: decodes to {img.dtype}, only 8-bit images are supported")
        return img

    def read(path: str) -> tuple[torch.Tensor, bool]:
        try:
            with open(path, "rb") as f:
                raw = bytearray(f.read())
        except OSError as e:
            raise DatasetError(f"cannot read image {path}: {e}") from e
        if not raw:
            raise DatasetError(f"cannot decode image {path}: the file is empty")
        return torch.frombuffer(raw, dtype=torch.uint8), raw[:3] == b"\xff\xd8\xff"

    out: torch.Tensor | None = None
    with warnings.catch_warnings():
        # torchvision >= 0.29 marks its decoders deprecated (in favour of torchcodec)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for start in range(0, len(files), _DECODE_CHUNK):
            chunk = files[start : start + _DECODE_CHUNK]
            datas, is_jpeg = zip(*(read(p) for p in chunk), strict=True)
            imgs: list[torch.Tensor | None] = [None] * len(chunk)
            jpeg_idx = [i for i, j in enumerate(is_jpeg) if j]
            if len(jpeg_idx) > 1:  # one call per chunk (batched where torchvision can)
                try:
                    decoded = decode_jpeg([datas[i] for i in jpeg_idx], mode=read_mode)
                    for i, img in zip(jpeg_idx, decoded, strict=True):
                        imgs[i] = img
                except (RuntimeError, ValueError):
                    pass  # decode one by one below to name the bad file
            for i, p in enumerate(chunk):
                img = imgs[i]
                if img is None or img.dtype != torch.uint8:
                    img = decode_one(p, datas[i], is_jpeg[i])
                if shape is None:
                    shape, ref = tuple(img.shape), p
                if tuple(img.shape) != shape:
                    raise DatasetError(
                        f"{p} decodes to shape {tuple(img.shape)} (C, H, W) but {ref} is {shape}: "
                        "all images must share one shape (resize them, or pass mode='rgb' or "
                        "mode='gray' to fix the channel count)")
                if out is None:
                    out = torch.empty((len(files), *shape), dtype=torch.uint8)
                out[start + i] = img
    if out is None:
        out = torch.empty((0, *(shape or (0, 0, 0))), dtype=torch.uint8)
    return out, shape, ref


def _imagefolder_label(folder: str) -> str:
    low = folder.lower()
    squashed = low.replace("-", "").replace("_", "")
    if "cifar10" in squashed and "cifar100" not in squashed and "jpeg" in low:
        q = re.search(r"q(\d+)", low)
        return f"CIFAR-10 (JPEG q{q.group(1) if q else '75'} copy)"
    return f"ImageFolder ({folder})"


def _load_imagefolder(path: str, data_dir: Path | None, **opts: Any) -> Dataset:
    if not path.strip():
        raise DatasetError("imagefolder needs a path: dataset=imagefolder:PATH with "
                           "PATH/train/<class>/*.jpg and PATH/test/<class>/*.jpg")
    root = Path(path.strip()).expanduser()
    if not root.is_absolute() and not root.is_dir() and data_dir is not None \
            and (data_dir / root).is_dir():
        root = data_dir / root
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist; expected PATH/train/<class>/"
                           "*.jpg and PATH/test/<class>/*.jpg (e.g. tar -xJf "
                           "cifar10-jpeg-q75.tar.xz -C DIR gives DIR/cifar10-jpeg-q75)")
    root = root.resolve()
    mode = str(opts.get("mode", "unchanged")).lower()
    if mode not in ("unchanged", "rgb", "gray"):
        raise DatasetError(f"imagefolder option mode={mode!r} must be 'unchanged', 'rgb' or "
                           "'gray'")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DatasetError(f"image folder {root} has no {split}/ folder; expected "
                               f"{root}/{split}/<class>/*.jpg")
    classes = sorted(d.name for d in (root / "train").iterdir()
                     if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root / 'train'} has no class folders; expected "
                           f"{root}/train/<class>/*.jpg")
    test_classes = sorted(d.name for d in (root / "test").iterdir()
                          if d.is_dir() and not d.name.startswith("."))
    extra = sorted(set(test_classes) - set(classes))
    if extra:
        raise DatasetError(f"{root / 'test'} has class folders absent from train/: "
                           f"{', '.join(extra)}")
    listing: dict[str, list[tuple[str, int]]] = {}
    entries = []
    for split in ("train", "test"):
        items = []
        for ci, c in enumerate(classes):
            folder = root / split / c
            files = _list_images(folder, f"{split}/{c}") if folder.is_dir() else []
            if split == "train" and not files:
                raise DatasetError(f"class folder {folder} has no .jpg/.jpeg/.png images")
            items += [(f, ci) for f, _ in files]
            entries += [e for _, e in files]
        listing[split] = items

    def build() -> dict[str, Any]:
        payload: dict[str, Any] = {"classes": classes}
        shape, ref = None, None
        for split in ("train", "test"):
            files = [f for f, _ in listing[split]]
            images, shape, ref = _decode_files(files, mode, shape, ref)
            payload[f"{split}_images"] = images
            payload[f"{split}_labels"] = torch.tensor([c for _, c in listing[split]],
                                                      dtype=torch.int64)
        return payload

    cache = _cache_path(root, f"imagefolder-{mode}") if opts.get("cache", True) else None
    payload = _cached_load(cache, _source_key(entries, f"imagefolder:{mode}"), build)
    return _to_dataset(f"imagefolder:{root}", opts.get("label", _imagefolder_label(root.name)),
                       payload)


# ---------------------------------------------------------------------------------------------
# Synthetic data (offline smoke runs)
# ---------------------------------------------------------------------------------------------

_SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "n_train": 512, "n_test": 256, "num_classes": 10, "image_size": 32, "channels": 3,
    "noise": 1.0, "seed": 0,
}


def _derived_generator(seed: int, stream: int) -> torch.Generator:
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9) % (1 << 63)
    return torch.Generator().manual_seed(mixed)


def _load_synthetic(root: Path, download: bool, **opts: Any) -> Dataset:
    """Class templates (random low-frequency patterns) + per-sample shift, contrast and noise.

    Pixel = 128 + 40 * (contrast * shifted template + noise * N(0, 1)), rounded and clamped to
    uint8, where each template has zero mean and unit std. Train and test draw from separate
    generator streams, so the test set does not depend on ``n_train``.
    """
    import torch.nn.functional as F

    cfg = {**_SYNTHETIC_DEFAULTS, **opts}
    label = cfg.pop("label", "synthetic (smoke)")
    ints = ("n_train", "n_test", "num_classes", "image_size", "channels", "seed")
    for k in ints:
        v = cfg[k]
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            raise DatasetError(f"synthetic option {k}={v!r} must be an integer")
        cfg[k] = int(v)
    for k, lo in (("n_train", 1), ("n_test", 1), ("num_classes", 2), ("image_size", 4),
                  ("channels", 1)):
        if cfg[k] < lo:
            raise DatasetError(f"synthetic option {k}={cfg[k]} must be at least {lo}")
    if not isinstance(cfg["noise"], (int, float)) or isinstance(cfg["noise"], bool) \
            or not 0 <= cfg["noise"] < math.inf:
        raise DatasetError(f"synthetic option noise={cfg['noise']!r} must be a number >= 0")
    k, size, c, seed = cfg["num_classes"], cfg["image_size"], cfg["channels"], cfg["seed"]
    noise = float(cfg["noise"])
    shift = max(1, size // 16)
    big = size + 2 * shift
    grid = max(2, size // 8)
    gen = _derived_generator(seed, 0)
    templates = torch.randn(k, c, grid, grid, generator=gen, dtype=torch.float64)
    templates = F.interpolate(templates, size=(big, big), mode="bilinear", align_corners=False)
    flat = templates.reshape(k, -1)
    flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-8)
    templates = flat.reshape(k, c, big, big)

    def sample(n: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = _derived_generator(seed, stream)
        labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
        offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=g)
        contrast = 1.0 + 0.25 * torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
        x = torch.empty(n, c, size, size, dtype=torch.float64)
        for dy in range(2 * shift + 1):
            for dx in range(2 * shift + 1):
                sel = torch.nonzero((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).squeeze(1)
                if sel.numel():
                    x[sel] = templates[labels[sel], :, dy : dy + size, dx : dx + size]
        x = x * contrast + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)
        images = (128.0 + 40.0 * x).round().clamp(0, 255).to(torch.uint8).contiguous()
        return images, labels.to(torch.int64)

    tr_x, tr_y = sample(cfg["n_train"], 1)
    te_x, te_y = sample(cfg["n_test"], 2)
    payload = {"train_images": tr_x, "train_labels": tr_y, "test_images": te_x,
               "test_labels": te_y, "classes": [f"class_{i}" for i in range(k)]}
    payload["sha256"] = _sha256(tr_x, tr_y, te_x, te_y)
    return _to_dataset("synthetic", label, payload)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

_FILE_OPTIONS = frozenset({"label", "cache"})

_LOADERS: dict[str, tuple[Callable[..., Dataset], frozenset[str]]] = {
    "cifar10": (lambda r, d, **o: _load_cifar("cifar10", r, d, **o), _FILE_OPTIONS),
    "cifar100": (lambda r, d, **o: _load_cifar("cifar100", r, d, **o), _FILE_OPTIONS),
    "mnist": (lambda r, d, **o: _load_mnist("mnist", r, d, **o), _FILE_OPTIONS),
    "fashion_mnist": (lambda r, d, **o: _load_mnist("fashion_mnist", r, d, **o), _FILE_OPTIONS),
    "synthetic": (_load_synthetic, frozenset(_SYNTHETIC_DEFAULTS) | {"label"}),
}

_ALIASES = {
    "cifar_10": "cifar10",
    "cifar_100": "cifar100",
    "fashionmnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
}


# ---------------------------------------------------------------------------------------------
# Data identity (for config hashes): what the data are, never where they lie
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _content_checksum(name: str, data_dir: str | None, options: tuple) -> str:
    return load_dataset(name, data_dir, **dict(options)).checksum


def data_identity(name: str, data_dir: str | Path | None = None,
                  options: dict | None = None) -> str:
    """``name`` for data sets whose name says what they are (``cifar10``, ``mnist``, ...);
    ``imagefolder:<content checksum>`` for an image folder, so the same images under another
    path or on another machine identify alike (loaded once per process; the cache makes it
    cheap)."""
    if isinstance(name, str) and name.strip().lower().startswith("imagefolder:"):
        opts = tuple(sorted((k, v) for k, v in (options or {}).items() if k != "label"))
        dd = None if data_dir in (None, "") else str(data_dir)
        return "imagefolder:" + _content_checksum(name.strip(), dd, opts)
    return name
