"""Run records: one self-describing JSON per (task, variant, seed, method).

The schema is ``record_schema.json`` beside this file; every record is validated against it
when written and when read back for aggregation, and must also agree with itself: finite numbers
only, and its run_id, label, seed and config hash those of its own config. A record read from a run
folder (``runs/TASK/LABEL/seedS/record.json``) must be that run's. A record is built by the training
code (``attnbench.harness.run.record``); this module holds its format: identity, schema, reading and
writing.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from jsonschema import Draft202012Validator

from attnbench.harness.core import paths, resources
from attnbench.harness.core.errors import UserError
from attnbench.harness.core.hashing import config_hash
from attnbench.harness.core.io import atomic_write_json
from attnbench.harness.core.json_values import UnreadableJSON, non_finite, read_json

SCHEMA_VERSION = 2
RECORD_NAME = "record.json"
#: how a run is named in tables, by its training method
LABELS = {"labels": "{variant}", "distill": "distilled[{variant}]"}


class RecordError(UserError, ValueError):
    pass


class RunKey(NamedTuple):
    """What identifies a run: (task, variant, seed, method)."""

    task: str
    variant: str
    seed: int
    method: str = "labels"

    @property
    def label(self) -> str:
        """The run's name in tables: the variant, or ``distilled[<variant>]`` for a distilled student."""
        return LABELS[self.method].format(variant=self.variant)

    @property
    def run_id(self) -> str:
        return f"{self.task}/{self.label}/seed{self.seed}"

    @property
    def dir(self) -> Path:
        return paths.run_dir(self.task, self.label, self.seed)

    @property
    def record(self) -> Path:
        return self.dir / RECORD_NAME

    @classmethod
    def of(cls, run: dict) -> RunKey:
        """The key of a resolved run config."""
        return cls(run["task"]["name"], run["variant"]["name"], int(run["seed"]), run["method"]["name"])


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    schema = json.loads(resources.record_schema().read_text())
    return Draft202012Validator(schema)


def _name(config: dict, section: str):
    entry = config.get(section)
    return entry.get("name") if isinstance(entry, dict) else None


def identity_problems(record: dict) -> list[str]:
    """How a (schema-valid) record disagrees with itself: its config hash is not that of its config,
    or its seed, task, variant, method, label or run_id not those of its config. A version 1 record
    predates method and label (and named a student after its variant): its config hash, seed and task."""
    config, problems = record["config"], []
    actual = config_hash(config)
    if record["config_hash"] != actual:
        problems.append(f"config_hash {record['config_hash']} is not the hash of its config ({actual})")
    if config.get("seed") != record["seed"]:
        problems.append(f"seed {record['seed']} but its config's seed {config.get('seed')!r}")
    fields = ("task", "variant", "method") if record["schema_version"] >= 2 else ("task",)
    problems += [f"{field} {record[field]!r} but its config's {field} {_name(config, field)!r}"
                 for field in fields if _name(config, field) != record[field]]
    if record["schema_version"] >= 2:
        key = RunKey(record["task"], record["variant"], record["seed"], record["method"])
        problems += [f"{field} {record[field]!r} is not {want!r}"
                     for field, want in (("label", key.label), ("run_id", key.run_id)) if record[field] != want]
    return problems


def validate_record(record: dict, where: str = "record") -> None:
    """The record matches the schema, holds finite numbers only and agrees with itself
    (``identity_problems``); else a ``RecordError`` naming ``where``."""
    errors = sorted(_validator().iter_errors(record), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:10]]
        raise RecordError(f"{where} does not match the record schema:\n  " + "\n  ".join(lines))
    problems = [f"{path or '(top)'} is {value}" for path, value in non_finite(record)]
    if problems:
        raise RecordError(f"{where}: {'; '.join(problems)}: a record holds finite numbers only")
    problems = identity_problems(record)
    if problems:
        raise RecordError(f"{where} is not the record of {record['run_id']} it says it is: {'; '.join(problems)}")


def run_folder(path: Path) -> tuple[str, ...] | None:
    """The run a record's place names, as its folders (task, label folder, seed folder), when it lies
    in a run folder ``runs/TASK/LABEL/seedS/``; None elsewhere."""
    parts = Path(path).absolute().parts
    if len(parts) >= 5 and parts[-5] == paths.RUNS.name and parts[-1] == RECORD_NAME:
        return parts[-4:-1]
    return None


def place_problem(path: Path, record: dict) -> str | None:
    """Why ``record`` is not the record of the run folder it lies in (None: it is, or lies in none)."""
    folder = run_folder(path)
    own = paths.run_dir(record["task"], record["label"], record["seed"]).relative_to(paths.RUNS).parts
    if folder is None or folder == own:
        return None
    return (f"{path} is the record of {record['run_id']} but lies in the run folder of "
            f"{'/'.join(folder)} (its own: {'/'.join(own)}): it is not that run's record")


def write_record(path: Path, record: dict) -> None:
    validate_record(record, str(path))
    atomic_write_json(path, record)


def _upgrade(record: dict) -> dict:
    """A record of an older schema version in the current form (in place)."""
    if record.get("schema_version") == 1:
        method = "labels" if record.get("teacher") is None else "distill"
        record.setdefault("method", method)
        record.setdefault("label", record.get("variant"))  # version 1 named a distilled run `distilled`
    return record


def read_record(path: Path) -> dict:
    try:
        record = read_json(path)
    except UnreadableJSON as exc:
        raise RecordError(f"cannot read record {path}: {exc}") from None
    if not isinstance(record, dict):
        raise RecordError(f"cannot read record {path}: it holds a JSON {type(record).__name__}, not an object")
    _upgrade(record)
    validate_record(record, str(path))
    problem = place_problem(path, record)
    if problem:
        raise RecordError(problem)
    return record


def find_records(root: Path) -> Iterator[Path]:
    return iter(sorted(Path(root).rglob(RECORD_NAME)))
