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
place is read-only. A cache is keyed on the source files (names, sizes, inode change times) and rebuilt
when they change; its tensors are verified against the stored shapes and sha256 on every load.

Modules: :mod:`.dataset` (containers, errors, checksum), :mod:`.paths` (default data folder),
:mod:`.cache` (decoded-array cache), :mod:`.download` (torchvision downloads and their error
messages), one module per source (:mod:`.cifar`, :mod:`.mnist`, :mod:`.imagefolder`,
:mod:`.synthetic`), :mod:`.registry` (names, options, :func:`load_dataset`, data identity),
:mod:`.split` (train/validation split) and :mod:`.stats` (normalisation statistics).
"""

from __future__ import annotations

# Besides __all__, the package answers to data_identity (config hashes) and the two folder
# names.
from .cache import CACHE_DIRNAME  # noqa: F401
from .dataset import Dataset, DatasetError, ImageSet
from .paths import ENV_DATA_DIR, default_data_dir  # noqa: F401
from .registry import check_dataset_name, data_identity, list_datasets, load_dataset  # noqa: F401
from .split import stratified_split
from .stats import channel_stats, pixel_mean

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
