"""Strict reading of claim specs: a YAML loader that refuses duplicate keys and reads every
float spelling as a number, and type checks of the spec's own structure (the configs inside
are checked by ``convnets.train.resolve_config``).

Why a custom loader: PyYAML keeps the last of two equal keys without a word (a second
``resnet20:`` variant silently replaced the first), and it follows YAML 1.1, where ``5e-4`` and
``1.0e6`` (no sign in the exponent, or no dot) are strings, not numbers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


class SpecError(ValueError):
    """A spec is malformed; the message names the file and the key."""


#: the folder of the claim specs (``<name>.yaml``)
SPEC_DIR = Path(__file__).resolve().parent


def spec_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    path = SPEC_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(list_specs())
        raise SpecError(f"no experiment spec {name!r} (looked for {path}); known: {known}")
    return path


#: YAML files beside the specs that are not specs (the GPU shift queue)
NOT_SPECS = ("shifts",)


def list_specs() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml") if p.stem not in NOT_SPECS)


# YAML 1.2 core-schema floats: every spelling Python's float() reads, except inf/nan words
# (those stay YAML's `.inf` / `.nan`, which resolve_config rejects where a finite number is due)
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$")


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys and reads ``5e-4`` as a float."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise SpecError(f"duplicate key {key!r} at line {line} (first at line "
                                    f"{seen[key]}); YAML would keep only the last one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12,
                                   list("-+0123456789."))


def _int_resolvers_first() -> None:
    """An int such as ``64000`` also matches the float pattern above; PyYAML tries the
    resolvers of a first character in order, so ours (added last) must stay behind the int
    one. Checked once at import: the loader reads ``64000`` as an int."""
    if not isinstance(yaml.load("64000", Loader=StrictLoader), int):
        raise RuntimeError("StrictLoader resolves ints as floats; resolver order changed")


_int_resolvers_first()


def read_yaml(path, text: str) -> Any:
    try:
        return yaml.load(text, Loader=StrictLoader)
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None


def type_name(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a bool",
            type(None): "null"}.get(type(v), type(v).__name__)


def require_mapping(where: str, v: Any) -> dict:
    if not isinstance(v, dict):
        raise SpecError(f"{where}: expected a mapping (key: value lines), got {type_name(v)} "
                        f"{v!r:.80}")
    return v


def require_text(where: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise SpecError(f"{where}: expected a non-empty string, got {type_name(v)} {v!r:.80}")
    return v


def require_str_list(where: str, v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise SpecError(f"{where}: expected a list of names, got {type_name(v)} {v!r:.80}")
    return v


def check_keys(where: str, mapping: Any, allowed: dict) -> dict:
    require_mapping(where, mapping)
    for key in mapping:
        if key not in allowed:
            raise SpecError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}")
    return mapping


def check_groups(path: str, groups: Any) -> None:
    """``groups`` is a non-empty list of mappings with unique names, each with a mapping of
    variants that holds its baseline."""
    if not isinstance(groups, list) or not groups:
        raise SpecError(f"{path}: groups: expected a non-empty list of groups, got "
                        f"{type_name(groups)} {groups!r:.80}")
    names: dict[str, int] = {}
    for gi, group in enumerate(groups):
        where = f"{path}: groups[{gi}]"
        require_mapping(where, group)
        name = require_text(f"{where}.name", group.get("name"))
        if name in names:
            raise SpecError(f"{where}.name: {name!r} is also the name of groups[{names[name]}]; "
                            "group names must be unique (runs are keyed by group/variant)")
        names[name] = gi
        for key in ("model", "baseline"):
            if key in group and not isinstance(group[key], str):
                raise SpecError(f"{where}.{key}: expected a string, got {type_name(group[key])}")
        variants = group.get("variants")
        if not isinstance(variants, dict) or not variants:
            raise SpecError(f"{where}.variants: expected a non-empty mapping of variant name -> "
                            f"variant, got {type_name(variants)} {variants!r:.80}")
        for key in ("recipe", "profile_overrides"):
            if group.get(key) is not None:
                require_mapping(f"{where}.{key}", group[key])
        for pname, over in (group.get("profile_overrides") or {}).items():
            require_mapping(f"{where}.profile_overrides.{pname}", over)


def check_variant(vwhere: str, var: dict) -> None:
    for key in ("model", "note"):
        if key in var and not isinstance(var[key], str):
            raise SpecError(f"{vwhere}.{key}: expected a string, got {type_name(var[key])}")
    for key in ("options", "recipe"):
        if var.get(key) is not None:
            require_mapping(f"{vwhere}.{key}", var[key])
    paper = var.get("paper")
    if not (paper is None or paper == "fail"
            or (isinstance(paper, (int, float)) and not isinstance(paper, bool)
                and 0 <= paper <= 100)):
        raise SpecError(f"{vwhere}.paper: {paper!r} is not an error in % (0-100), 'fail' or null")
    if var.get("expect") not in (None, "higher", "lower"):
        raise SpecError(f"{vwhere}.expect: {var['expect']!r} is not higher or lower")


def check_seeds(where: str, seeds: Any) -> None:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise SpecError(f"{where}.seeds: must be a positive integer, got {seeds!r}")
