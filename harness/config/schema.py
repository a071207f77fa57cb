"""The config's JSON schema, completed from the code, and the problems it finds, one line each.

``config/schema.yaml`` describes the top level. Two kinds of placeholder are filled in here,
so that each default and description lives in one place:
- ``x-dataclass: <section>``: the schema of that section's config dataclass (``SECTIONS``); a field of it marked
  ``x-overrides: train`` holds overrides of the train settings (``spt.train``);
- ``x-registry: variant | task``: one property per registered variant / task with the schema of
  its own config dataclass. At the top level (``variants:``) entries get their defaults filled
  in; nested inside another section (``tasks.<t>.per_variant``, ``distill.students``) they are
  overrides of the top-level settings, so their defaults are left out.
"""
from __future__ import annotations

import copy
from typing import Any

import yaml

from attnbench.harness.bench.settings import BenchConfig
from attnbench.harness.core import shipped_files
from attnbench.harness.core.errors import UserError
from attnbench.harness.core.json_values import non_finite
from attnbench.harness.core.registry import dataclass_schema
from attnbench.harness.run.distill import DistillConfig
from attnbench.harness.run.model import ModelConfig
from attnbench.harness.run.pretrain import SptConfig
from attnbench.harness.run.train_config import TrainConfig
from attnbench.tasks import TASKS
from attnbench.variants import VARIANTS

#: config section -> the dataclass that holds its settings, defaults and descriptions
SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "bench": BenchConfig,
                             "distill": DistillConfig, "spt": SptConfig}

_JSON_TYPES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
               list: "a list", dict: "a mapping", type(None): "null"}


class ConfigError(UserError, ValueError):
    """An invalid config; the message has one line per problem."""

    @classmethod
    def of(cls, problems: list[str]) -> ConfigError:
        if len(problems) == 1:  # one problem, one line
            return cls(f"invalid attnbench config: {problems[0]}")
        return cls("invalid attnbench config:\n  - " + "\n  - ".join(problems))


def strip_defaults(schema: dict) -> dict:
    """An object schema whose properties have no defaults: a set of overrides."""
    out = copy.deepcopy(schema)
    out.pop("default", None)
    for prop in out.get("properties", {}).values():
        prop.pop("default", None)
    return out


def _variant_entries(overrides: bool, where: str = "") -> dict[str, dict]:
    """variant name -> the schema of its parameters (without defaults when they are ``overrides``)."""
    entries = {}
    for entry in VARIANTS:
        params = dataclass_schema(entry.config)
        params["description"] = f"{entry.name}'s own parameters{where}" if overrides else entry.description
        entries[entry.name] = strip_defaults(params) if overrides else params
    return entries


def _registry_mapping(prop: dict, entries: dict[str, dict]) -> dict:
    return {**prop, "properties": entries, "additionalProperties": False}


#: the rule groups whose `resources:` a task may override for its own jobs
TASK_RESOURCE_GROUPS = ("prepare", "train", "distill", "pretrain")


def _task_resources(resources_schema: dict) -> dict:
    """The schema of a task's ``resources``: overrides of the top-level groups whose jobs are per task."""
    groups = {g: {**strip_defaults(resources_schema["properties"][g]),
                  "description": f"overrides of resources.{g} for this task's {g} jobs"}
              for g in TASK_RESOURCE_GROUPS}
    return {"type": "object", "additionalProperties": False, "properties": groups,
            "description": ("overrides of the top-level `resources` for this task's jobs (prepare, train, distill, "
                            "pretrain): "
                            "a long task's runs ask its scheduler for more time without every other task's "
                            "runs asking for as much")}


def _length_settings(entry) -> str:
    """The data settings a task's ``lengths`` set (``Task.length_settings``), or why it has none."""
    return ", ".join(entry.cls.length_settings(2)) if entry.cls.length_param else "none, its length is fixed"


def _task_entry(entry, model: dict, train: dict, resources_schema: dict) -> dict:
    """The schema of one task's section: data settings, optional, model/train overrides, per_variant, resources."""
    per_variant = {
        v: {"type": "object", "additionalProperties": False, "properties": {
            "model": {**strip_defaults(model), "description": f"model settings of {v} on {entry.name}"},
            "train": {**strip_defaults(train), "description": f"train settings of {v} on {entry.name}"},
            "params": {**strip_defaults(dataclass_schema(VARIANTS.get(v).config)),
                       "description": f"{v}'s own parameters on {entry.name} (over those in `variants:`)"},
        }} for v in VARIANTS.names()}
    return {
        "type": "object", "additionalProperties": False, "default": {}, "description": entry.description,
        "properties": {
            "task": {"type": "string", "enum": [entry.name],
                     "description": (f"the registered task this section is an instance of ({entry.name}); the "
                                     "section's key is the name its runs, records and report carry (default: the "
                                     "key itself, a registered task)")},
            "data": {**dataclass_schema(entry.config), "description": f"{entry.name} data settings"},
            "lengths": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2,
                        "uniqueItems": True, "description": (
                            f"run the task at each of these lengths (what each sets: {_length_settings(entry)}): "
                            "each one a task of its own in the grid, named task@length, for accuracy against length")},
            "optional": {"type": "boolean", "default": False,
                         "description": ("true: when the source data is missing, leave the task out of the run "
                                         "(with a warning) instead of failing its prepare_data job")},
            "model": {**strip_defaults(model), "description": "overrides of the top-level model settings"},
            "train": {**strip_defaults(train), "description": "overrides of the top-level train settings"},
            "per_variant": _registry_mapping(
                {"type": "object", "x-registry": "variant",
                 "description": ("variant name -> {model, train, params}: overrides for that variant on this task "
                                 "(LRA gave each model its own size on Image and Pathfinder; an LSH bucket count "
                                 "suits one length)")}, per_variant),
            "resources": _task_resources(resources_schema),
        },
    }


def build_schema() -> dict[str, Any]:
    """The complete JSON schema: ``config/schema.yaml`` with its placeholders filled in."""
    schema = yaml.safe_load(shipped_files.config_schema().read_text())
    model, train = dataclass_schema(ModelConfig), dataclass_schema(TrainConfig)
    for key, prop in schema["properties"].items():
        if "x-dataclass" in prop:
            filled = dataclass_schema(SECTIONS[prop["x-dataclass"]])
            filled["description"] = prop.get("description", filled["description"])
            for name, field in filled["properties"].items():  # a section's own registry mappings are overrides
                if field.get("x-overrides") == "train":  # overrides of the train settings (spt.train)
                    filled["properties"][name] = {**strip_defaults(train), "default": field["default"],
                                                  "description": field["description"]}
                if field.get("x-registry") == "variant":
                    field.pop("additionalProperties", None)
                    filled["properties"][name] = _registry_mapping(field, _variant_entries(True, f" in {key}.{name}"))
            schema["properties"][key] = {**filled, "x-dataclass": prop["x-dataclass"]}
        elif prop.get("x-registry") == "variant":
            schema["properties"][key] = _registry_mapping(prop, _variant_entries(False))
        elif prop.get("x-registry") == "task":
            task_resources = schema["properties"]["resources"]
            schema["properties"][key] = _registry_mapping(
                prop, {e.name: _task_entry(e, model, train, task_resources) for e in TASKS})
    return schema


def _describe(value: Any) -> str:
    return f"{value!r} ({_JSON_TYPES.get(type(value), type(value).__name__)})"


def format_error(err, prefix: str = "") -> str:
    """One line for one jsonschema error: the key, the bad value and what is allowed."""
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
    if kind in ("minItems", "maxItems"):
        low, high = sub.get("minItems", 0), sub.get("maxItems")
        count = (f"exactly {low}" if low == high else f"at least {low}" if high is None
                 else f"at most {high}" if not low else f"{low} to {high}")
        return f"{where} is {err.instance!r}; give {count} value{'s' if (high or low) != 1 else ''}"
    if kind == "oneOf":  # e.g. `seeds`, a list or a mapping: the error of the form the value has, else both forms
        forms = [branch.get("type") for branch in sub["oneOf"]]
        json_types: dict[type, str] = {list: "array", dict: "object"}
        own = json_types.get(type(err.instance))
        inner = [e for e in err.context if own in forms and e.relative_schema_path[0] == forms.index(own)]
        if inner:
            return format_error(min(inner, key=lambda e: [str(p) for p in e.absolute_path]), prefix)
        return f"{where} is {_describe(err.instance)}; expected {' or '.join(map(str, forms))}"
    if kind == "uniqueItems":
        return f"{where} is {err.instance!r}; each value may appear only once"
    return f"{where}: {err.message}"


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
    if "oneOf" in schema:  # the branch of the instance's own kind (a list, a mapping), e.g. `seeds`
        want = "array" if isinstance(instance, list) else "object" if isinstance(instance, dict) else None
        branch = next((b for b in schema["oneOf"] if b.get("type") == want), None)
        return coerce_numbers(branch, instance) if branch else instance
    kind = schema.get("type")
    if isinstance(instance, str) and kind in ("number", "integer"):
        return _to_number(instance.strip(), kind)
    if isinstance(instance, float) and kind == "integer" and instance.is_integer():
        return int(instance)  # `steps: 20.0` means 20 (JSON schema calls it an integer; Python's range does not)
    if isinstance(instance, list) and "items" in schema:
        return [coerce_numbers(schema["items"], v) for v in instance]
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        return {k: coerce_numbers(props[k], v) if k in props else v for k, v in instance.items()}
    return instance


def non_finite_numbers(instance: Any) -> list[str]:
    """One line per NaN or infinite number anywhere in the config (YAML's ``.nan``, ``.inf``, or
    text such as ``nan`` read as a number): none of them is a meaningful setting."""
    return [f"'{path}' is {value}; give a finite number" for path, value in non_finite(instance)]


def apply_defaults(schema: dict, instance: Any) -> Any:
    """Fill in missing keys from the schema's defaults, recursively. Under a registry
    section (variants, tasks) only the entries the config names are filled, never added."""
    if not isinstance(instance, dict):
        return instance
    if "oneOf" in schema:  # a mapping where a list is the other form (adaptive `seeds`): the mapping's defaults
        schema = next((b for b in schema["oneOf"] if b.get("type") == "object"), schema)
    is_registry = "x-registry" in schema
    for key, prop in schema.get("properties", {}).items():
        if key not in instance and "default" in prop and not is_registry:
            instance[key] = copy.deepcopy(prop["default"])
        if key in instance:
            apply_defaults(prop, instance[key])
    return instance
