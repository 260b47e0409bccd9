"""Run configs: plain nested dicts read from YAML, deep-merged over defaults,
overridable from the command line with ``--set a.b=value``.

Dicts rather than a class tree keep the YAML the user writes and the record in
``run.json`` identical; each stage validates its own section against its
dataclass (e.g. ``CamTrainConfig.from_dict``), which names unknown keys.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from wsss.io import WsssError


def merge_options(defaults: dict[str, Any], options: dict[str, Any], owner: str) -> dict[str, Any]:
    """A registered component's options over its defaults; an unknown key (a typo) is an error
    naming ``owner`` (e.g. "saliency source 'c2am'")."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise WsssError(f"{owner}: unknown option(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **options}


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WsssError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise WsssError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise WsssError(f"{path}: a config must be a mapping at the top level")
    return data


def builtin_config(name: str) -> dict:
    """A config shipped in ``wsss/configs/<name>.yaml`` (``demo``, ``tiny``)."""
    f = resources.files("wsss") / "configs" / f"{name}.yaml"
    if not f.is_file():
        known = sorted(p.name.removesuffix(".yaml") for p in (resources.files("wsss") / "configs").iterdir())
        raise WsssError(f"no built-in config {name!r}; known: {', '.join(known)}")
    return yaml.safe_load(f.read_text())


def apply_overrides(cfg: dict, assignments: list[str]) -> dict:
    """``["cam.train.epochs=3", "pseudo.saliency=[none,good]"]`` → updated copy."""
    cfg = copy.deepcopy(cfg)
    for a in assignments:
        if "=" not in a:
            raise WsssError(f"--set expects key=value, got {a!r}")
        key, raw = a.split("=", 1)
        node = cfg
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise WsssError(f"--set {key}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return cfg


def config_hash(cfg: Any) -> str:
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------- typed dataclass fields
def _describe_type(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in args)
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {_describe_type(args[0]).removeprefix('a ').removeprefix('an ')}s"
        inner = _describe_type(args[0]).removeprefix("a ").removeprefix("an ") if args else "value"
        return f"a list of {inner}s"
    if origin is dict or tp is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(matches, value) for ``value`` against annotation ``tp``; numeric strings (YAML reads
    ``1e-3`` as a string) become floats for float fields, nothing else is converted."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True, value
    if tp is type(None):
        return value is None, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, list | tuple):
            return False, value
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return False, value
            pairs = list(zip(value, args, strict=True))
        else:
            pairs = [(v, args[0] if args else Any) for v in value]
        out = []
        for v, a in pairs:
            ok, c = _coerce(v, a)
            if not ok:
                return False, value
            out.append(c)
        return True, type(value)(out)
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool | np.bool_), value
    if tp is int:
        return isinstance(value, int | np.integer) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return False, value
        ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
        return ok and math.isfinite(value), value
    if tp is str:
        return isinstance(value, str | os.PathLike), value
    return True, value  # other annotations are checked by the dataclass itself


def check_value(value: Any, annotation: Any, name: str) -> Any:
    """``value`` checked against a type annotation (see :func:`check_field_types`); a mismatch is
    a :class:`WsssError` "NAME must be <expected>, got <value>"."""
    ok, converted = _coerce(value, annotation)
    if not ok:
        raise WsssError(f"{name} must be {_describe_type(annotation)}, got {value!r}")
    return converted


def check_field_types(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    """Each value against its dataclass field's annotation (int, float — ints accepted —,
    bool, str, None-able, tuples/lists of numbers, dict), before the dataclass sees it:
    a wrong type is one :class:`WsssError` naming ``source``, the key and the expected type."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for key, value in values.items():
        if key in hints:
            out[key] = check_value(value, hints[key], f"{source}: {key}")
    return out
