"""CIFAR-10 / CIFAR-100: the python pickle batches, read with an unpickler that builds only
plain containers and numpy arrays."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import _cache_path, _cached_load, _file_entry, _source_key
from .dataset import Dataset, DatasetError, _check_split, _to_dataset
from .download import _download, _missing, _nearby_hint, _ways_out


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


def _cifar_hint(root: Path) -> str:
    return (" For CIFAR-10 an ImageFolder copy also works: dataset=imagefolder:PATH with "
            "PATH/{train,test}/<class>/*.jpg." + _nearby_hint(root, "cifar"))


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

