"""MNIST / Fashion-MNIST: the IDX files (plain or ``.gz``) parsed here, downloaded by
torchvision only when absent."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import torch

from .cache import _SPLIT_KEYS, _cache_path, _cached_load, _file_entry, _source_key
from .dataset import Dataset, DatasetError, _check_split, _to_dataset
from .download import _download, _missing, _nearby_hint, _ways_out

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
