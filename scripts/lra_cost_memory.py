"""The memory table of scripts/lra_cost.py (whose doc says what is counted and how): the bytes of the attention's
quadratic tensors of each run on a GPU, in training and in evaluation, against the cap a run allocates under, and
the ``train.accumulate`` / ``train.eval_batch_size`` that would fit them."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from lra_cost_time import task_shape

from attnbench.harness.config import resolve_run
from attnbench.harness.measure.memory import cuda_memory_cap
from attnbench.variants import build_attention

#: the GPU the memory table is for: an A100 or H100 of 80 GB (GB = 1e9 bytes here)
GPU_MEMORY_GB = 80.0
#: the share of the training cap that a suggestion gives the attention's quadratic tensors (the rest: parameters,
#: optimiser state, O(N x d) activations, the backward's own N x N gradients, the allocator's rounding)
FIT_SHARE = 0.75
#: the dtype a run's forward computes in under ``train.precision`` on a GPU (auto: bf16 on Ampere and later)
PRECISION_DTYPE = {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class RunMemory:
    """The attention's quadratic tensors of one run on a GPU (scripts/lra_cost.py's doc), in bytes, against the cap of
    the GPU's memory that a run allocates under, and the settings that would fit them into FIT_SHARE of it."""

    task: str
    label: str
    seq_len: int
    paired: bool
    batch: int
    accumulate: int
    eval_batch: int
    train_bytes: int
    eval_bytes: int
    cap: int
    #: the smallest ``train.accumulate`` (a divisor of the batch) whose training fits; None: not even one example
    fit_accumulate: int | None
    #: the largest ``train.eval_batch_size`` (at most the configured one) that fits; None: not even one example
    fit_eval_batch: int | None

    @property
    def budget(self) -> float:
        return FIT_SHARE * self.cap

    def advice(self) -> str:
        """'fits', or 'tight' (over FIT_SHARE of the cap) / '**oom**' (over the cap) with the settings that fit."""
        worst = max(self.train_bytes, self.eval_bytes)
        if worst <= self.budget:
            return "fits"
        fixes = []
        if self.train_bytes > self.budget:
            fixes.append(f"accumulate {self.fit_accumulate}" if self.fit_accumulate else "no accumulate fits")
        if self.eval_bytes > self.budget:
            fixes.append(f"eval_batch_size {self.fit_eval_batch}" if self.fit_eval_batch
                         else "no eval_batch_size fits")
        return ("**oom**" if worst > self.cap else "tight") + ": " + ", ".join(fixes)


def run_memory(config: dict, task: str, variant: str, method: str = "labels",
               gpu_memory_gb: float = GPU_MEMORY_GB) -> RunMemory:
    """The attention memory of one run of ``config`` on a GPU of ``gpu_memory_gb`` (GB, 1e9 bytes): training at
    its micro-batch (a distilled student's teacher runs its evaluation forward there too) and evaluation at its
    ``eval_batch_size``, both on batches with padding, at the dtype of its ``train.precision``."""
    run = resolve_run(config, task, variant, 0, method)
    shape = task_shape(task, run["task"]["data"])
    train, towers = run["train"], 2 if shape.paired else 1
    kw = {"padded": True, "dtype": PRECISION_DTYPE[train["precision"]], "device": "cuda"}

    def stack(settings: dict):
        model = settings["model"]
        n = shape.seq_len + (model["pooling"] == "cls")
        attn = build_attention(settings["variant"]["name"], model["dim"], model["heads"],
                               settings["variant"]["params"], max_len=n, dropout=model["attn_dropout"])
        return lambda examples, training: attn.stack_bytes(model["layers"], towers * examples, n, training=training,
                                                           **kw)

    student = stack(run)
    teacher = stack(resolve_run(config, task, run["method"]["teacher"], 0)) if method == "distill" else None

    def train_bytes(examples: int) -> int:
        return max(student(examples, True), teacher(examples, False) if teacher else 0)

    def eval_bytes(examples: int) -> int:
        return student(examples, False)

    cap = cuda_memory_cap(None, int(gpu_memory_gb * 1e9), int(gpu_memory_gb * 1e9))
    batch, accumulate, eval_batch = train["batch_size"], train["accumulate"], train["eval_batch_size"]
    fit_accumulate = next((k for k in range(1, batch + 1)
                           if batch % k == 0 and train_bytes(batch // k) <= FIT_SHARE * cap), None)
    fit_eval_batch = next((e for e in range(eval_batch, 0, -1) if eval_bytes(e) <= FIT_SHARE * cap), None)
    label = variant if method == "labels" else f"distilled[{variant}]"
    return RunMemory(task, label, shape.seq_len, shape.paired, batch, accumulate, eval_batch,
                     train_bytes(batch // accumulate), eval_bytes(eval_batch), cap, fit_accumulate, fit_eval_batch)


def config_memory(config: dict, gpu_memory_gb: float = GPU_MEMORY_GB) -> list[RunMemory]:
    """Every run of the config (as ``config_costs`` orders them) whose attention forms quadratic tensors."""
    out = []
    for task in config["tasks"]:
        runs = [(v, "labels") for v in config["variants"]] + [(v, "distill") for v in config["distill"]["students"]]
        out += [m for v, method in runs if (m := run_memory(config, task, v, method, gpu_memory_gb)).train_bytes
                or m.eval_bytes]
    return out


def fmt_gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:,.1f} GB"


def memory_table(memory: list[RunMemory], gpu_memory_gb: float = GPU_MEMORY_GB) -> str:
    """One row per run whose attention forms quadratic tensors: its micro-batch and the bytes of those tensors in
    training, its evaluation batch and theirs in evaluation, and whether they fit a GPU of ``gpu_memory_gb``."""
    cap = fmt_gb(cuda_memory_cap(None, int(gpu_memory_gb * 1e9), int(gpu_memory_gb * 1e9)))
    head = ["task", "run", "N", "batch / accumulate", "training", "eval_batch_size", "evaluation",
            f"{gpu_memory_gb:g} GB GPU (cap {cap})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in memory:
        towers = " (x2 towers)" if m.paired else ""
        lines.append("| " + " | ".join([m.task, m.label, f"{m.seq_len:,}", f"{m.batch} / {m.accumulate}{towers}",
                                        fmt_gb(m.train_bytes), f"{m.eval_batch}{towers}", fmt_gb(m.eval_bytes),
                                        m.advice()]) + " |")
    return "\n".join(lines)
