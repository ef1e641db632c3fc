"""Data set names and their options, the :func:`load_dataset` entry point, and the identity
of a data set in config hashes (:func:`data_identity`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convnets.names import IMAGEFOLDER, data_identity_of

from .cifar import _load_cifar
from .dataset import Dataset, DatasetError
from .imagefolder import _IMAGEFOLDER_OPTIONS, _load_imagefolder
from .mnist import _load_mnist
from .paths import default_data_dir
from .synthetic import _SYNTHETIC_DEFAULTS, _load_synthetic

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


def list_datasets() -> list[str]:
    """Names :func:`load_dataset` accepts (``imagefolder:PATH`` takes a folder path)."""
    return sorted(_LOADERS) + ["imagefolder:PATH"]


def _stripped_name(name: Any) -> str:
    """``name`` without surrounding white space; a DatasetError unless a non-empty string."""
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"dataset name must be a non-empty string, got {name!r}; known: "
                           f"{', '.join(list_datasets())}")
    return name.strip()


def _is_imagefolder(raw: str) -> bool:
    return raw.lower().startswith(IMAGEFOLDER)


def _loader_key(raw: str) -> str:
    """The :data:`_LOADERS` key a (stripped) name means: lower case, ``-`` as ``_``, aliases."""
    key = raw.lower().replace("-", "_")
    return _ALIASES.get(key, key)


def _check_options(dataset: str, options: dict[str, Any], allowed: frozenset[str]) -> None:
    bad = sorted(set(options) - allowed)
    if bad:
        raise DatasetError(
            f"option{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))} not valid for "
            f"dataset {dataset!r}; valid options: {', '.join(sorted(allowed)) or 'none'}"
        )


def check_dataset_name(name: Any, options: dict[str, Any]) -> str:
    """The name's one spelling (``CIFAR-10`` -> ``cifar10``); ``DatasetError`` for a name or
    option ``load_dataset`` would refuse, without reading any data (spec validation calls it
    before a run starts)."""
    raw = _stripped_name(name)
    options = {k: v for k, v in options.items() if v is not None}
    if _is_imagefolder(raw):
        if not raw.split(":", 1)[1].strip():
            raise DatasetError(f"dataset {name!r} names no folder; use imagefolder:PATH")
        _check_options("imagefolder", options, _IMAGEFOLDER_OPTIONS)
        return _canonical(raw)
    key = _loader_key(raw)
    if key not in _LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    _check_options(key, options, _LOADERS[key][1])
    return key


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = True,
    **options: Any,
) -> Dataset:
    """Load a data set by name; see the package docstring for names and on-disk layouts.

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
    raw = _stripped_name(name)
    root = Path(data_dir).expanduser() if data_dir not in (None, "") else default_data_dir()
    options = {k: v for k, v in options.items() if v is not None}
    if _is_imagefolder(raw):
        path = raw.split(":", 1)[1]
        _check_options("imagefolder", options, _IMAGEFOLDER_OPTIONS)
        return _load_imagefolder(path, root if data_dir not in (None, "") else None, **options)
    key = _loader_key(raw)
    if key not in _LOADERS:
        hint = " (an image folder is named imagefolder:PATH)" if Path(raw).is_dir() else ""
        raise DatasetError(
            f"unknown dataset {name!r}{hint}; known: {', '.join(list_datasets())}"
        )
    loader, allowed = _LOADERS[key]
    _check_options(key, options, allowed)
    return loader(root, download, **options)


# Data identity (for config hashes): what the data are, never where they lie


@functools.lru_cache(maxsize=32)
def _content_checksum(name: str, data_dir: str | None, options: tuple) -> str:
    return load_dataset(name, data_dir, **dict(options)).checksum


def _canonical(name: Any) -> str:
    """The one spelling of a data set's name (``CIFAR-10``, `` cifar10`` -> ``cifar10``;
    ``imagefolder:PATH`` keeps its path, stripped), so spellings never make two configs of one
    data set; ``DatasetError`` for a name no loader takes."""
    raw = _stripped_name(name)
    if _is_imagefolder(raw):
        return "imagefolder:" + raw.split(":", 1)[1].strip()
    key = _loader_key(raw)
    if key not in _LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return key


def data_identity(name: str, data_dir: str | Path | None = None,
                  options: dict | None = None) -> str:
    """``name`` for data sets whose name says what they are (``cifar10``, ``mnist``, ...);
    ``imagefolder:<content checksum>`` for an image folder, so the same images under another
    path or on another machine identify alike (loaded once per process; the cache makes it
    cheap)."""
    if isinstance(name, str) and _is_imagefolder(name.strip()):
        opts = tuple(sorted((k, v) for k, v in (options or {}).items() if k != "label"))
        dd = None if data_dir in (None, "") else str(data_dir)
        return data_identity_of(name, _content_checksum(name.strip(), dd, opts))
    return _canonical(name) if isinstance(name, str) and name.strip() else name
