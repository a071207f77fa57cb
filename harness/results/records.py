"""Run records: one self-describing JSON per (task, variant, seed).

The schema is ``record_schema.json`` beside this file; every record is validated against it when
written and when read back for aggregation.
"""
from __future__ import annotations

import datetime as dt
import json
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from jsonschema import Draft202012Validator

from attnbench.harness.core.hashing import config_hash
from attnbench.harness.core import resources
from attnbench.harness.core.io import atomic_write_json

SCHEMA_VERSION = 1
RECORD_NAME = "record.json"


class RecordError(ValueError):
    pass


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    schema = json.loads(resources.record_schema().read_text())
    return Draft202012Validator(schema)


def validate_record(record: dict, where: str = "record") -> None:
    errors = sorted(_validator().iter_errors(record), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:10]]
        raise RecordError(f"{where} does not match the record schema:\n  " + "\n  ".join(lines))


def run_id(task: str, variant: str, seed: int) -> str:
    return f"{task}/{variant}/seed{seed}"


def build_record(*, run, data, status, message, trainer, test_acc, steps_done, mem, device, wall_s, baselines,
                 step_work: str = "forward, backward, clip, AdamW", teacher: dict | None = None) -> dict:
    from attnbench.harness.results.environment import capture
    from attnbench.harness.run.model import count_parameters

    step_median = trainer.step_timer.median(skip=run["train"]["timing_skip_steps"]) if trainer else None
    steps_per_s = 1.0 / step_median if step_median else None
    eval_time = sum(trainer.eval_timer.durations) if trainer else 0.0
    batch, n = run["train"]["batch_size"] * (2 if data.paired else 1), data.seq_len  # paired: two towers
    n_model = n + (run["model"]["pooling"] == "cls")
    flops = None
    if trainer is not None:
        try:
            flops = sum(layer.flops(batch, n_model) for layer in trainer.model.attention_layers())
        except NotImplementedError:
            flops = None
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id(run["task"]["name"], run["variant"]["name"], run["seed"]),
        "task": run["task"]["name"],
        "variant": run["variant"]["name"],
        "seed": run["seed"],
        "config_hash": config_hash(run),
        "status": status,
        "message": message,
        "accuracy": {
            "best_val": trainer.best["val_acc"] if trainer and trainer.best["step"] is not None else None,
            "test": test_acc,
            "best_step": trainer.best["step"] if trainer else None,
        },
        "baselines": baselines,
        "training": {
            "steps_planned": run["train"]["steps"],
            "steps_done": int(steps_done),
            "wall_s": round(wall_s, 3),
            "curve": "curve.csv" if trainer else None,
            "checkpoint": "best.pt" if trainer and trainer.best["state"] is not None else None,
            "resumed_from_step": getattr(trainer, "resumed_from_step", None),
        },
        "efficiency": {
            "train_steps_per_s": steps_per_s,
            "train_tokens_per_s": steps_per_s * batch * n if steps_per_s else None,
            "eval_tokens_per_s": trainer.eval_tokens / eval_time if trainer and eval_time > 0 else None,
            "step_time_median_s": step_median,
            "timing_method": (f"median wall time of a training step ({step_work}) after the "
                              f"first {run['train']['timing_skip_steps']} steps, evaluation excluded, "
                              + ("CUDA-synchronised" if device.type == "cuda" else f"{run['threads']} CPU thread(s)")),
            "peak_memory_bytes": mem.peak_bytes,
            "peak_memory_reserved_bytes": mem.reserved_bytes,
            "peak_memory_method": mem.method,
            "params": count_parameters(trainer.model) if trainer else None,
            "attention_flops_fwd": flops,
        },
        "data": {k: v for k, v in data.meta().items() if k in ("source", "seq_len", "vocab_size", "num_classes", "sizes")}
                | {"key": run["task"]["data_key"]},
        "config": run,
        "teacher": teacher,
        "environment": capture(device),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_record(path: Path, record: dict) -> None:
    validate_record(record, str(path))
    atomic_write_json(path, record)


def read_record(path: Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordError(f"cannot read record {path}: {exc}") from exc
    if isinstance(record, dict):  # written before records named a teacher (same schema version): none
        record.setdefault("teacher", None)
    validate_record(record, str(path))
    return record


def find_records(root: Path) -> Iterator[Path]:
    return iter(sorted(Path(root).rglob(RECORD_NAME)))
