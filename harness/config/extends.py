"""A config built on another: ``extends: config/lra.yaml`` at the top level takes that file's settings and
puts this config's over them, mapping by mapping (a list or a value replaces the base's). So a variant of a
long config (``config/lra_paper.yaml``: LRA's grid with the papers' mechanisms) says only what differs.

The path is relative to the folder attnbench or snakemake runs in, as every path in a config; where it is
not there, a shipped config of that name (``config/lra.yaml`` beside this package's default config) is used.
A base may extend another; a cycle is refused.

``extends: {config: config/lra.yaml, without_variants: [full, window]}`` also leaves those of the base's variants
out, wherever the base names them (``variants``, each task's ``per_variant``, ``distill.students``; a removed
``distill.teacher`` takes the ``distill`` section with it): runs the two configs would share are then run once."""
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


def without_variants(config: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """``config`` without the variants ``names``, wherever it names them (changed in place, and returned)."""
    variants, tasks, distill = config.get("variants"), config.get("tasks"), config.get("distill")
    for name in names:
        if isinstance(variants, dict):
            variants.pop(name, None)
        for section in tasks.values() if isinstance(tasks, dict) else ():
            if isinstance(section, dict) and isinstance(section.get("per_variant"), dict):
                section["per_variant"].pop(name, None)
        if isinstance(distill, dict):
            if distill.get("teacher", "full") == name:
                config.pop("distill")
                distill = None
            elif isinstance(distill.get("students"), dict):
                distill["students"].pop(name, None)
    return config


def _extends(value: object) -> tuple[str, list[str]]:
    """(the base config's path, the variants to leave out) of an ``extends`` value."""
    if isinstance(value, str):
        return value, []
    if isinstance(value, dict) and isinstance(value.get("config"), str) and set(value) <= {"config",
                                                                                             "without_variants"}:
        names = value.get("without_variants") or []
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return value["config"], names
    raise ConfigError(f"'{KEY}' is {value!r}; expected the path of a config file, or {{config: PATH, "
                      "without_variants: [NAME, ...]}")


def resolve_extends(config: dict[str, Any], read: Any, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """``config`` with its ``extends`` chain resolved (``read``: a file's YAML content, ``validate.read_yaml``);
    ``config`` itself when it extends nothing."""
    if config.get(KEY) is None:
        return config
    name, leave_out = _extends(config[KEY])
    path = _base_file(name)
    key = str(path.resolve())
    if key in seen:
        raise ConfigError(f"'{KEY}': {name} extends itself (through {' -> '.join(seen)})")
    base = read(path) or {}
    if not isinstance(base, dict):
        raise ConfigError(f"'{KEY}': config file {path} must hold a mapping at the top level")
    base = without_variants(copy.deepcopy(resolve_extends(base, read, (*seen, key))), leave_out)
    return merged(base, {k: v for k, v in config.items() if k != KEY})
