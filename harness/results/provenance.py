"""Where a variant from outside this repository came from: a run's record (``variant_origin``), the runs'
table (``origin_columns``) and ``attnbench compare``'s JSON (``variant_origins``) keep it, so that numbers
of out-of-tree code can be told apart when that code changes.

A variant a config brings with ``from: "package.module:Class"`` (or an installed package's entry point) is
identified by its ``source``; its origin adds what the source does not say:

- ``distribution``, ``version``: the installed distribution that provides the defining module (from
  ``importlib.metadata.packages_distributions``); both None for a plain file found on ``sys.path`` (the
  folder a config runs in, ``PYTHONPATH``): "not installed as a package";
- ``file``: the file that defines the class, relative to the ``sys.path`` folder it was found in
  (``found_in``), and ``sha256``: the first ``SHORT`` hex digits of its contents' SHA-256;
- ``uses``: the distributions (and versions) of the names the defining module holds at its top level,
  e.g. the third-party package whose layer a wrapper wraps (``from local_attention import LocalMHA``);
  torch and attnbench are left out (the record's ``environment`` has them), and so is the standard library.

A class defined inside attnbench (a built-in registered again under a second name, config/zoo.yaml's
``performer``) is in-tree: its origin is None, as a built-in variant's.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attnbench.harness.core.registry import load_object
from attnbench.harness.results.environment import distribution_version
from attnbench.variants import VARIANTS

#: the top-level package of this repository's code: a class defined under it is in-tree
IN_TREE = "attnbench"
#: distributions a record keeps elsewhere (``environment``): not listed in ``uses``
RECORDED_ELSEWHERE = ("torch", IN_TREE)
#: hex digits of the SHA-256 kept
SHORT = 12


def variant_origin(source: str | None) -> dict[str, Any] | None:
    """The origin of the class at ``source`` (``package.module:Class``); None for no source or a class
    defined in attnbench. Never raises: a class that cannot be loaded or read gives ``{"source", "error"}``."""
    if not source:
        return None
    try:
        cls = load_object(source)
        module = sys.modules[cls.__module__]  # the module that defines it (a source may re-export it)
        if module.__name__.split(".")[0] == IN_TREE:
            return None
        path = Path(module.__file__ or "")
        found_in = path.parents[module.__name__.count(".") + (path.stem == "__init__")]
        top = module.__name__.split(".")[0]
        owners = importlib.metadata.packages_distributions()
        dist = next(iter(owners.get(top, ())), None)
        return {"source": source, "distribution": dist, "version": distribution_version(dist) if dist else None,
                "file": path.relative_to(found_in).as_posix(), "found_in": str(found_in),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:SHORT],
                "uses": _uses(module, owners, skip={top})}
    except Exception as exc:  # a record is written whatever its variant's file does
        return {"source": source, "error": f"{type(exc).__name__}: {exc}"}


def _uses(module: types.ModuleType, owners: Mapping[str, list[str]], skip: set[str]) -> dict[str, str | None]:
    """The distributions behind the names ``module`` holds at its top level (modules, classes, functions), with
    their versions: not the standard library's, nor ``RECORDED_ELSEWHERE``, nor those of the packages in ``skip``."""
    tops = set()
    for value in vars(module).values():
        name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        if isinstance(name, str) and name:
            tops.add(name.split(".")[0])
    dists = {d for top in tops - skip - set(sys.stdlib_module_names) for d in owners.get(top, ())}
    own = {d for top in skip for d in owners.get(top, ())}
    return {d: distribution_version(d) for d in sorted(dists - own - set(RECORDED_ELSEWHERE))}


def variant_origins(names: list[str]) -> dict[str, dict[str, Any]]:
    """The origin of each registered variant of ``names`` that comes from outside this repository."""
    out = {}
    for name in names:
        origin = variant_origin(VARIANTS.source(name)) if name in VARIANTS.names() else None
        if origin is not None:
            out[name] = origin
    return out


def describe_origin(origin: dict[str, Any] | None) -> str:
    """One line: ``local-attention 1.11.2, ...`` or ``not installed as a package``, the file and its hash,
    and what it uses; "" for None (in-tree)."""
    if not origin:
        return ""
    if origin.get("error"):
        return f"{origin['source']}: origin unknown ({origin['error']})"
    package = (f"{origin['distribution']} {origin['version'] or '(version unknown)'}" if origin.get("distribution")
               else "not installed as a package")
    uses = ", ".join(f"{d} {v or '(version unknown)'}" for d, v in (origin.get("uses") or {}).items())
    return f"{package}, {origin['file']} sha256:{origin['sha256']}" + (f"; uses {uses}" if uses else "")


def origin_columns(record: dict[str, Any]) -> dict[str, Any]:
    """The runs' table's columns of a run's variant: its ``source`` (a variant from outside the repository,
    or a built-in class under a second name), its origin in one line and its file's hash (empty for in-tree
    variants, and for records from before origins were recorded)."""
    origin = record.get("variant_origin")
    return {"variant_source": (record["config"].get("variant") or {}).get("source"),
            "variant_origin": describe_origin(origin) or None,
            "variant_sha256": (origin or {}).get("sha256")}
