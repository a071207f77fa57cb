"""Records that cannot be read are set aside, not left to block the pipeline.

A truncated, non-UTF-8 or schema-breaking ``record.json`` would otherwise stop every aggregation
(and Snakemake, which sees the file and never re-trains its run). Setting it aside moves it out of
the run folder, beside the ``runs`` folder it came from::

    results/runs/TASK/LABEL/seedS/record.json  ->  results/set_aside/TASK/LABEL/seedS/record.<UTC time>.json

with ``record.<UTC time>.reason.txt`` saying why. The run's record is then missing, so the next
``snakemake`` plans that run again; nothing is deleted.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from attnbench.harness.results.records import RecordError, read_record

FOLDER = "set_aside"


def destination(record: Path, stamp: str) -> Path:
    """Where ``record`` goes: under ``set_aside/`` beside the ``runs`` folder that holds it, at the same
    relative place; a record outside any ``runs`` folder goes to ``set_aside/`` in its own folder."""
    record = Path(record)
    runs = next((p for p in record.parents if p.name == "runs"), None)
    if runs is None:
        return record.parent / FOLDER / f"record.{stamp}.json"
    return runs.parent / FOLDER / record.parent.relative_to(runs) / f"record.{stamp}.json"


def set_aside(record: Path, reason: str) -> Path:
    """Move ``record`` out of its run folder (see the module docstring) with a reason file; returns
    where it went."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = destination(record, stamp)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.with_suffix(".reason.txt").write_text(f"{record}\n{reason}\n", encoding="utf-8")
    os.replace(record, target)
    return target


def readable(records: list[Path]) -> tuple[list[tuple[Path, dict]], list[dict]]:
    """The records that read and validate, as (path, record), and those set aside, each as
    ``{"record": original path, "moved_to": path, "reason": message}``."""
    good, aside = [], []
    for path in records:
        try:
            good.append((Path(path), read_record(path)))
        except RecordError as exc:
            aside.append({"record": str(path), "moved_to": str(set_aside(path, str(exc))), "reason": str(exc)})
    return good, aside
