"""A config built on another: ``extends: config/lra.yaml`` at the top level takes that file's settings and
puts this config's over them, mapping by mapping (a list or a value replaces the base's). So a variant of a
long config (``config/lra_paper.yaml``: LRA's grid with the papers' mechanisms) says only what differs.

The path is relative to the folder attnbench or snakemake runs in, as every path in a config; where it is
not there, a shipped config of that name (``config/lra.yaml`` beside this package's default config) is used.
A base may extend another; a cycle is refused."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from attnbench.harness.config.schema import ConfigError
from attnbench.harness.core import shipped_files

KEY = "extends"


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merged key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _base_file(name: str) -> Path:
    path = Path(name)
    if path.exists():
        return path
    shipped = shipped_files.default_config().parent.parent / path
    if not path.is_absolute() and shipped.exists():
        return shipped
    raise ConfigError(f"'{KEY}': {name} does not exist (a path relative to {Path.cwd()}, the folder this runs in)")


def resolve_extends(config: dict[str, Any], read: Any, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """``config`` with its ``extends`` chain resolved (``read``: a file's YAML content, ``validate.read_yaml``);
    ``config`` itself when it extends nothing."""
    name = config.get(KEY)
    if name is None:
        return config
    if not isinstance(name, str):
        raise ConfigError(f"'{KEY}' is {name!r}; expected the path of a config file")
    path = _base_file(name)
    key = str(path.resolve())
    if key in seen:
        raise ConfigError(f"'{KEY}': {name} extends itself (through {' -> '.join(seen)})")
    base = read(path) or {}
    if not isinstance(base, dict):
        raise ConfigError(f"'{KEY}': config file {path} must hold a mapping at the top level")
    base = resolve_extends(base, read, (*seen, key))
    return merged(base, {k: v for k, v in config.items() if k != KEY})
