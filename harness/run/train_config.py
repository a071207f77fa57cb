"""A run's training settings (``train:``): ``TrainConfig``, the one source of their defaults and
descriptions (the config schema is generated from it), and what they define before any step runs:
the batch a step really uses (``effective_batch``) and the learning-rate schedule (``lr_factor``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from attnbench.harness.core.registry import param


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and evaluation schedule."""

    steps: int = param(1000, "optimiser steps (with a budget: replaced by a steps or flops budget, the upper bound "
                       "of a seconds budget)", minimum=1)
    budget: dict[str, float] = param(
        {}, "what the run trains for, exactly one of: {steps: K}, K optimiser steps (as steps: K); {seconds: S}, "
        "until its training-step time (evaluation excluded: the curve's and record's train_s) reaches S, checked "
        "after every step, so it stops at the first step past S (on CUDA within the few steps the host runs ahead "
        "of the device: the step timer's events are read at each evaluation and, in between, the host's clock "
        "around each step is added to them; they are read, a synchronisation, only when that says S is reached), "
        "steps staying an upper bound, and the LR decay "
        "following the fraction of S used since warm-up "
        "ended (a budget-based schedule, as Cramming, Geiping & Goldstein 2022; warm-up stays in steps); or "
        "{flops: F}, max(1, floor(F / flops_per_step)) steps, which is also the LR schedule's horizon (steps is "
        "then unused). flops_per_step: the FLOPs of one training step, forward and backward of its batch, all "
        "micro-batches, counted once per run with torch.utils.flop_counter (the record's training.flops_method "
        "says how, or why not). {} (default): steps optimiser steps. The record's training.budget says which "
        "and what the run reached; time_limit_min stays a separate safety limit (status timeout)")
    batch_size: int = param(32, "training batch size", minimum=1)
    eval_batch_size: int = param(128, "batch size for validation and test", minimum=1)
    lr: float = param(1.0e-3, "peak learning rate (AdamW)", exclusiveMinimum=0.0)
    weight_decay: float = param(0.01, "AdamW weight decay", minimum=0.0)
    betas: tuple[float, float] = param((0.9, 0.98), "AdamW betas: [beta1, beta2], each in [0, 1)", minItems=2,
                                     maxItems=2, minimum=0.0, exclusiveMaximum=1.0)
    eps: float = param(1.0e-8, "AdamW epsilon (LRA: 1e-9)", exclusiveMinimum=0.0)
    warmup_steps: int = param(100, "linear warm-up steps from 0 to lr", minimum=0)
    schedule: Literal["cosine", "linear", "constant", "rsqrt"] = param("cosine", "decay after warm-up: cosine or "
                                                                       "linear to 0 at the last step, none (constant), "
                                                                       "or rsqrt: lr * sqrt(warmup_steps / step), "
                                                                       "LRA's text-task schedule (its base 0.05 is "
                                                                       "lr * sqrt(warmup_steps))")
    grad_clip: float = param(1.0, "clip the global gradient norm to this (0 = off)", minimum=0.0)
    eval_every: int = param(100, "evaluate on the validation split every this many steps (and at the end)", minimum=1)
    test_checkpoint: Literal["best", "final"] = param(
        "best", "the weights the test split is evaluated on, once: the best-validation checkpoint, or the weights "
        "training ended with (LRA's choice; a diverged run still tests its best checkpoint); recorded in the "
        "record's accuracy.checkpoint")
    timing_skip_steps: int = param(5, "first steps left out of the steady-state throughput", minimum=0)
    time_limit_min: float = param(0.0, "stop with status 'timeout' after this many minutes of training (0 = none)",
                                  minimum=0.0)
    accumulate: int = param(1, "micro-batches per optimiser step: the step's batch_size examples go through the "
                            "model in this many equal parts (it must divide batch_size), gradients summed, so a "
                            "batch that does not fit in memory at once still gives the same update", minimum=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = param(
        "auto", "autocast precision of forward passes: fp32 (none), bf16, or fp16 (with a gradient scaler); auto: "
        "bf16 on a CUDA device that supports it, fp32 elsewhere. Variants keep their sensitive parts (linear's "
        "sums, LSH's hashing and softmax) in float32 whatever this says")
    tf32: bool = param(True, "on CUDA devices of compute capability >= 8.0, float32 matmuls use TF32 tensor cores "
                       "(torch.set_float32_matmul_precision('high')); the setting used is recorded")
    compile: bool = param(False, "compile the model with torch.compile (model.compile(): state-dict keys and "
                          "checkpoints are unchanged); the first steps then include compilation, so raise "
                          "timing_skip_steps")
    memory_cap_mb: int = param(0, "memory the training job may take, in MiB (0: 80% of the machine's RAM on a CPU, of "
                               "the GPU's memory on CUDA): an allocation past it ends the run as an 'oom' record "
                               "instead of taking the machine down. CPU: the address space the job may add after it "
                               "starts (RLIMIT_AS); CUDA: torch's per-process memory fraction (host memory uncapped)",
                               minimum=0)
    checkpoint_every: int = param(0, "save a resume checkpoint (<run dir>/checkpoint/last.pt) every this many "
                                  "optimiser steps, so that a killed run continues from it when run again; removed "
                                  "when the run ends ok, diverged or timed out (0 = off)", minimum=0)


def effective_batch(batch_size: int, accumulate: int, n_train: int) -> tuple[int, str | None]:
    """The batch a step really uses, and why it is not ``batch_size`` (None when it is): a batch
    cannot hold more examples than the training split, and stays a multiple of ``accumulate``."""
    if batch_size <= n_train:
        return batch_size, None
    used = max(accumulate, n_train // accumulate * accumulate)
    return used, (f"batch_size {batch_size} is larger than the {n_train} training examples: each step used "
                  f"{used}" + (f" ({accumulate} micro-batches of {used // accumulate})" if accumulate > 1 else ""))


def lr_factor(step: int, cfg: TrainConfig, progress: float | None = None) -> float:
    """Multiplier of the peak lr at optimiser step ``step`` (0-based). ``progress``: how far the decay
    has gone, in [0, 1], where it follows something other than the steps (a seconds budget's time); by
    default (step - warmup_steps) / (steps - warmup_steps)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "rsqrt":
        return math.sqrt(max(1, cfg.warmup_steps) / (step + 1))
    if progress is None:
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    if cfg.schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))
