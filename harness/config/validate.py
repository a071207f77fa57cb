"""Loading and validating the pipeline config.

``validate_config`` checks a config against the schema (``attnbench.harness.config.schema``)
before any job starts, fills in defaults, and raises ``ConfigError`` with one line per problem
naming the key, the bad value and what is allowed.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

from attnbench.harness.bench.settings import check_bench
from attnbench.harness.config.extends import resolve_extends
from attnbench.harness.config.protocol import check_lengths, check_seeds, check_tune
from attnbench.harness.config.runs import check_runs, migrate
from attnbench.harness.config.schema import (
    ConfigError,
    apply_defaults,
    build_schema,
    coerce_numbers,
    format_error,
    non_finite_numbers,
)
from attnbench.harness.config.task_names import fill_kinds, name_sections
from attnbench.harness.core import shipped_files
from attnbench.harness.core.registry import ExternalComponentError
from attnbench.harness.run.budget import KINDS as BUDGET_KINDS
from attnbench.harness.run.budget import budget_problems
from attnbench.harness.run.model import expand_profile
from attnbench.tasks.base import TASKS
from attnbench.variants import VARIANTS

DEFAULT_CONFIG = shipped_files.default_config()


def _normalise(config: dict) -> dict:
    """A config with its ``extends`` base under it (``harness.config.extends``); YAML's ``name:`` with nothing
    after it means "defaults": treat None as {}."""
    config = migrate(copy.deepcopy(resolve_extends(config, read_yaml)))
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
    for _, train in train_sections(config):
        if "budget" in train:  # its numbers as the others': 1e15 (text to YAML) is a number
            train["budget"] = coerce_numbers(BUDGET_TYPES, {} if train["budget"] is None else train["budget"])
    return config


#: ``train.budget``'s entries by type, for ``coerce_numbers`` (the schema types them only as numbers)
BUDGET_TYPES = {"properties": {kind: {"type": kind_type} for kind, kind_type in BUDGET_KINDS.items()}}


def train_sections(config: dict) -> Iterator[tuple[str, dict]]:
    """Every ``train`` mapping of the config, with its key: the shared one, each task's, each task's per variant."""
    if isinstance(config.get("train"), dict):
        yield "train", config["train"]
    tasks = config.get("tasks")
    for task, settings in tasks.items() if isinstance(tasks, dict) else ():
        if not isinstance(settings, dict):
            continue
        if isinstance(settings.get("train"), dict):
            yield f"tasks.{task}.train", settings["train"]
        per_variant = settings.get("per_variant")
        for variant, over in per_variant.items() if isinstance(per_variant, dict) else ():
            if isinstance(over, dict) and isinstance(over.get("train"), dict):
                yield f"tasks.{task}.per_variant.{variant}.train", over["train"]


def check_budgets(config: dict) -> list[str]:
    """Each ``train.budget`` the config sets holds exactly one of steps, seconds and flops, a positive
    number (what the schema, which types its values only, cannot say)."""
    return [problem for where, train in train_sections(config) if "budget" in train
            for problem in budget_problems(train["budget"], f"{where}.budget")]


def register_external_variants(config: dict) -> list[str]:
    """Register the variants the config brings from outside the repository, before the schema is
    built from the registry: ``variants: {name: {from: "package.module:Class", params: {...}}}``
    becomes ``variants: {name: {...params}}`` plus ``variant_sources: {name: "package.module:Class"}``
    (the form a validated config keeps, so validating it again registers the same). Registered with
    ``export``: the jobs and worker processes started from here find them too. Returns the names
    given with ``from`` (their parameters' errors are reported under ``params``, where they were)."""
    variants, problems, given = config.get("variants"), [], []
    sources = config.get("variant_sources")
    if sources is None or not isinstance(sources, dict):
        sources = config["variant_sources"] = {} if sources is None else sources
    if isinstance(variants, dict):
        for name, entry in variants.items():
            if isinstance(entry, dict) and "from" in entry:
                extra = sorted(set(entry) - {"from", "params"})
                if extra:
                    problems.append(f"'variants.{name}': a variant given with 'from' takes only 'from' and 'params'; "
                                    f"move {', '.join(repr(e) for e in extra)} under 'params'")
                if not isinstance(entry["from"], str):
                    problems.append(f"'variants.{name}.from' is {entry['from']!r}; expected 'package.module:Class'")
                    continue
                sources[name] = entry["from"]
                variants[name] = entry.get("params") or {}
                given.append(name)
    for name, source in sources.items() if isinstance(sources, dict) else ():
        try:
            VARIANTS.register_source(name, source, export=True)
        except ExternalComponentError as exc:
            problems.append(f"'variants.{name}.from': {exc}")
    if problems:
        raise ConfigError.of(problems)
    return given


def validate_config(config: dict) -> dict:
    """Validate, fill in defaults and return the config (``config`` itself is updated too,
    so a Snakefile can pass its global ``config``)."""
    normalised = _normalise(config)
    given = register_external_variants(normalised)
    schema = build_schema()
    named = name_sections(normalised, schema)
    if named:
        raise ConfigError.of(named)
    normalised = coerce_numbers(schema, normalised)
    non_finite = non_finite_numbers(normalised)
    if non_finite:
        raise ConfigError.of(non_finite)
    errors = sorted(Draft202012Validator(schema).iter_errors(normalised),
                    key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = {format_error(e) for e in errors}
        for name in given:  # where the user wrote them: under the variant's `params`
            lines = {line.replace(f"'variants.{name}.", f"'variants.{name}.params.") for line in lines}
        raise ConfigError.of(sorted(lines))
    _expand_model_profiles(normalised)
    given_lengths = check_lengths(normalised)  # before the defaults fill every task's length setting in
    apply_defaults(schema, normalised)
    fill_kinds(normalised)
    for section, params in normalised["tasks"].items():  # model dim/heads compatibility
        for variant, over in {"": {}, **params.get("per_variant", {})}.items():
            model = {**normalised["model"], **params.get("model", {}), **over.get("model", {})}
            where = f"tasks.{section}" + (f".per_variant.{variant}" if variant else "")
            if model["dim"] % model["heads"]:
                raise ConfigError.of([f"'{where}': model dim {model['dim']} is not divisible by heads "
                                      f"{model['heads']}"])
            if model.get("mask_zero_tokens") and TASKS.get(params["task"]).cls.zero_token is None:
                pixel = ", ".join(t for t in TASKS.names() if TASKS.get(t).cls.zero_token is not None)
                raise ConfigError.of([f"'{where}.model.mask_zero_tokens' is true, but task {section!r} has no "
                                      f"raw zero value to mask (pixel tasks have one: {pixel})"])
    problems = check_budgets(normalised) + check_per_variant(normalised) + given_lengths
    problems += check_tune(normalised) + check_seeds(normalised)
    problems = problems or check_runs(normalised)
    problems += check_bench(normalised)
    if problems:
        raise ConfigError.of(problems)
    config.clear()
    config.update(normalised)
    return config


def _expand_model_profiles(config: dict) -> None:
    """Each `model:` mapping (the shared one, a task's, a variant's on a task) with a `profile` gets that
    profile's values for the keys it does not set itself, before the defaults fill the rest."""
    mappings = [config] + [t for t in config["tasks"].values()]
    mappings += [v for t in config["tasks"].values() for v in t.get("per_variant", {}).values()]
    for holder in mappings:
        if isinstance(holder.get("model"), dict):
            holder["model"] = expand_profile(holder["model"])


def check_per_variant(config: dict) -> list[str]:
    """``tasks.<task>.per_variant`` may name only variants the config trains (in ``variants:`` or
    ``distill.students``): settings for any other would be silently unused, a typo's trap."""
    used = set(config["variants"]) | set(config["distill"]["students"])
    return [f"'tasks.{task}.per_variant.{name}': {name!r} is not trained by this config (variants: "
            f"{', '.join(config['variants'])}; distill.students: {', '.join(config['distill']['students']) or 'none'})"
            for task, settings in config["tasks"].items() for name in settings.get("per_variant", {})
            if name not in used]


def read_yaml(path: Path) -> object:
    """A YAML file's content; a file that is not UTF-8 or not YAML is a ConfigError naming the file
    and, for YAML, the line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None


def load_config(path: str | Path | None = None) -> dict:
    """The config at ``path`` (default: the shipped ``config/config.yaml``), validated."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return validate_config(raw)
