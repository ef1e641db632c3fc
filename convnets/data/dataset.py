"""Containers of a loaded data set (:class:`ImageSet`, :class:`Dataset`), the error every loader
raises (:class:`DatasetError`), and the checks and checksum shared by all sources."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch


class DatasetError(RuntimeError):
    """A data set cannot be found, downloaded, read or trusted; the message says what to do."""


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


def _check_split(images: torch.Tensor, labels: torch.Tensor, num_classes: int, src: str) -> None:
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{src}: {images.shape[0]} images but {labels.shape[0]} labels; "
                           "the files are corrupt or do not belong together")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DatasetError(f"{src}: labels span {int(labels.min())}..{int(labels.max())}, "
                           f"outside 0..{num_classes - 1} ({num_classes} classes)")


def _sha256(*tensors: torch.Tensor) -> str:
    """Hex sha256 over the raw bytes of ``tensors`` in order (the data set checksum)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _to_dataset(name: str, label: str, payload: dict[str, Any]) -> Dataset:
    return Dataset(
        name=name,
        label=label,
        train=ImageSet(payload["train_images"], payload["train_labels"]),
        test=ImageSet(payload["test_images"], payload["test_labels"]),
        classes=list(payload["classes"]),
        checksum=payload["sha256"][:16],
    )
