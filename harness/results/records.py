"""Run records: one self-describing JSON per (task, variant, seed, method).

The schema is ``record_schema.json`` beside this file; every record is validated against it
when written and when read back for aggregation. A record is built by the training code
(``attnbench.harness.run.record``); this module holds its format: identity, schema, reading and
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
from attnbench.harness.core.io import atomic_write_json

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


def validate_record(record: dict, where: str = "record") -> None:
    errors = sorted(_validator().iter_errors(record), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:10]]
        raise RecordError(f"{where} does not match the record schema:\n  " + "\n  ".join(lines))


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
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise RecordError(f"cannot read record {path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordError(f"cannot read record {path}: {exc}") from exc
    if not isinstance(record, dict):
        raise RecordError(f"cannot read record {path}: it holds a JSON {type(record).__name__}, not an object")
    _upgrade(record)
    validate_record(record, str(path))
    return record


def find_records(root: Path) -> Iterator[Path]:
    return iter(sorted(Path(root).rglob(RECORD_NAME)))
