"""Writers of the real on-disk data formats, tiny: CIFAR pickle batches, IDX (MNIST) and
ImageFolder trees of PNGs. Shared by the data, preflight and shift tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_cifar10(root: Path, per_batch: int = 10, bytes_keys: bool = True) -> dict:
    """cifar-10-batches-py with 5 train batches and a test batch of ``per_batch`` images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    key = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    out = {"train_x": [], "train_y": [], "classes": names}
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {key("batch_label"): key(f"batch {fname}"), key("data"): x, key("labels"): y,
                 key("filenames"): [key(f"{i}.png") for i in range(per_batch)]}
        with open(folder / fname, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        if fname == "test_batch":
            out["test_x"], out["test_y"] = x, y
        else:
            out["train_x"].append(x)
            out["train_y"] += y
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({key("label_names"): [key(n) for n in names], key("num_vis"): 3072}, f,
                    protocol=2)
    out["train_x"] = np.concatenate(out["train_x"])
    return out


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = (b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
           + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    path.write_bytes(gzip.compress(raw) if gz else raw)


def write_mnist(root: Path, cls_name: str, gz: bool, n_train: int = 12, n_test: int = 7,
                size: int = 28) -> dict:
    rng = _rng(1)
    raw = root / cls_name / "raw"
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(raw / (name + (".gz" if gz else "")), arr, gz=gz)
    return arrays


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def write_imagefolder(root: Path, size: int = 8) -> dict:
    """train/{dog,cat}/{1,2,10}.png and test/{cat,dog}/{3,20}.png, random RGB."""
    rng = _rng(2)
    expected: dict = {"train": [], "test": []}
    for split, numbers in (("train", (10, 2, 1)), ("test", (20, 3))):
        for cls in ("dog", "cat"):  # written out of order on purpose
            for num in numbers:
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                write_png(root / split / cls / f"{num}.png", arr)
                expected[split].append((cls, num, arr))
    for split in expected:  # classes sorted, files by number
        expected[split].sort(key=lambda t: (t[0], t[1]))
    return expected


def as_nchw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).permute(2, 0, 1)
