"""Model registry: every architecture is a named entry, built with `build_model`.

An ablation is a keyword option on one builder (``unit=``, ``shortcut=``, ``head=``), not a
new class; a registered name fixes the options that define it (``resnet110`` fixes
``depth=110``) and leaves the rest to the caller.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture."""

    name: str
    builder: Callable[..., nn.Module]
    #: options the name fixes (e.g. ``depth=110``); callers may not override them
    fixed: Mapping[str, Any]
    #: family, e.g. "cifar-resnet"; used to group the README table
    family: str
    #: (C, H, W) of the input the model is meant for (tests and `info` use it)
    input_size: tuple[int, int, int]
    #: paper and section the architecture follows
    citation: str
    description: str = ""
    #: number of classes the model is usually built with (tests use it)
    default_classes: int = 10
    #: heavy models are exercised in tests with a reduced input where the architecture allows
    tags: frozenset[str] = field(default_factory=frozenset)
    #: option -> the paper a non-default value of it follows (ResNet-110's ``unit`` and
    #: ``shortcut`` are the Identity Mappings ablations, not He et al. 2015)
    option_citations: Mapping[str, str] = field(default_factory=dict)

    def cite(self, options: Mapping[str, Any]) -> str:
        """The papers a model built with ``options`` follows: its own, then those of the
        options set to other values than the builder's defaults."""
        params = self.options()
        extra = [c for k, c in self.option_citations.items()
                 if k in options and k in params and options[k] != params[k].default]
        return "; ".join(dict.fromkeys([self.citation, *extra]))

    def options(self) -> dict[str, inspect.Parameter]:
        """Keyword options a caller may still set (the builder's, minus fixed ones)."""
        params = inspect.signature(self.builder).parameters
        named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return {
            k: p
            for k, p in params.items()
            if p.kind in named and k not in self.fixed and k != "num_classes"
        }


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    builder: Callable[..., nn.Module],
    *,
    family: str,
    input_size: tuple[int, int, int],
    citation: str,
    description: str = "",
    default_classes: int = 10,
    tags: frozenset[str] | set[str] = frozenset(),
    option_citations: Mapping[str, str] | None = None,
    **fixed: Any,
) -> ModelEntry:
    """Register ``name`` as ``builder(**fixed, **options)``."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    sig = inspect.signature(builder).parameters
    unknown = [k for k in fixed if k not in sig]
    if unknown:
        raise TypeError(f"register_model({name!r}): {builder.__name__} takes no option {unknown}")
    entry = ModelEntry(
        name=name,
        builder=builder,
        fixed=dict(fixed),
        family=family,
        input_size=tuple(input_size),
        citation=citation,
        description=description,
        default_classes=default_classes,
        tags=frozenset(tags),
        option_citations=dict(option_citations or {}),
    )
    _REGISTRY[name] = entry
    return entry


def list_models(family: str | None = None) -> list[str]:
    """Registered model names (optionally of one family), in registration order."""
    return [n for n, e in _REGISTRY.items() if family is None or e.family == family]


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name raises with the closest matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(_REGISTRY)}"
        ) from None


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming any option ``name`` does not take (or that it fixes)."""
    entry = get_entry(name)
    valid = entry.options()
    for key in options:
        if key in entry.fixed:
            raise ValueError(
                f"model {name!r} fixes {key}={entry.fixed[key]!r}; pick another registered "
                f"name instead of overriding it"
            )
        if key not in valid:
            close = difflib.get_close_matches(key, list(valid), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"model {name!r} has no option {key!r}{hint}; its options are: "
                f"{', '.join(valid) or 'none'}"
            )


def model_identity(name: str, options: Mapping[str, Any]) -> dict:
    """What the model ``name`` built with ``options`` is, however a config spelled it: its
    builder and every option that differs from the builder's default, those the name fixes
    included. ``resnet110`` with ``unit: original`` or ``shortcut: identity`` (both defaults)
    and ``resnet110`` alone are one network, and so are ``resnet110`` and ``cifar_resnet`` with
    ``depth: 110``: the config hash holds this, so one network is trained once."""
    entry = get_entry(name)
    params = inspect.signature(entry.builder).parameters
    empty = inspect.Parameter.empty

    def default(key: str, value: Any) -> bool:
        d = params[key].default if key in params else empty
        # True == 1 in Python; an option given as 1 where the default is True is not it
        return d is not empty and value == d and isinstance(value, bool) == isinstance(d, bool)

    given = {**entry.fixed, **options}
    builder = f"{entry.builder.__module__}.{getattr(entry.builder, '__qualname__', name)}"
    return {"builder": builder,
            "options": {k: v for k, v in sorted(given.items()) if not default(k, v)}}


def build_model(name: str, num_classes: int = 10, **options: Any) -> nn.Module:
    """Build the registered model ``name`` with ``num_classes`` outputs and ``options``.

    Unknown names and options raise an error that names them; invalid option values are
    rejected by the builders with a ``ValueError``.
    """
    entry = get_entry(name)
    check_options(name, options)
    return entry.builder(num_classes=num_classes, **entry.fixed, **options)


@functools.cache
def build_on_meta(name: str, options: str) -> nn.Module:
    """``build_model(name, **json.loads(options))`` on the meta device (shapes only, no
    weight initialised), once per (name, options JSON) in a process. Spec expansion builds
    each variant this way to reject a bad depth or option before anything runs, and MAC
    counting reads the same models: a build still takes 0.05-0.2 s (every init op goes
    through Python), and listings ask for the same models many times. The model is shared
    between callers: read it, never train or change it."""
    with torch.device("meta"):
        return build_model(name, **json.loads(options))
