"""Adaptive seeds (``seeds: {min, max, step, target}``): one round's decision for one task, from the records of
its final runs so far to the seeds each run label has after the next round.

The pipeline runs rounds (rules/seeds.smk): round 0 trains seeds 0..min-1 of every (task, run label); after each
round the checkpoint ``seed_round`` writes ``results/seeds/TASK/roundR.json`` (``write_seed_round``): the seeds
each label has, the seeds it has after the next round (``report.resolution.next_seed_counts``: more only for a
label whose comparison with the reference has not resolved, and the reference, up to max), and each comparison's
state. When the next round adds nothing, the task is done and its final runs are the aggregation's."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from attnbench.harness.core.io import atomic_write_json
from attnbench.harness.report.resolution import comparison_state, next_seed_counts, seeds_run
from attnbench.harness.results.aggregate import COLUMNS, record_row
from attnbench.harness.results.records import RecordError, read_record


class SeedRoundError(RecordError):
    """A round's records that cannot be decided from: unreadable, or of another task or stage."""


def _finite(value):
    """A JSON value: numpy scalars as Python's, NaN as None."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def seed_round(records: list[Path], task: str, labels: list[str], seeds: dict, round_index: int) -> dict:
    """The decision of round ``round_index`` of ``task`` from its final runs' ``records``: ``counts`` (seeds run per
    label), ``next`` (seeds per label after the next round), ``done`` (the next round adds none) and each
    comparison with the reference (``report.resolution.comparison_state``)."""
    rows = []
    for path in records:
        record = read_record(Path(path))
        if record["task"] != task or record.get("stage", "final") != "final":
            raise SeedRoundError(f"{path} is the record of {record['run_id']}, not a final run of task {task!r}")
        rows.append(record_row(record, Path(path)))
    df = pd.DataFrame(rows, columns=COLUMNS)
    counts = {label: seeds_run(df, task, label) for label in labels}
    following = next_seed_counts(df, task, labels, seeds)
    reference = seeds["target"]["reference"]
    comparisons = {label: {k: _finite(v) for k, v in comparison_state(df, task, label, seeds["target"]).items()}
                   for label in labels if label != reference}
    return {"task": task, "round": round_index, "counts": counts, "next": following, "done": following == counts,
            "comparisons": comparisons}


def write_seed_round(records: list[Path], task: str, labels: list[str], seeds: dict, round_index: int,
                     out: Path) -> dict:
    """``seed_round``, written to ``out`` (atomically); returns it."""
    decision = seed_round(records, task, labels, seeds, round_index)
    atomic_write_json(Path(out), decision)
    return decision
