"""Loading, validating and resolving the pipeline config.

``validate_config`` checks a config against ``config/schema.yaml`` (completed from the
registries and the model/train dataclasses) before any job starts, fills in defaults, and
raises ``ConfigError`` with one line per problem naming the key, the bad value and what
is allowed. ``resolve_run`` turns the validated config into the self-contained settings
of one training run, which is what a run record stores and hashes.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from attnbench.harness.core import resources
from attnbench.harness.core.hashing import config_hash  # noqa: F401
from attnbench.harness.core.registry import Registry, as_dict, dataclass_schema

SCHEMA_PATH = resources.config_schema()
DEFAULT_CONFIG = resources.default_config()

_JSON_TYPES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
               list: "a list", dict: "a mapping", type(None): "null"}


class ConfigError(ValueError):
    """An invalid config; the message has one line per problem."""


def _registries() -> dict[str, Registry]:
    from attnbench.tasks import TASKS
    from attnbench.variants import VARIANTS

    return {"variant": VARIANTS, "task": TASKS}


def _dataclasses() -> dict[str, type]:
    from attnbench.harness.bench.settings import BenchConfig
    from attnbench.harness.run.model import ModelConfig
    from attnbench.harness.run.train import TrainConfig

    return {"model": ModelConfig, "train": TrainConfig, "bench": BenchConfig}


def _strip_defaults(schema: dict) -> dict:
    out = copy.deepcopy(schema)
    out.pop("default", None)
    for prop in out.get("properties", {}).values():
        prop.pop("default", None)
    return out


def build_schema() -> dict[str, Any]:
    """The complete JSON schema: ``config/schema.yaml`` with its placeholders filled in."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    classes = _dataclasses()
    model, train = (dataclass_schema(classes[k]) for k in ("model", "train"))
    registries = _registries()
    for key, prop in schema["properties"].items():
        if "x-dataclass" in prop:
            filled = dataclass_schema(classes[prop["x-dataclass"]])
            filled["description"] = prop.get("description", filled["description"])
            schema["properties"][key] = {**filled, "x-dataclass": prop["x-dataclass"]}
        elif "x-registry" in prop:
            registry = registries[prop["x-registry"]]
            entries = {}
            for entry in registry:
                params = dataclass_schema(entry.config)
                params["description"] = entry.description
                if prop["x-registry"] == "task":
                    params = {
                        "type": "object", "additionalProperties": False, "default": {},
                        "description": entry.description,
                        "properties": {
                            "data": {**params, "description": f"{entry.name} data settings"},
                            "optional": {"type": "boolean", "default": False,
                                         "description": ("true: when the source data is missing, leave the task out of "
                                                         "the run (with a warning) instead of failing its prepare_data job")},
                            "model": {**_strip_defaults(model), "description": "overrides of the top-level model settings"},
                            "train": {**_strip_defaults(train), "description": "overrides of the top-level train settings"},
                            "per_variant": {
                                "type": "object", "x-registry": "variant",
                                "description": ("variant name -> {model, train, params}: overrides for that variant on "
                                                "this task (LRA gave each model its own size on Image and Pathfinder; "
                                                "an LSH bucket count suits one length)"),
                                "properties": {v: {
                                    "type": "object", "additionalProperties": False,
                                    "properties": {
                                        "model": {**_strip_defaults(model), "description": f"model settings of {v} on {entry.name}"},
                                        "train": {**_strip_defaults(train), "description": f"train settings of {v} on {entry.name}"},
                                        "params": {**_strip_defaults(dataclass_schema(registries["variant"].get(v).config)),
                                                   "description": f"{v}'s own parameters on {entry.name} (over those in `variants:`)"},
                                    }} for v in registries["variant"].names()},
                                "additionalProperties": False,
                            },
                        },
                    }
                entries[entry.name] = params
            prop["properties"] = entries
            prop["additionalProperties"] = False
    return schema


def _describe(value: Any) -> str:
    return f"{value!r} ({_JSON_TYPES.get(type(value), type(value).__name__)})"


def _format_error(err, prefix: str = "") -> str:
    path = ".".join(([prefix] if prefix else []) + [str(p) for p in err.absolute_path])
    where = f"'{path}'" if path else "the top level"
    sub = err.schema
    kind = err.validator
    if kind == "additionalProperties":
        allowed = sorted(sub.get("properties", {}))
        unknown = sorted(set(err.instance) - set(allowed))
        registry = sub.get("x-registry")
        if registry:
            return (f"unknown {registry} {', '.join(repr(u) for u in unknown)} under {where}; "
                    f"known {registry}s: {', '.join(allowed)}")
        keys = ", ".join(f"'{path + '.' if path else ''}{u}'" for u in unknown)
        return f"unknown key {keys}; allowed keys under {where}: {', '.join(allowed)}"
    if kind == "type":
        expected = sub["type"] if isinstance(sub["type"], str) else " or ".join(sub["type"])
        return f"{where} is {_describe(err.instance)}; expected {expected}"
    if kind == "enum":
        return f"{where} is {err.instance!r}; allowed: {', '.join(map(str, sub['enum']))}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kind]
        return f"{where} is {err.instance!r}; must be {op} {sub[kind]}"
    if kind == "required":
        return f"{where} is missing a required key: {err.message.split(' ')[0]}"
    if kind == "minProperties":
        return f"{where} is empty; name at least one entry"
    return f"{where}: {err.message}"


def _normalise(config: dict) -> dict:
    """YAML's ``name:`` with nothing after it means "defaults": treat None as {}."""
    config = copy.deepcopy(config)
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


def _to_number(value: str, kind: str) -> Any:
    try:
        number = float(value)
    except ValueError:
        return value
    if kind == "integer":
        return int(number) if number.is_integer() else value
    return number


def coerce_numbers(schema: dict, instance: Any) -> Any:
    """Numbers written as text become numbers where the schema wants one: YAML reads
    ``1e-3`` as a string, and ``snakemake --config seeds=[1,2]`` passes strings."""
    kind = schema.get("type")
    if isinstance(instance, str) and kind in ("number", "integer"):
        return _to_number(instance.strip(), kind)
    if isinstance(instance, list) and "items" in schema:
        return [coerce_numbers(schema["items"], v) for v in instance]
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        return {k: coerce_numbers(props[k], v) if k in props else v for k, v in instance.items()}
    return instance


def apply_defaults(schema: dict, instance: Any) -> Any:
    """Fill in missing keys from the schema's defaults, recursively. Under a registry
    section (variants, tasks) only the entries the config names are filled, never added."""
    if not isinstance(instance, dict):
        return instance
    is_registry = "x-registry" in schema
    for key, prop in schema.get("properties", {}).items():
        if key not in instance and "default" in prop and not is_registry:
            instance[key] = copy.deepcopy(prop["default"])
        if key in instance:
            apply_defaults(prop, instance[key])
    return instance


def validate_config(config: dict) -> dict:
    """Validate, fill in defaults and return the config (``config`` itself is updated too,
    so a Snakefile can pass its global ``config``)."""
    schema = build_schema()
    normalised = coerce_numbers(schema, _normalise(config))
    errors = sorted(Draft202012Validator(schema).iter_errors(normalised),
                    key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = sorted({_format_error(e) for e in errors})
        raise ConfigError("invalid attnbench config:\n  - " + "\n  - ".join(lines))
    apply_defaults(schema, normalised)
    for section, params in normalised["tasks"].items():  # model dim/heads compatibility
        for variant, over in {"": {}, **params.get("per_variant", {})}.items():
            model = {**normalised["model"], **params.get("model", {}), **over.get("model", {})}
            where = f"tasks.{section}" + (f".per_variant.{variant}" if variant else "")
            if model["dim"] % model["heads"]:
                raise ConfigError(f"invalid attnbench config:\n  - '{where}': model dim {model['dim']} "
                                  f"is not divisible by heads {model['heads']}")
    from attnbench.harness.bench.settings import check_bench

    problems = _teacher_problems(normalised) + check_bench(normalised)
    if problems:
        raise ConfigError("invalid attnbench config:\n  - " + "\n  - ".join(problems))
    config.clear()
    config.update(normalised)
    return config


def _teacher_problems(config: dict) -> list[str]:
    """Checks of the variants trained from a teacher (``needs_teacher``) that the schema cannot
    express: the teacher is a configured variant trained from labels, the student's attention
    is a registered one and its parameters fit it, and the student is no deeper than the teacher.
    Normalises numbers written as text in ``attention_params`` in place."""
    from attnbench.variants import VARIANTS

    from_labels = [v for v in VARIANTS.names() if not VARIANTS.get(v).cls.needs_teacher]
    configured = config["variants"]
    problems = []
    for name, params in configured.items():
        if not VARIANTS.get(name).cls.needs_teacher:
            continue
        where, teacher, attention = f"variants.{name}", params["teacher"], params["attention"]
        if teacher not in from_labels:
            choices = ", ".join(v for v in configured if v in from_labels) or "none is configured"
            problems.append(f"'{where}.teacher' is {teacher!r}; the teacher must be a variant in 'variants' "
                            f"that is trained from labels: {choices}")
        elif teacher not in configured:
            problems.append(f"'{where}.teacher' is {teacher!r} but variant {teacher!r} is not in 'variants'; "
                            f"add `{teacher}: {{}}` there ({name} runs are trained from the {teacher} run "
                            "of the same task and seed)")
        if attention not in from_labels:
            problems.append(f"'{where}.attention' is {attention!r}; known variants (trained from labels): "
                            f"{', '.join(from_labels)}")
        else:
            schema = dataclass_schema(VARIANTS.get(attention).config)
            params["attention_params"] = coerce_numbers(schema, params["attention_params"])
            errors = Draft202012Validator(schema).iter_errors(params["attention_params"])
            problems += sorted({_format_error(e, f"{where}.attention_params") for e in errors})
        for task, task_params in config["tasks"].items():
            layers = {**config["model"], **task_params.get("model", {})}["layers"]
            if params["student_layers"] > layers:
                problems.append(f"'{where}.student_layers' is {params['student_layers']}; task {task!r} has "
                                f"{layers}-layer teachers, so it must be <= {layers} (0 = half the teacher's)")
    return problems


def load_config(path: str | Path | None = None) -> dict:
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return validate_config(raw)


def task_data_params(config: dict, task: str) -> dict:
    """The task's data settings with every default spelled out."""
    from attnbench.tasks import TASKS

    return as_dict(TASKS.make_config(task, config["tasks"][task].get("data", {})))


def variant_params(config: dict, task: str, variant: str) -> dict:
    """A variant's parameters as set for one task: its `variants:` entry (if any), overridden by
    the task's `per_variant.<variant>.params`."""
    per_variant = config["tasks"][task].get("per_variant", {}).get(variant, {})
    return {**config["variants"].get(variant, {}), **per_variant.get("params", {})}


def resolve_run(config: dict, task: str, variant: str, seed: int) -> dict:
    """Everything one training run depends on, defaults spelled out; stored in its record."""
    from attnbench.harness.run.model import ModelConfig
    from attnbench.harness.run.train import TrainConfig
    from attnbench.harness.core.registry import build_dataclass
    from attnbench.tasks.base import data_key
    from attnbench.variants import VARIANTS

    if task not in config["tasks"]:
        raise ConfigError(f"task {task!r} is not in the config; configured tasks: {', '.join(config['tasks'])}")
    if variant not in config["variants"]:
        raise ConfigError(f"variant {variant!r} is not in the config; configured variants: {', '.join(config['variants'])}")
    per_task = config["tasks"][task]
    per_variant = per_task.get("per_variant", {}).get(variant, {})  # the most specific settings win
    model = build_dataclass(ModelConfig, {**config["model"], **per_task.get("model", {}),
                                          **per_variant.get("model", {})}, "model")
    train = build_dataclass(TrainConfig, {**config["train"], **per_task.get("train", {}),
                                          **per_variant.get("train", {})}, "train")
    data = task_data_params(config, task)
    run = {
        "task": {"name": task, "data": data, "data_key": data_key(task, data)},
        "variant": {"name": variant, "params": as_dict(VARIANTS.make_config(variant, variant_params(config, task, variant)))},
        "model": as_dict(model),
        "train": as_dict(train),
        "seed": int(seed),
        "device": config["device"],
        "threads": config["threads"],
        "deterministic": config["deterministic"],
    }
    if VARIANTS.get(variant).cls.needs_teacher:
        from attnbench.harness.run.distill import resolve_student

        resolve_student(config, run)
    return run

