"""Image folders: ``PATH/{train,test}/<class>/*.{jpg,jpeg,png}`` listed in numeric-aware order
and decoded with ``torchvision.io`` into one tensor per split."""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .cache import _cache_path, _cached_load, _source_key
from .dataset import Dataset, DatasetError, _to_dataset

# torchvision.io is imported where images are decoded: torchvision takes seconds to import, and
# a folder answered from its decoded cache never needs it.

_IMAGEFOLDER_OPTIONS = frozenset({"label", "cache", "mode"})
_IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
_DECODE_CHUNK = 1024

_DIGITS = re.compile(r"([0-9]+)")


def _natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``2.jpg`` < ``10.jpg`` < ``b1.jpg``."""
    parts = _DIGITS.split(name)
    return tuple((1, p.lower()) if i % 2 == 0 else (0, int(p)) for i, p in enumerate(parts)), name


def _list_images(folder: Path, prefix: str,
                 skipped: list[str]) -> list[tuple[str, tuple[str, int, int]]]:
    """Image files of ``folder`` in numeric-aware name order, with (relative name, size, ctime:
    the cache key, ``convnets.data.cache._source_key``);
    the other files (hidden ones aside) are appended to ``skipped``."""
    found = []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            if os.path.splitext(e.name)[1].lower() not in _IMAGE_EXTENSIONS or not e.is_file():
                skipped.append(f"{prefix}/{e.name}")
                continue
            st = e.stat()
            found.append((_natural_key(e.name), e.path,
                          (f"{prefix}/{e.name}", st.st_size, st.st_ctime_ns)))
    found.sort(key=lambda t: t[0])
    return [(p, entry) for _, p, entry in found]


def _read_image(path: str) -> tuple[torch.Tensor, bool]:
    """The bytes of an image file as a uint8 tensor, and whether they start like a JPEG."""
    try:
        with open(path, "rb") as f:
            raw = bytearray(f.read())
    except OSError as e:
        raise DatasetError(f"cannot read image {path}: {e}") from e
    if not raw:
        raise DatasetError(f"cannot decode image {path}: the file is empty")
    return torch.frombuffer(raw, dtype=torch.uint8), raw[:3] == b"\xff\xd8\xff"


def _decode_one(path: str, data: torch.Tensor, jpeg: bool, read_mode: Any) -> torch.Tensor:
    """One image decoded on its own; a DatasetError names the file that fails."""
    from torchvision.io import decode_image, decode_jpeg

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


def _chunk_images(chunk: Sequence[str], read_mode: Any) -> Iterator[torch.Tensor]:
    """The images of ``chunk`` in order, decoded lazily: the JPEGs in one batched call where
    torchvision can, the rest (and every image of a batch that fails) one by one."""
    from torchvision.io import decode_jpeg

    datas, is_jpeg = zip(*(_read_image(p) for p in chunk), strict=True)
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
            img = _decode_one(p, datas[i], is_jpeg[i], read_mode)
        yield img


def _decode_files(
    files: Sequence[str], mode: str, shape: tuple[int, ...] | None, ref: str | None
) -> tuple[torch.Tensor, tuple[int, ...] | None, str | None]:
    """Decode ``files`` into one uint8 (N, C, H, W) tensor; all must have ``shape``."""
    from torchvision.io import ImageReadMode

    read_mode = {"unchanged": ImageReadMode.UNCHANGED, "rgb": ImageReadMode.RGB,
                 "gray": ImageReadMode.GRAY}[mode]
    out: torch.Tensor | None = None
    with warnings.catch_warnings():
        # torchvision >= 0.29 marks its decoders deprecated (in favour of torchcodec)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for start in range(0, len(files), _DECODE_CHUNK):
            chunk = files[start : start + _DECODE_CHUNK]
            for i, (p, img) in enumerate(zip(chunk, _chunk_images(chunk, read_mode),
                                             strict=True)):
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


def _folder_root(path: str, data_dir: Path | None) -> Path:
    """The image folder ``path`` names, resolved; a relative one may lie under ``data_dir``."""
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
    return root.resolve()


def _subfolders(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _class_names(root: Path) -> list[str]:
    """Class folder names of ``root/train`` (sorted); ``root/test`` may hold no others."""
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DatasetError(f"image folder {root} has no {split}/ folder; expected "
                               f"{root}/{split}/<class>/*.jpg")
    classes = _subfolders(root / "train")
    if not classes:
        raise DatasetError(f"{root / 'train'} has no class folders; expected "
                           f"{root}/train/<class>/*.jpg")
    if len(classes) < 2:  # one class: every prediction is right, a 0% error that means nothing
        raise DatasetError(f"{root / 'train'} has {len(classes)} class folder ({classes[0]}); a "
                           "classifier needs at least 2 classes")
    extra = sorted(set(_subfolders(root / "test")) - set(classes))
    if extra:
        raise DatasetError(f"{root / 'test'} has class folders absent from train/: "
                           f"{', '.join(extra)}")
    return classes


def _split_listing(
    root: Path, classes: list[str]
) -> tuple[dict[str, list[tuple[str, int]]], list[tuple[str, int, int]]]:
    """Per split, (file, class index) in class then file order; and every file's cache entry
    (relative name, size, ctime). Every class needs images in both splits: a test split
    without one would evaluate on the other classes only, and its error would not be the
    error on the data set. Files that are not images are skipped and counted on stderr."""
    listing: dict[str, list[tuple[str, int]]] = {}
    entries, skipped = [], []
    for split in ("train", "test"):
        items = []
        for ci, c in enumerate(classes):
            folder = root / split / c
            files = _list_images(folder, f"{split}/{c}", skipped) if folder.is_dir() else []
            if not files:
                raise DatasetError(f"class folder {folder} has no .jpg/.jpeg/.png images "
                                   f"(every class of train/ needs images in {split}/ too)")
            items += [(f, ci) for f, _ in files]
            entries += [e for _, e in files]
        listing[split] = items
    if skipped:
        print(f"note: image folder {root}: {len(skipped)} file(s) that are not .jpg/.jpeg/.png "
              f"images skipped (first: {skipped[0]})", file=sys.stderr, flush=True)
    return listing, entries


def _load_imagefolder(path: str, data_dir: Path | None, **opts: Any) -> Dataset:
    root = _folder_root(path, data_dir)
    mode = str(opts.get("mode", "unchanged")).lower()
    if mode not in ("unchanged", "rgb", "gray"):
        raise DatasetError(f"imagefolder option mode={mode!r} must be 'unchanged', 'rgb' or "
                           "'gray'")
    classes = _class_names(root)
    listing, entries = _split_listing(root, classes)

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
