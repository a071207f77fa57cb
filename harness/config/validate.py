"""Loading and validating the pipeline config.

``validate_config`` checks a config against the schema (``attnbench.harness.config.schema``)
before any job starts, fills in defaults, and raises ``ConfigError`` with one line per problem
naming the key, the bad value and what is allowed.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

from attnbench.harness.bench.settings import check_bench
from attnbench.harness.config.runs import check_runs, migrate
from attnbench.harness.config.schema import ConfigError, apply_defaults, build_schema, coerce_numbers, format_error
from attnbench.harness.core import resources

DEFAULT_CONFIG = resources.default_config()


def _normalise(config: dict) -> dict:
    """YAML's ``name:`` with nothing after it means "defaults": treat None as {}."""
    config = migrate(copy.deepcopy(config))
    for section in ("variants", "tasks"):
        entries = config.get(section)
        if isinstance(entries, dict):
            for name, value in entries.items():
                if value is None:
                    entries[name] = {}
                elif isinstance(value, dict) and section == "tasks":
                    for part in ("data", "model", "train", "per_variant"):
                        if part in value and value[part] is None:
                            value[part] = {}
                    for variant, over in value.get("per_variant", {}).items():
                        if over is None:
                            value["per_variant"][variant] = {}
    return config


def validate_config(config: dict) -> dict:
    """Validate, fill in defaults and return the config (``config`` itself is updated too,
    so a Snakefile can pass its global ``config``)."""
    schema = build_schema()
    normalised = coerce_numbers(schema, _normalise(config))
    errors = sorted(Draft202012Validator(schema).iter_errors(normalised),
                    key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise ConfigError.of(sorted({format_error(e) for e in errors}))
    apply_defaults(schema, normalised)
    for section, params in normalised["tasks"].items():  # model dim/heads compatibility
        for variant, over in {"": {}, **params.get("per_variant", {})}.items():
            model = {**normalised["model"], **params.get("model", {}), **over.get("model", {})}
            where = f"tasks.{section}" + (f".per_variant.{variant}" if variant else "")
            if model["dim"] % model["heads"]:
                raise ConfigError.of([f"'{where}': model dim {model['dim']} is not divisible by heads "
                                      f"{model['heads']}"])
    problems = check_runs(normalised) + check_bench(normalised)
    if problems:
        raise ConfigError.of(problems)
    config.clear()
    config.update(normalised)
    return config


def load_config(path: str | Path | None = None) -> dict:
    """The config at ``path`` (default: the shipped ``config/config.yaml``), validated."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return validate_config(raw)
