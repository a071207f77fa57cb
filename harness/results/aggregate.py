"""Collect every run record into one tidy table: ``results/summary.csv`` (+ ``.parquet``).

One row per run. ``variant`` is the run's label, the name the report shows (a distilled student
is ``distilled[<attention>]``); ``attention`` is the model's attention variant and ``method``
how it was trained. ``budget_kind``, ``budget_limit`` and ``budget_reached`` say what the run trained
for (``train.budget``; a record from before budgets trained for its planned steps) and what it reached;
``train_s`` is its training-step time (evaluation excluded), ``train_flops`` its training FLOPs
(``flops_per_step`` x steps done; empty where not counted). ``task`` is the task as runs name it
(``listops@256`` at one of a task's lengths: ``base_task``, ``length``, ``length_param``); ``stage`` is
``final`` or ``tune`` (a tuning trial, with no test accuracy), ``trial`` and ``point`` a trial's index and
settings (a tuned final run's: the selected trial's). ``variant_source``, ``variant_origin`` and
``variant_sha256`` say where a variant from outside the repository came from (``results.provenance``).
A self-pretrained run (method ``spt``) has its pretraining run's identity, cost and objective in the
``pretrain_*`` columns (``pretrain_train_s``: its training-step time; ``pretrain_masked_acc``: its best
masked-token accuracy on held-out training inputs).

A record is counted only as the run it is. One that cannot be read, or lies about itself (its
numbers, its identity, or the run folder it lies in: ``records.read_record``) is set aside
(``results.set_aside``). Given the plan (run_id -> config hash of every run the config asks for),
a record of a run the plan lacks, or with another config hash, is left out; so is a second record
of one run (the one in its own run folder is counted). Left-out records stay where they are and
are listed in ``summary.left_out.json``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from attnbench.harness.core.hashing import config_hash
from attnbench.harness.core.io import atomic_write_json, write_table
from attnbench.harness.results.provenance import origin_columns
from attnbench.harness.results.records import find_records, run_folder
from attnbench.harness.results.set_aside import readable
from attnbench.tasks.lib.lra_settings import ran_lra_settings
from attnbench.variants import VARIANTS

COLUMNS = [
    "task", "base_task", "length", "length_param", "variant", "attention", "method", "published_as", "mechanism_form",
    "seed", "stage", "trial", "point", "status", "message", "best_val_acc", "test_acc",
    "best_step", "tested_checkpoint", "chance_acc", "majority_test_acc", "steps_done", "steps_planned", "wall_s",
    "budget_kind", "budget_limit", "budget_reached", "train_s", "train_flops", "flops_per_step",
    "train_steps_per_s", "train_tokens_per_s", "eval_tokens_per_s", "peak_memory_mb",
    "peak_memory_reserved_mb", "peak_memory_method", "timing_method", "params", "layers", "attention_flops_fwd",
    "seq_len", "batch_size", "device", "device_name", "torch_threads", "torch", "cuda", "python", "host", "git_commit",
    "git_dirty", "invocation",
    # distilled students (empty otherwise): the teacher's numbers and the settings
    "teacher_run_id", "teacher_status", "teacher_test_acc", "teacher_train_tokens_per_s",
    "teacher_eval_tokens_per_s", "teacher_params", "teacher_layers", "distill_temperature", "distill_alpha",
    "config_hash", "setup_hash", "lra_settings", "record",
    # what the run's task ran on (the report's Data section): the same in every run of a task
    "data_source", "data_sizes", "data_classes", "data_tokenizer", "vocab_size",
    # a variant from outside the repository (empty otherwise): its source, origin and file hash (results.provenance)
    "variant_source", "variant_origin", "variant_sha256",
    # self-pretrained runs (method spt; empty otherwise): their pretraining run's identity, cost and masked-token
    # accuracy (the record's ``pretrain``), and its objective (``config.method.pretrain``)
    "pretrain_run_id", "pretrain_status", "pretrain_steps", "pretrain_train_s", "pretrain_wall_s",
    "pretrain_tokens_seen", "pretrain_masked_acc", "pretrain_peak_memory_mb", "pretrain_mask_rate",
    "pretrain_masking",
]
TEACHER_FIELDS = ["run_id", "status", "test_acc", "train_tokens_per_s", "eval_tokens_per_s", "params", "layers"]


def teacher_columns(record: dict) -> dict:
    teacher = record.get("teacher")
    if teacher is None:
        return {}
    method = record["config"].get("method", {})
    return {**{f"teacher_{k}": teacher[k] for k in TEACHER_FIELDS},
            "distill_temperature": method.get("temperature"), "distill_alpha": method.get("alpha")}


def pretrain_columns(record: dict) -> dict:
    """A self-pretrained run's pretraining (its record's ``pretrain``): run id, status, steps, training-step and
    wall time, tokens seen, best held-out masked-token accuracy, peak memory, and the objective's masking rate
    and kind (``config.method.pretrain``); nothing for other runs."""
    pretrain = record.get("pretrain")
    if pretrain is None:
        return {}
    objective = record["config"].get("method", {}).get("pretrain") or {}
    memory = pretrain["peak_memory_bytes"]
    return {"pretrain_run_id": pretrain["run_id"], "pretrain_status": pretrain["status"],
            "pretrain_steps": pretrain["steps_done"], "pretrain_train_s": pretrain["train_s"],
            "pretrain_wall_s": pretrain["wall_s"], "pretrain_tokens_seen": pretrain["tokens_seen"],
            "pretrain_masked_acc": pretrain["best_masked_acc"],
            "pretrain_peak_memory_mb": None if memory is None else memory / 2**20,
            "pretrain_mask_rate": objective.get("mask_rate"), "pretrain_masking": objective.get("masking")}


def budget_columns(training: dict) -> dict:
    """The run's budget (``training.budget``) and what it used; a record without one (older, or whose budget
    was invalid) trained for its planned steps."""
    budget = training.get("budget") or {"kind": "steps", "limit": training["steps_planned"],
                                        "reached": training["steps_done"]}
    return {"budget_kind": budget["kind"], "budget_limit": budget["limit"], "budget_reached": budget["reached"],
            **{k: training.get(k) for k in ("train_s", "train_flops", "flops_per_step")}}


def task_columns(task: dict) -> dict:
    """The registered task of a run's task, and the length it ran at where the task runs at several
    (``tasks.<task>.lengths``: the task is ``task@length``)."""
    return {"base_task": task["name"], "length": task.get("length"), "length_param": task.get("length_param")}


def data_columns(record: dict) -> dict:
    """What the run's data was: its source, split sizes (``train 8000 / val 500 / test 1000``), classes (their
    names where the record has them: records from before 2026-12 give the count), the tokenizer a text task
    set and the vocabulary size."""
    data = record["data"]
    names = data.get("label_names") or []
    classes = (f"{len(names)}: {', '.join(names)}" if names and len(names) == data["num_classes"]
               else str(data["num_classes"]))
    return {"data_source": data["source"],
            "data_sizes": " / ".join(f"{split} {n}" for split, n in data["sizes"].items()),
            "data_classes": classes, "data_tokenizer": record["config"]["task"]["data"].get("tokenizer"),
            "vocab_size": data["vocab_size"]}


def mechanism_form(record: dict) -> str | None:
    """The run's form of its mechanism: "LRA's code" where its attention is computed as LRA's released code
    does rather than as its paper defines it (one of its variant's ``paper_values`` set otherwise, or
    ``model.mask_padding`` off, as LRA's kernels that ignore the padding mask), else "paper"; None for a
    variant this checkout does not register."""
    config = record["config"]
    try:
        cls = VARIANTS.get(config["variant"]["name"]).cls
    except KeyError:
        return None
    lra = cls.lra_code_form(config["variant"]["params"]) or config["model"].get("mask_padding") is False
    return "LRA's code" if lra else "paper"


def stage_columns(record: dict) -> dict:
    """A tuning trial (stage tune) or a final run; the trial and its point (a tuned final run: the selected
    trial and point), as sorted JSON. A record from before tuning is a final run."""
    tuning = record["config"].get("tuning") or {}
    point = tuning.get("point")
    return {"stage": record.get("stage", "final"), "trial": tuning.get("trial"),
            "point": json.dumps(point, sort_keys=True) if point is not None else None}


def published_as(record: dict) -> str | None:
    """The model of LRA's published Table 1 that the run (its variant with its parameters, trained
    from labels as LRA's were) implements."""
    variant = record["config"]["variant"]
    if record["method"] != "labels":
        return None
    try:
        return VARIANTS.get(variant["name"]).cls.published_as(variant["params"])
    except KeyError:  # a record of a variant this checkout no longer registers
        return None


def setup_hash(record: dict) -> str:
    """The hash of the run's config without its seed: runs that share it differ only by seed (and
    machine), so their accuracies may be pooled."""
    return config_hash({k: v for k, v in record["config"].items() if k != "seed"})


def record_row(record: dict, path: Path) -> dict:
    eff, env = record["efficiency"], record["environment"]

    def mb(b: float | None) -> float | None:
        return None if b is None else b / 2**20

    return {
        "task": record["task"], **task_columns(record["config"]["task"]),
        "variant": record["label"], "attention": record["variant"],
        "method": record["method"], "published_as": published_as(record), "mechanism_form": mechanism_form(record),
        "seed": record["seed"], **stage_columns(record),
        "status": record["status"], "message": record["message"],
        "best_val_acc": record["accuracy"]["best_val"], "test_acc": record["accuracy"]["test"],
        "best_step": record["accuracy"]["best_step"],
        "tested_checkpoint": record["accuracy"].get("checkpoint", "best" if record["accuracy"]["test"] is not None
                                                    else None),
        "chance_acc": record["baselines"]["chance"], "majority_test_acc": record["baselines"]["majority_test_acc"],
        "steps_done": record["training"]["steps_done"], "steps_planned": record["training"]["steps_planned"],
        "wall_s": record["training"]["wall_s"], **budget_columns(record["training"]),
        "train_steps_per_s": eff["train_steps_per_s"], "train_tokens_per_s": eff["train_tokens_per_s"],
        "eval_tokens_per_s": eff["eval_tokens_per_s"],
        "peak_memory_mb": mb(eff["peak_memory_bytes"]),
        "peak_memory_reserved_mb": mb(eff["peak_memory_reserved_bytes"]),
        "peak_memory_method": eff["peak_memory_method"], "timing_method": eff["timing_method"], "params": eff["params"],
        "layers": record["config"]["model"]["layers"], "attention_flops_fwd": eff["attention_flops_fwd"],
        "seq_len": record["data"]["seq_len"], "batch_size": record["config"]["train"]["batch_size"],
        "device": env["device"], "device_name": env["device_name"], "torch_threads": env["torch_threads"],
        "torch": env["torch"], "cuda": env["cuda"], "python": env["python"], "host": env["host"],
        "git_commit": env["git"]["commit"], "git_dirty": env["git"]["dirty"], "invocation": env.get("invocation"),
        **teacher_columns(record),
        "config_hash": record["config_hash"], "setup_hash": setup_hash(record),
        "lra_settings": ran_lra_settings(record["config"]["task"]["name"], record["config"]["task"].get("data", {}),
                                         record["data"]["seq_len"]),
        **data_columns(record),
        **origin_columns(record),
        **pretrain_columns(record),
        "record": str(path),
    }


def _table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["task", "variant", "stage", "trial", "seed"], kind="stable").reset_index(drop=True)


def set_aside_file(out_csv: Path) -> Path:
    """The list of the records an aggregation set aside, beside its table (``summary.set_aside.json``)."""
    return Path(out_csv).with_suffix(".set_aside.json")


def left_out_file(out_csv: Path) -> Path:
    """The list of the records an aggregation left out, beside its table (``summary.left_out.json``)."""
    return Path(out_csv).with_suffix(".left_out.json")


class Aggregation(NamedTuple):
    """An aggregation's table, the records it set aside (``{"record", "moved_to", "reason"}``) and
    those it left out where they are (``{"record", "reason"}``)."""

    table: pd.DataFrame
    set_aside: list[dict]
    left_out: list[dict]


def counted(good: list[tuple[Path, dict]], plan: dict[str, str] | None,
            plan_name: str = "the plan") -> tuple[list[tuple[Path, dict]], list[dict]]:
    """The records to count, one per run of ``plan`` (run_id -> config hash; None: any run) with the
    plan's config hash, and the others, each with why it is left out. Of two records of one run, the
    one in its own run folder is counted (else the first)."""
    keep: dict[str, tuple[Path, dict]] = {}
    out = []
    for path, record in sorted(good, key=lambda pr: run_folder(pr[0]) is None):  # (stable) own folders first
        run_id, have = record["run_id"], record["config_hash"]
        if plan is not None and run_id not in plan:
            out.append({"record": str(path), "reason": f"{path}: {run_id} is not a run of {plan_name}"})
        elif plan is not None and have != plan[run_id]:
            out.append({"record": str(path), "reason": f"{path}: {run_id} has config hash {have}, {plan_name} "
                        f"plans it with {plan[run_id]} (a record of another config)"})
        elif run_id in keep:
            out.append({"record": str(path), "reason": f"{path}: a second record of {run_id}; "
                        f"{keep[run_id][0]} is counted"})
        else:
            keep[run_id] = (path, record)
    return list(keep.values()), out


def _listing(path: Path, entries: list[dict]) -> None:
    if entries:
        atomic_write_json(path, entries)
    else:
        path.unlink(missing_ok=True)  # a listing from an earlier aggregation no longer applies


def aggregate(records: list[Path] | Path, out_csv: Path, plan: dict[str, str] | None = None,
              plan_name: str = "the plan") -> Aggregation:
    """Aggregate the given record files, or every record under a folder (see the module docstring for
    which are counted; ``plan``: run_id -> config hash, None to count any run, once). The records set
    aside are listed in ``summary.set_aside.json`` (the report names them) and those left out in
    ``summary.left_out.json``, beside the table."""
    if isinstance(records, (str, Path)):
        records = list(find_records(Path(records)))
    good, aside = readable([Path(p) for p in records])
    good, left_out = counted(good, plan, plan_name)
    df = _table([record_row(record, path) for path, record in good])
    write_table(df, out_csv)
    _listing(set_aside_file(out_csv), aside)
    _listing(left_out_file(out_csv), left_out)
    return Aggregation(df, aside, left_out)
