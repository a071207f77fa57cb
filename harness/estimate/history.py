"""Timings from earlier records of this machine: a run trained here before with the same settings (its config
hash) took its record's ``training.wall_s``; one of the same shape (data, model, attention, batch, method,
threads, device) gives the time of a step, of an evaluated example and of a run's set-up. Only records of
this host and CPU that finished (status ok) count."""
from __future__ import annotations

import platform
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attnbench.harness.core.hashing import config_hash
from attnbench.harness.estimate.calibrate import RunTiming
from attnbench.harness.estimate.data_shape import PAIRED_TASKS
from attnbench.harness.results.environment import cpu_model
from attnbench.harness.results.records import RECORD_NAME, RecordError, read_record


def shape_key(run: dict[str, Any]) -> str:
    """What a run's time per step and per evaluated example depend on, as a hash: its data, model, attention,
    batches, precision, method (a student's teacher), threads and device; not its seed, steps or schedule."""
    train = run["train"]
    return config_hash({
        "data": run["task"]["data_key"], "model": run["model"], "variant": run["variant"],
        "train": {k: train.get(k) for k in ("batch_size", "eval_batch_size", "accumulate", "precision", "compile")},
        "method": run["method"], "threads": run["threads"], "device": run["device"]})


def eval_count(steps: int, eval_every: int) -> int:
    """Evaluations of a run of ``steps`` steps: every ``eval_every`` steps and at the last."""
    return steps // eval_every + (1 if steps % eval_every else 0)


def timing_of(record: dict[str, Any]) -> RunTiming | None:
    """A finished record's step, evaluated-example and set-up times (None where it holds no step time)."""
    training, efficiency, data = record["training"], record["efficiency"], record["data"]
    step_s, steps = efficiency.get("step_time_median_s"), training["steps_done"]
    eval_rate = efficiency.get("eval_tokens_per_s")
    if not step_s or not steps or not eval_rate:
        return None
    paired = record["config"]["task"]["name"] in PAIRED_TASKS
    example_s = data["seq_len"] * (2 if paired else 1) / eval_rate
    sizes = data.get("sizes") or {}
    examples = (eval_count(steps, record["config"]["train"]["eval_every"]) * sizes.get("val", 0)
                + sizes.get("test", 0) * (record["accuracy"].get("test") is not None))
    setup_s = max(0.0, training["wall_s"] - steps * step_s - examples * example_s)
    return RunTiming(step_s, example_s, setup_s, training.get("flops_per_step"), f"record {record['run_id']}")


class History:
    """The finished records of this machine under some folders, by config hash and by shape."""

    def __init__(self, records: Iterable[dict[str, Any]]) -> None:
        here = (platform.node(), cpu_model())
        self.by_hash: dict[str, dict[str, Any]] = {}
        self.by_shape: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            env = record.get("environment") or {}
            if record["status"] != "ok" or (env.get("host"), env.get("cpu_model")) != here:
                continue
            self.by_hash[record["config_hash"]] = record
            self.by_shape.setdefault(shape_key(record["config"]), []).append(record)

    @classmethod
    def under(cls, folders: Iterable[Path]) -> History:
        """The records found under ``folders`` (a results folder's runs/ and tune/); unreadable ones are left out."""
        records = []
        for folder in folders:
            for path in sorted(Path(folder).rglob(RECORD_NAME)) if Path(folder).is_dir() else []:
                try:
                    records.append(read_record(path))
                except (RecordError, OSError):
                    continue
        return cls(records)

    def run_seconds(self, run: dict[str, Any]) -> tuple[float, str] | None:
        """The ``training.wall_s`` of a record of this very run (same config hash), and which record."""
        record = self.by_hash.get(config_hash(run))
        return (record["training"]["wall_s"], f"record {record['run_id']}") if record else None

    def timing(self, run: dict[str, Any]) -> RunTiming | None:
        """The median timing of the records of the run's shape (None: none here)."""
        timings = [t for t in map(timing_of, self.by_shape.get(shape_key(run), [])) if t is not None]
        if not timings:
            return None
        source = timings[0].source if len(timings) == 1 else f"{len(timings)} records"
        return RunTiming(statistics.median(t.step_s for t in timings),
                         statistics.median(t.eval_example_s for t in timings),
                         statistics.median(t.setup_s for t in timings), timings[0].flops_per_step, source)
