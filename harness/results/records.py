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
from typing import Any, NamedTuple

from jsonschema import Draft202012Validator

from attnbench.harness.core import paths, shipped_files
from attnbench.harness.core.errors import UserError
from attnbench.harness.core.hashing import config_hash
from attnbench.harness.core.io import atomic_write_json
from attnbench.harness.core.json_values import UnreadableJSON, non_finite, read_json

SCHEMA_VERSION = 2
RECORD_NAME = "record.json"
#: how a run is named in tables, by its training method
LABELS = {"labels": "{variant}", "distill": "distilled[{variant}]", "spt": "spt[{variant}]",
          "pretrain": "pretrain[{variant}]"}


class RecordError(UserError, ValueError):
    pass


class RunKey(NamedTuple):
    """What identifies a run: (task, variant, seed, method, trial). ``task`` is the task as runs name it:
    the registered task, or ``task@length`` for one of the lengths a task runs at (``tasks.<task>.lengths``).
    ``trial`` is set for a tuning trial (stage ``tune``: ``tune:``), None for a final run."""

    task: str
    variant: str
    seed: int
    method: str = "labels"
    trial: int | None = None

    @property
    def stage(self) -> str:
        """``final`` (a run the report compares) or ``tune`` (a tuning trial)."""
        return "final" if self.trial is None else "tune"

    @property
    def label(self) -> str:
        """The run's name in tables: the variant, or ``distilled[<variant>]`` for a distilled student."""
        return LABELS[self.method].format(variant=self.variant)

    @property
    def run_id(self) -> str:
        last = f"seed{self.seed}" if self.trial is None else f"trial{self.trial}"
        return f"{self.task}/{self.label}/{last}"

    @property
    def dir(self) -> Path:
        if self.method == "pretrain":  # not a run the report compares: its own tree, which aggregation never reads
            return paths.pretrain_dir(self.task, self.variant, self.seed)
        if self.trial is None:
            return paths.run_dir(self.task, self.label, self.seed)
        return paths.trial_dir(self.task, self.label, self.trial)

    @property
    def record(self) -> Path:
        return self.dir / RECORD_NAME

    @classmethod
    def of(cls, run: dict) -> RunKey:
        """The key of a resolved run config."""
        return cls(task_id(run["task"]), run["variant"]["name"], int(run["seed"]), run["method"]["name"],
                   run_stage(run)[1])

    @classmethod
    def of_record(cls, record: dict) -> RunKey:
        """The key of the run a record says it is."""
        return cls(record["task"], record["variant"], record["seed"], record["method"],
                   record.get("trial") if record.get("stage") == "tune" else None)


def task_id(task: dict) -> str:
    """The task as a run config's ``task`` section names it for runs: ``instance`` (``task@length``) where the
    task runs at several lengths, else its registered ``name``."""
    return task.get("instance") or task["name"]


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    schema = json.loads(shipped_files.record_schema().read_text())
    return Draft202012Validator(schema)


def _name(config: dict[str, Any], section: str) -> Any:  # what the config holds there (None: no such section)
    entry = config.get(section)
    if not isinstance(entry, dict):
        return None
    return task_id(entry) if section == "task" and "name" in entry else entry.get("name")


def run_stage(config: dict) -> tuple[str, int | None]:
    """The stage and trial a run config says (``tuning``): a trial's, or ``final`` with no trial."""
    tuning = config.get("tuning")
    if not isinstance(tuning, dict):
        tuning = {}
    return ("tune", tuning.get("trial")) if tuning.get("stage") == "tune" else ("final", None)


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
    stage, trial = run_stage(config)
    if record.get("stage", "final") != stage:
        problems.append(f"stage {record.get('stage', 'final')!r} but its config's {stage!r}")
    elif stage == "tune" and record.get("trial") != trial:
        problems.append(f"trial {record.get('trial')!r} but its config's {trial!r}")
    if record["schema_version"] >= 2:
        key = RunKey(record["task"], record["variant"], record["seed"], record["method"],
                     record.get("trial") if stage == "tune" else None)
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
    """The run a record's place names, as its folders (runs, tune or pretrain, task, label folder, seed or trial
    folder), when it lies in a run folder ``runs/TASK/LABEL/seedS/``, a trial's ``tune/TASK/LABEL/trialN/`` or a
    pretraining run's ``pretrain/TASK/VARIANT/seedS/``; None elsewhere."""
    parts = Path(path).absolute().parts
    trees = (paths.RUNS.name, paths.TUNE.name, paths.PRETRAIN.name)
    if len(parts) >= 5 and parts[-5] in trees and parts[-1] == RECORD_NAME:
        return parts[-5:-1]
    return None


def place_problem(path: Path, record: dict) -> str | None:
    """Why ``record`` is not the record of the run folder it lies in (None: it is, or lies in none)."""
    folder = run_folder(path)
    key = RunKey.of_record(record)
    own = key.dir.relative_to(key.dir.parents[3]).parts
    if folder is None or folder == own:
        return None
    return (f"{path} is the record of {record['run_id']} but lies in the run folder of "
            f"{'/'.join(folder[1:])} (its own: {'/'.join(own[1:])}): it is not that run's record")


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
