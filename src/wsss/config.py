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
from importlib import resources
from pathlib import Path
from typing import Any

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
