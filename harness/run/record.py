"""The record of one training run, from what its trainer measured (the format is
``attnbench.harness.results.records``), the baselines it is compared with, and its curve
(``curve.csv``, one row per evaluation)."""
from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from attnbench.harness.core.hashing import config_hash
from attnbench.harness.core.io import atomic_write_text
from attnbench.harness.measure.memory import PeakMemory
from attnbench.harness.results.environment import capture
from attnbench.harness.results.provenance import variant_origin
from attnbench.harness.results.records import SCHEMA_VERSION, RunKey
from attnbench.harness.run.budget import Budget
from attnbench.harness.run.model import count_parameters
from attnbench.tasks.base import PreparedData

if TYPE_CHECKING:  # for the annotations only
    from attnbench.harness.run.trainer_steps import TrainerSteps

#: how a training run's peak memory treats its data (``harness.run.train.train_run``)
PLACED_DATA_NOTE = ("; the data splits are placed before the measurement starts, so not counted "
                    "(device_data_bytes: the bytes of them held on the device, in a narrow integer type)")


def kernel_fields(kernel: dict[str, str] | None, prefix: str) -> dict[str, str | None]:
    """A run's attention kernel and why (``variants.kernels.KernelLog.as_record``) as record fields, ``prefix``
    naming the pass (training: none; evaluation: ``eval_``); null where no step or pass ran."""
    kernel = kernel or {}
    return {f"{prefix}attention_kernel": kernel.get("attention_kernel"),
            f"{prefix}attention_kernel_why": kernel.get("attention_kernel_why")}


def budget_fields(run: dict[str, Any], trainer: TrainerSteps | None, steps_done: int) -> dict[str, Any]:
    """The record's budget entries: ``budget`` (kind, limit and what the run reached: its steps, train_s or
    train_flops), ``train_s`` (training-step time, evaluation excluded, earlier processes' included),
    ``train_flops`` (steps done x ``flops_per_step``), ``flops_per_step`` and ``flops_method``. A run that never
    started has no train_s nor FLOPs (null, and so is what it reached of such a budget); one whose budget is
    invalid (refused by the config's validation) has none."""
    clock, per_step = getattr(trainer, "clock", None), getattr(trainer, "flops_per_step", None)
    train_s = clock.exact() if clock else None
    train_flops = steps_done * per_step if per_step is not None else None
    budget = getattr(trainer, "budget", None)
    if budget is None:
        try:
            budget = Budget.of(run["train"])
        except ValueError:  # the failure the run ended with says why
            budget = None
    return {"budget": budget.as_record(steps_done, train_s, train_flops) if budget else None,
            "train_s": train_s, "train_flops": train_flops, "flops_per_step": per_step,
            "flops_method": getattr(trainer, "flops_method", None)}


def build_record(*, run: dict[str, Any], data: PreparedData, status: str, message: str | None,
                 trainer: TrainerSteps | None, test_acc: float | None, steps_done: int, mem: PeakMemory,
                 device: torch.device, wall_s: float, baselines: dict[str, Any],
                 step_work: str = "forward, backward, clip, AdamW", extra: dict[str, Any] | None = None,
                 memory_cap: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of a run that ended with ``status``; ``trainer`` is None when it never started.
    ``extra``: entries a training method adds (a distilled run's ``teacher``); ``memory_cap``: the cap
    the run trained under (``measure.memory.memory_cap``), None when it never started."""
    key = RunKey.of(run)
    step_median = trainer.step_timer.median(skip=run["train"]["timing_skip_steps"]) if trainer else None
    steps_per_s = 1.0 / step_median if step_median else None
    eval_time = sum(trainer.eval_timer.durations) if trainer else 0.0
    used = getattr(trainer, "batch_size", run["train"]["batch_size"])  # what a step ran (at most the split)
    batch, n = used * (2 if data.paired else 1), data.seq_len  # paired: two towers
    n_model = n + (run["model"]["pooling"] == "cls")
    flops = None
    if trainer is not None:
        try:
            flops = sum(layer.flops(batch, n_model) for layer in trainer.model.attention_layers())
        except NotImplementedError:
            flops = None
    timing = (f"median time of a training step ({step_work}) after the first "
              f"{run['train']['timing_skip_steps']} steps, evaluation excluded: "
              + (trainer.step_timer.method if trainer else "-")
              + ("" if device.type == "cuda" else f", {run['threads']} CPU thread(s)"))
    accumulate = run["train"]["accumulate"]
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": key.run_id,
        "task": key.task,
        "variant": key.variant,
        "method": key.method,
        "label": key.label,
        "seed": key.seed,
        "stage": key.stage,
        "trial": (run.get("tuning") or {}).get("trial"),
        "config_hash": config_hash(run),
        "status": status,
        "message": message,
        "accuracy": {
            "best_val": trainer.best["val_acc"] if trainer and trainer.best["step"] is not None else None,
            "test": test_acc,
            "checkpoint": getattr(trainer, "tested", None) if test_acc is not None else None,
            "test_confusion": getattr(trainer, "test_confusion", None) if test_acc is not None else None,
            "best_step": trainer.best["step"] if trainer else None,
        },
        "baselines": baselines,
        "training": {
            "steps_planned": trainer.cfg.steps if trainer else run["train"]["steps"],
            "steps_done": int(steps_done),
            "wall_s": round(wall_s, 3),
            "curve": "curve.csv" if trainer else None,
            "checkpoint": "best.pt" if trainer and trainer.best["state"] is not None else None,
            "resumed_from_step": getattr(trainer, "resumed_from_step", None),
            "precision": getattr(trainer, "precision", None),
            "accumulate": accumulate,
            "micro_batch": used // accumulate,
            "effective_batch": used,
            "batch_note": getattr(trainer, "batch_note", None),
            "compiled": getattr(trainer, "compiled", None),
            "optimizer": getattr(trainer, "optimizer_kind", None),
            "float32_matmul_precision": getattr(trainer, "matmul_precision", None),
            "sdpa_kernels": getattr(trainer, "sdpa_kernels", None),
            **kernel_fields(getattr(trainer, "attention_kernel", None), ""),
            **kernel_fields(getattr(trainer, "eval_attention_kernel", None), "eval_"),
            "memory_cap_bytes": memory_cap["bytes"] if memory_cap else None,
            "memory_cap_method": memory_cap["method"] if memory_cap else None,
            **budget_fields(run, trainer, int(steps_done)),
        },
        "efficiency": {
            "train_steps_per_s": steps_per_s,
            "train_tokens_per_s": steps_per_s * batch * n if steps_per_s else None,
            "eval_tokens_per_s": trainer.eval_tokens / eval_time if trainer and eval_time > 0 else None,
            "step_time_median_s": step_median,
            "timing_method": timing,
            "peak_memory_bytes": mem.peak_bytes,
            "peak_memory_reserved_bytes": mem.reserved_bytes,
            "peak_memory_method": mem.method + PLACED_DATA_NOTE,
            "device_data_bytes": getattr(trainer, "device_data_bytes", None) if trainer else None,
            "params": count_parameters(trainer.model) if trainer else None,
            "attention_flops_fwd": flops,
        },
        "data": {k: v for k, v in data.meta().items()
                 if k in ("source", "seq_len", "vocab_size", "num_classes", "sizes", "label_names")}
                | {"key": run["task"]["data_key"]},
        "config": run,
        "variant_origin": variant_origin(run["variant"].get("source")),  # not in config_hash: hashes stay
        **(extra or {}),
        "environment": capture(device),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


#: the columns of ``curve.csv``, one row per evaluation: elapsed_s is the wall time since training started,
#: evaluation included; train_s the training-step time so far, evaluation excluded; train_flops the FLOPs of
#: the steps so far (steps x flops_per_step; empty when they were not counted)
CURVE_FIELDS = ["step", "lr", "train_loss", "val_loss", "val_acc", "elapsed_s", "train_s", "train_flops"]


def write_curve(path: Path, rows: list[dict[str, Any]]) -> None:
    """The curve rows (``CURVE_FIELDS``) as ``curve.csv`` at ``path``, written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CURVE_FIELDS)  # a row from before train_s / train_flops: empty there
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def baselines(data: PreparedData) -> dict[str, Any]:
    """Chance, the training set's majority class, and that class's test accuracy (None where the data holds
    no test split: a tuning trial's, ``withhold_test``)."""
    train_labels = data.splits["train"]["labels"]
    majority = int(torch.bincount(train_labels, minlength=data.num_classes).argmax())
    test = data.splits.get("test")
    return {"chance": 1.0 / data.num_classes, "majority_class": majority,
            "majority_test_acc": float((test["labels"] == majority).float().mean()) if test else None}
