"""The training loop: AdamW, warm-up then decay, gradient clipping, evaluation every K
steps, the best-validation checkpoint kept and tested once at the end, for the run's budget
(``train.budget``: steps, seconds of training, or training FLOPs; ``attnbench.harness.run.budget``).

Every run counts the FLOPs of one training step once, before its first step and outside its timing
(``Trainer.count_step_flops``), so that its curve (``curve.csv``) carries, beside each evaluation's step
and wall time, the training-step time and the FLOPs of training so far.

``train_run`` never raises for an outcome of the run itself: running out of memory, a
non-finite loss, the time limit, or an unexpected error each end in a record with the
matching status, so the pipeline goes on and the report shows what happened.

With ``train.checkpoint_every`` set, a run killed part-way resumes from its last checkpoint
when run again (``attnbench.harness.run.checkpoint``).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import random
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from attnbench.harness.core import locks, watchdog
from attnbench.harness.core.errors import UserError, WriteError
from attnbench.harness.core.io import atomic_torch_save, atomic_write_text
from attnbench.harness.core.registry import param
from attnbench.harness.measure.flops import count_flops
from attnbench.harness.measure.memory import PeakMemory, is_out_of_memory, memory_cap
from attnbench.harness.measure.sdpa_kernels import SdpaKernels
from attnbench.harness.measure.timing import LazyStepTimer
from attnbench.harness.results.records import RECORD_NAME, RunKey, run_stage, write_record
from attnbench.harness.run import checkpoint, precision
from attnbench.harness.run.batches import DeviceSplit, place_splits
from attnbench.harness.run.budget import Budget, TrainClock
from attnbench.harness.run.model import EncoderClassifier, model_for_run
from attnbench.harness.run.record import build_record
from attnbench.tasks.base import PreparedData
from attnbench.variants.lib.kernels import KernelLog


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
    betas: tuple[float, ...] = param((0.9, 0.98), "AdamW betas: [beta1, beta2], each in [0, 1)", minItems=2,
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


#: the lock file that makes a run folder one process's at a time (``own_run_folder``)
RUN_LOCK = ".lock"
#: seconds past ``train.time_limit_min`` after which a step still running is interrupted (``Trainer.fit``): one
#: of usual length ends sooner, is counted, and the limit stops the run after it
LIMIT_SLACK_S = 2.0


class Diverged(Exception):
    pass


class TimeLimit(Exception):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device "
                           f"(torch {torch.__version__}); use device: cpu or auto")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


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


class Log:
    """A progress bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, desc: str, bar: bool | None = None):
        self.bar = None
        if bar if bar is not None else sys.stderr.isatty():
            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True)

    def step(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def total(self, steps: int) -> None:
        """The steps the run plans, known once its budget is (a FLOPs budget's after the count)."""
        if self.bar is not None:
            self.bar.total = steps
            self.bar.refresh()

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Trains the model of one run on its labels. A subclass changes what is trained or how the
    loss is computed by overriding ``build_model`` and ``loss``; the loop, evaluation,
    checkpointing and every outcome (ok, oom, diverged, timeout, failed) stay here.

    The steady-state loop never reads a device tensor: the training losses stay on the device
    until the next evaluation (where a non-finite one ends the run as diverged, at the step it
    first appeared), the step timer reads CUDA events lazily, and whether a batch is padded is
    known from host-side flags. So on a GPU the host runs ahead and queues the next steps while
    the device works."""

    #: what one timed training step does, for the record's timing method
    step_work = "forward, backward, clip, AdamW"

    def __init__(self, run: dict, data: PreparedData, device: torch.device,
                 splits: dict[str, DeviceSplit] | None = None):
        """``splits``: the data's splits already placed for ``device`` (``place_splits``; None: placed here)."""
        self.run, self.data, self.device = run, data, device
        self.cfg = cfg = TrainConfig(**{**run["train"], "betas": tuple(run["train"]["betas"])})
        self.budget = Budget.of(run["train"])
        self.step_timer = LazyStepTimer(device)
        self.clock = TrainClock(self.step_timer)  # train_s (a resumed run's starts where its checkpoint was)
        self.warmup_end_s: float | None = None  # train_s when warm-up ended (a seconds budget's decay starts)
        self.flops_per_step: int | None = None  # one training step's FLOPs (count_step_flops), None: not counted
        self.flops_method: str | None = None  # how they were counted, or why not; None: not yet tried
        self.precision = precision.resolve_precision(cfg.precision, device)
        self.matmul_precision = precision.configure_float32_matmul(cfg.tf32, device)
        self.scaler = precision.grad_scaler(self.precision, device)
        self.model = self.build_model().to(device)
        self.compiled = False
        if cfg.compile:
            why_not = precision.compile_unavailable(device)
            if why_not:
                raise RuntimeError(f"train.compile: {why_not}; set compile: false")
            self.model.compile()  # in place: the state dict keeps its keys
            self.compiled = True
        self.opt, self.optimizer_kind = precision.adamw(self.model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                                        eps=cfg.eps, weight_decay=cfg.weight_decay, device=device)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: self.lr_at(s))
        self.gen = torch.Generator().manual_seed(run["seed"])
        self.splits = splits if splits is not None else place_splits(data, device)
        self.batch_size, self.batch_note = effective_batch(cfg.batch_size, cfg.accumulate, self.splits["train"].n)
        self.eval_timer = LazyStepTimer(device)
        self.eval_tokens = 0
        self.sdpa_kernels: str | None = None  # the SDPA kernels a training step ran (recorded once)
        # the attention kernel a training step and an evaluation pass ran, and why (recorded once each)
        self.attention_kernel: dict | None = None
        self.eval_attention_kernel: dict | None = None
        self.curve: list[dict] = []
        self.best = {"val_acc": -1.0, "step": None, "state": None}
        self.tested: str | None = None  # the checkpoint the test split was evaluated on: best or final
        self.step = 0  # the step being run (or last finished)
        self.perm, self.pos = None, 0  # this epoch's permutation of the training split and the place in it
        self.losses: list[torch.Tensor] = []  # training losses since the last evaluation, on the device
        self.elapsed_s = 0.0  # training time before this process (resumed runs)
        self.resumed_from_step: int | None = None
        self.checkpoint_path: Path | None = None  # where fit saves resume checkpoints (checkpoint_every)
        self.checkpoint_key = ""  # and their checkpoint.resume_hash

    def lr_at(self, step: int) -> float:
        """``lr_factor`` at optimiser step ``step``. Under a seconds budget the decay follows the fraction of the
        budget used since warm-up ended (``warmup_end_s``, taken the first time the decay is asked for)."""
        if self.budget.kind != "seconds" or step < self.cfg.warmup_steps:
            return lr_factor(step, self.cfg)
        used = self.clock.estimate()
        if self.warmup_end_s is None:
            self.warmup_end_s = used
        span = self.budget.limit - self.warmup_end_s
        return lr_factor(step, self.cfg, min(1.0, max(0.0, (used - self.warmup_end_s) / span)) if span > 0 else 1.0)

    def build_model(self) -> EncoderClassifier:
        """The model the run config describes, freshly initialised (seeded by the caller)."""
        return model_for_run(self.run, self.data)

    def loss(self, x: torch.Tensor, y: torch.Tensor, padded: bool = True) -> torch.Tensor:
        """The training loss of one (micro-)batch, a mean over its examples (the model is in
        training mode); ``padded``: whether any token of ``x`` is padding."""
        return F.cross_entropy(self.model(x, padded), y)

    def batches(self):
        """Endless shuffled training batches (a new permutation every epoch), on the device. The
        permutation is drawn on the host (the same on every device, and a checkpoint holds it) and
        staged on the device once per epoch; each step indexes with a slice of both."""
        split = self.splits["train"]
        bs = self.batch_size
        staged, staged_for = None, None
        while True:  # the position is kept in self.perm / self.pos, so that a checkpoint holds it
            if self.perm is None or self.pos + bs > split.n:  # drop the ragged last batch: fixed shapes
                self.perm, self.pos = torch.randperm(split.n, generator=self.gen), 0
            if staged_for is not self.perm:  # a new epoch, or a permutation restored from a checkpoint
                staged, staged_for = split.stage(self.perm), self.perm
            at = slice(self.pos, self.pos + bs)
            self.pos += bs
            yield split.batch(self.perm[at], staged[at])

    @torch.no_grad()
    def evaluate(self, split_name: str) -> tuple[float, float]:
        """(accuracy, mean loss) on a split; the sums stay on the device until the end."""
        self.model.eval()
        split, bs = self.splits[split_name], self.cfg.eval_batch_size
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i in range(0, split.n, bs):
            x, y, padded = split.slice(i, i + bs)
            if self.eval_attention_kernel is None and self.compiled:
                self.eval_attention_kernel = self.kernel_probe(x, padded)
            noting = KernelLog() if self.eval_attention_kernel is None else contextlib.nullcontext()
            with noting, self.eval_timer.time(), precision.autocast(self.precision, self.device):
                logits = self.model(x, padded)
            if self.eval_attention_kernel is None:
                self.eval_attention_kernel = noting.as_record()
            self.eval_tokens += x.numel()
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(-1) == y).sum()
        self.model.train()
        return correct.item() / split.n, loss_sum.item() / split.n

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, padded: bool, scale=None) -> torch.Tensor:
        """The forward and backward passes of a step: (x, y) in ``train.accumulate`` equal micro-batches,
        each loss divided by their number and (``scale``, the gradient scaler's) scaled before its backward,
        gradients summed; returns the batch's mean loss as a device tensor (not read here)."""
        k = self.cfg.accumulate
        total = None
        for xm, ym in zip(x.chunk(k), y.chunk(k), strict=True):
            with precision.autocast(self.precision, self.device):
                loss = self.loss(xm, ym, padded) / k
            (scale(loss) if scale else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        return total

    def train_step(self, x: torch.Tensor, y: torch.Tensor, padded: bool = True) -> torch.Tensor:
        """One optimiser step over ``train.accumulate`` equal micro-batches of (x, y); returns the
        batch's mean loss as a device tensor (not read here)."""
        with self.step_timer.time():
            with watchdog.interruptible():  # the time limit may stop a step here, before its update
                self.opt.zero_grad(set_to_none=True)
                total = self.forward_backward(x, y, padded, self.scaler.scale)
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
        return total

    def first_step(self, x: torch.Tensor, y: torch.Tensor, padded: bool) -> torch.Tensor:
        """A training step that also records the attention kernel it ran and why (``variants.kernels``: a
        context variable the layers note their choice in, no dispatch mode). A compiled model notes nothing
        from inside its graph: its kernel comes from one uncompiled forward of the same micro-batch
        (``kernel_probe``)."""
        if self.compiled:
            self.attention_kernel = self.kernel_probe(x.chunk(self.cfg.accumulate)[0], padded, training=True)
            return self.train_step(x, y, padded)
        with KernelLog() as kernels:
            loss = self.train_step(x, y, padded)
        self.attention_kernel = kernels.as_record()
        return loss

    def sdpa_step(self, x: torch.Tensor, y: torch.Tensor, padded: bool) -> torch.Tensor:
        """The second training step, which also records the SDPA kernels it ran (``SdpaKernels``). Not on
        the first: that mode sits on torch's dispatch stack, and compiled code first called under it
        (FlexAttention on CUDA) compiles again when called without it. Where code is compiled (the model,
        or FlexAttention) the step runs plain and the record says why its SDPA kernels are not recorded."""
        if self.compiled:
            self.sdpa_kernels = "not recorded (compiled model)"
        elif "flex" in (self.attention_kernel or {}).get("attention_kernel", "").split(", "):
            self.sdpa_kernels = "not recorded (FlexAttention: compiled code, and SDPA runs only its global rows)"
        else:
            with SdpaKernels() as kernels:
                loss = self.train_step(x, y, padded)
            self.sdpa_kernels = kernels.names()
            return loss
        return self.train_step(x, y, padded)

    def next_step(self):
        """The step function of the next training step: the first records its attention kernel, the second its
        SDPA kernels (each once per process), then plain steps."""
        if self.attention_kernel is None:
            return self.first_step
        return self.sdpa_step if self.sdpa_kernels is None else self.train_step

    def kernel_probe(self, x: torch.Tensor, padded: bool, training: bool = False) -> dict:
        """The attention kernel of one uncompiled forward of ``x`` in training or evaluation mode, without
        gradients, its random draws (dropout) taken from a fork of the generators so the run's are untouched:
        what a compiled model's graph runs, noted outside it."""
        devices = [self.device] if self.device.type == "cuda" else []
        mode = self.model.training
        with torch.random.fork_rng(devices=devices), torch.no_grad(), KernelLog() as kernels, watchdog.interruptible():
            self.model.train(training)
            try:
                with precision.autocast(self.precision, self.device):
                    self.model.forward(x, padded)  # forward, not __call__: the module's compiled call is skipped
            finally:
                self.model.train(mode)
        return kernels.as_record()

    def count_step_flops(self) -> None:
        """Count one training step's FLOPs (``flops_per_step``, and how: ``flops_method``): the forward and
        backward passes of a step's batch, every micro-batch, under ``torch.utils.flop_counter.FlopCounterMode``
        (``measure.flops.count_flops``), on the first examples of the training split (every batch has the same
        shape), with the weights as they are. Outside the step timer; every random generator is put back where
        it was and the gradients are dropped, so the run computes what it would without the count. The
        optimiser's update is not counted (elementwise, as are the norms of clipping). A compiled model is
        counted running eagerly. Never raises: when the count fails, ``flops_per_step`` stays None and
        ``flops_method`` says why."""
        x, y, padded = self.splits["train"].slice(0, self.batch_size)
        eager = torch.compiler.set_stance("force_eager") if self.compiled else contextlib.nullcontext()
        try:
            with checkpoint.rng_kept(self), eager:
                flops, note = count_flops(lambda: self.forward_backward(x, y, padded), self.model, self.device)
            self.flops_per_step = flops
            self.flops_method = (f"{STEP_FLOPS_METHOD}, {self.batch_size} examples in {self.cfg.accumulate} "
                                 f"micro-batch(es){note}")
        except Exception as exc:  # a kernel the counter cannot run: the run goes on, its record says why
            self.flops_per_step = None
            self.flops_method = f"not counted: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        finally:
            self.opt.zero_grad(set_to_none=True)

    def budget_spent(self) -> bool:
        """Whether a seconds budget is spent: the clock's estimate says so, and its exact time (on CUDA read only
        then: the budget's only synchronisations, near its end) agrees."""
        limit = self.budget.limit
        return self.budget.kind == "seconds" and self.clock.estimate() >= limit and self.clock.exact() >= limit

    def finite_losses(self, last_step: int) -> list[float]:
        """The training losses since the last evaluation (those of the steps up to ``last_step``),
        read from the device at once; raises Diverged at the first non-finite one, naming its step."""
        if not self.losses:
            return []
        values = torch.stack([torch.as_tensor(v, device=self.device) for v in self.losses]).float().cpu()
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            first = int(bad[0, 0])
            self.step = last_step - len(values) + 1 + first
            raise Diverged(f"non-finite training loss {values[first].item()} at step {self.step}")
        return values.tolist()

    def fit(self, log: Log) -> int:
        """Train (from ``self.step``, later than 0 when resumed); returns the number of steps
        done. Raises Diverged / TimeLimit.

        First the FLOPs of a step are counted (``count_step_flops``; a resumed run has them from its checkpoint)
        and the steps planned follow from the budget (``Budget.steps``). A seconds budget is checked after each
        step (``budget_spent``): the step that spends it is the last, evaluated, and the run ends ok.

        ``train.time_limit_min`` stops a run with steps left to do: one that finished them all is ok, however
        long its last evaluation took. It is checked after each step, and a watchdog (``core.watchdog``) interrupts
        a forward or backward pass, or an evaluation, still running ``LIMIT_SLACK_S`` after it (a step that never
        returns): that step or evaluation is not counted. A step's update of the weights is never interrupted, so
        they stay those of the last step done. The steps since the last evaluation are evaluated after the limit,
        and the test pass is outside it (it runs the forward passes that the evaluations within the limit ran)."""
        if self.flops_method is None:
            self.count_step_flops()
        self.cfg = cfg = dataclasses.replace(self.cfg, steps=self.budget.steps(self.cfg.steps, self.flops_per_step))
        log.total(cfg.steps)
        t0 = time.perf_counter() - self.elapsed_s
        limit_s = cfg.time_limit_min * 60
        spent = False
        self.model.train()
        batches = self.batches()
        if self.step:
            log.step(self.step)  # resumed
        finished = self.step  # the last step whose loss is in self.losses (or was evaluated)
        with watchdog.Deadline(max(0.0, limit_s - self.elapsed_s) + LIMIT_SLACK_S if limit_s else None,
                               f"training {RunKey.of(self.run).run_id} (train.time_limit_min {cfg.time_limit_min:g}, "
                               f"plus {LIMIT_SLACK_S:g} s)") as limit:
            try:
                for step in range(self.step + 1, cfg.steps + 1):
                    self.step = step
                    x, y, padded = next(batches)
                    with watchdog.uninterrupted():  # the step is done whole, or not at all (``train_step``)
                        started = time.perf_counter()
                        self.losses.append(self.next_step()(x, y, padded))
                        self.clock.add_host(time.perf_counter() - started)
                        finished = step
                    log.step()
                    if step % cfg.eval_every == 0 or step == cfg.steps:
                        self.record_eval(step, time.perf_counter() - t0, log)
                    spent = self.budget_spent()
                    if spent:  # evaluated below, if not above
                        break
                    if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps
                            and self.checkpoint_path is not None):
                        checkpoint.save(self.checkpoint_path, self, key=self.checkpoint_key,
                                        losses=self.finite_losses(step), elapsed_s=time.perf_counter() - t0)
                    if step < cfg.steps and limit_s and (limit.fired or time.perf_counter() - t0 > limit_s):
                        break
            except Diverged:
                raise
            except Exception:  # a step that failed on a model that had already diverged: say diverged
                self.finite_losses(finished)
                raise
        self.step = finished
        if self.losses:  # the steps since the last evaluation (a step is evaluated once)
            self.record_eval(finished, time.perf_counter() - t0, log)
        if finished < cfg.steps and not spent:
            raise TimeLimit(f"time limit of {cfg.time_limit_min} min reached at step {finished} of {cfg.steps}"
                            + (" (the step or evaluation under way was interrupted and is not counted)"
                               if limit.expired else ""))
        return finished

    def record_eval(self, step: int, elapsed: float, log: Log) -> None:
        losses = self.finite_losses(step)
        val_acc, val_loss = self.evaluate("val")
        self.losses = []  # after the evaluation: one the time limit interrupts is done again after it
        row = {"step": step, "lr": self.sched.get_last_lr()[0], "train_loss": float(np.mean(losses)),
               "val_loss": val_loss, "val_acc": val_acc, "elapsed_s": round(elapsed, 3),
               "train_s": round(self.clock.exact(), 6),
               "train_flops": step * self.flops_per_step if self.flops_per_step is not None else None}
        self.curve.append(row)
        if val_acc > self.best["val_acc"]:
            self.best = {"val_acc": val_acc, "step": step,
                         "state": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}}
        log.step(0, train_loss=f"{row['train_loss']:.3f}", val_acc=f"{val_acc:.3f}")
        log.line(f"step {step}/{self.cfg.steps}  train_loss {row['train_loss']:.4f}  "
                 f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  best {self.best['val_acc']:.4f}@{self.best['step']}")

    def test(self, status: str) -> float | None:
        """Test accuracy of the weights ``train.test_checkpoint`` names (the final ones only after a run
        that did not diverge), measured once; ``self.tested`` says which were tested."""
        if self.cfg.test_checkpoint == "final" and status != "diverged" and self.step > 0:
            self.tested = "final"
            return self.evaluate("test")[0]
        if self.best["state"] is None:
            return None
        self.tested = "best"
        self.model.load_state_dict(self.best["state"])
        return self.evaluate("test")[0]

    @property
    def device_data_bytes(self) -> int:
        """Bytes of the data splits copied to the device (0 on a CPU, where they are used in place)."""
        return sum(split.device_bytes for split in self.splits.values())


#: how a run's ``flops_per_step`` is counted (``Trainer.count_step_flops``), for its record
STEP_FLOPS_METHOD = ("torch.utils.flop_counter.FlopCounterMode over one training step's forward and backward passes "
                     "before the first step, outside timing (torch's CPU flash attention counted with its SDPA "
                     "formulas; the optimiser's elementwise update not counted)")
#: the columns of ``curve.csv``, one row per evaluation: elapsed_s is the wall time since training started,
#: evaluation included; train_s the training-step time so far, evaluation excluded; train_flops the FLOPs of
#: the steps so far (steps x flops_per_step; empty when they were not counted)
CURVE_FIELDS = ["step", "lr", "train_loss", "val_loss", "val_acc", "elapsed_s", "train_s", "train_flops"]


def write_curve(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CURVE_FIELDS)  # a row from before train_s / train_flops: empty there
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def baselines(data: PreparedData) -> dict:
    """Chance, the training set's majority class, and that class's test accuracy (None where the data holds
    no test split: a tuning trial's, ``withhold_test``)."""
    train_labels = data.splits["train"]["labels"]
    majority = int(torch.bincount(train_labels, minlength=data.num_classes).argmax())
    test = data.splits.get("test")
    return {"chance": 1.0 / data.num_classes, "majority_class": majority,
            "majority_test_acc": float((test["labels"] == majority).float().mean()) if test else None}


def is_trial(run: dict) -> bool:
    """Whether ``run`` is a tuning trial (``tuning.stage`` tune): it trains and validates, never tests."""
    return run_stage(run)[0] == "tune"


def withhold_test(data: PreparedData) -> PreparedData:
    """``data`` without its test split (the tensors are shared, not copied): what a tuning trial trains on, so
    that nothing it does (training, validation, selection, its record) can read a test example."""
    return dataclasses.replace(data, splits={k: v for k, v in data.splits.items() if k != "test"})


def resume(trainer: Trainer, run: dict, inputs: dict | None, out_dir: Path, log: Log, rebuild) -> Trainer:
    """The trainer, set to save its checkpoints in ``out_dir`` and restored from the one there
    if that was made by this run; ``rebuild()`` makes a fresh trainer when restoring fails."""
    path, key = checkpoint.checkpoint_path(out_dir), checkpoint.resume_hash(run, inputs)
    state = checkpoint.load(path, run, key)
    if state is not None:
        try:
            checkpoint.restore(trainer, state)
            log.line(f"resuming from step {trainer.step} (checkpoint {path})")
        except Exception as exc:  # e.g. the code changed the model's layout since
            log.line(f"ignoring checkpoint {path}: cannot restore it ({type(exc).__name__}: {exc}); starting fresh")
            seed_everything(run["seed"], run["deterministic"])
            trainer = rebuild()
    trainer.checkpoint_path, trainer.checkpoint_key = path, key
    return trainer


def _failure(exc: BaseException, cap: dict | None, prefix: str = "") -> tuple[str, str]:
    """The status and message of a run that raised ``exc``: ``oom`` (naming the memory cap in force) or ``failed``."""
    message = f"{prefix}{type(exc).__name__}: {exc}"
    if not is_out_of_memory(exc):
        return "failed", message
    return "oom", message + (f" (memory cap {cap['bytes'] / 2 ** 20:.0f} MiB: train.memory_cap_mb)" if cap else "")


def train_run(run: dict, data: PreparedData, out_dir: Path, bar: bool | None = None, *,
              trainer_cls: type[Trainer] = Trainer, trainer_kwargs: dict | None = None,
              extra: dict | None = None) -> dict:
    """Train one (task, variant, seed) and return its record (also written to ``out_dir``).

    ``trainer_cls(run, data, device, splits=..., **trainer_kwargs)`` builds the trainer inside the measured,
    guarded section, so that its failures become records too. The data splits are placed for it just before
    the measurement starts, inside the guarded section: on a GPU the splits held there are then not in the
    run's peak, as the data a CPU run reads are not, and a trainer rebuilt on resuming does not place them
    again. ``extra``: record entries that a
    training method adds (what it took from other runs; none for a run trained from labels).
    Raises ``RunFolderBusy`` (and writes nothing) while another process trains in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_trial(run):
        data = withhold_test(data)
    lock = own_run_folder(out_dir, RunKey.of(run).run_id)
    try:
        return _train_run(run, data, out_dir, bar, trainer_cls, trainer_kwargs, extra)
    finally:
        locks.release(lock)


class RunFolderBusy(UserError):
    """Another process is training in the same run folder."""


def own_run_folder(out_dir: Path, run_id: str) -> int:
    """Lock ``out_dir/.lock`` for this process (released by closing the returned descriptor, or when the
    process ends): two trainers in one run folder would overwrite each other's checkpoints and record,
    as after ``snakemake --unlock`` while an orphaned job of a killed snakemake still runs."""
    path = out_dir / RUN_LOCK
    fd = locks.try_lock(path, info={"run_id": run_id})
    if fd is None:
        raise RunFolderBusy(f"run folder {out_dir} is in use: {run_id} is being trained by "
                            f"{locks.describe_owner(locks.lock_owner(path))}; wait for it to end, or stop that "
                            "process, then run again")
    return fd


def _train_run(run: dict, data: PreparedData, out_dir: Path, bar: bool | None, trainer_cls: type[Trainer],
               trainer_kwargs: dict | None, extra: dict | None) -> dict:
    status, message, trainer, steps_done = "ok", None, None, 0
    torch.set_num_threads(run["threads"])
    seed_everything(run["seed"], run["deterministic"])
    try:
        device = resolve_device(run["device"])
    except RuntimeError as exc:
        device, status, message = torch.device("cpu"), "failed", str(exc)
    mem = PeakMemory(device)
    wall0 = time.perf_counter()
    test_acc = None
    log = Log(run["train"]["steps"], f"{run['task']['name']}/{run['variant']['name']}/seed{run['seed']}", bar)
    cap = None
    if status == "ok":
        with memory_cap(device, run["train"]["memory_cap_mb"]) as cap:
            try:
                splits = place_splits(data, device)  # the data first: their bytes are not the run's
                with mem:
                    def make() -> Trainer:
                        return trainer_cls(run, data, device, splits=splits, **(trainer_kwargs or {}))

                    trainer = resume(make(), run, extra, out_dir, log, make)
                    steps_done = trainer.fit(log)
            except Diverged as exc:
                status, message = "diverged", str(exc)
            except TimeLimit as exc:
                status, message = "timeout", str(exc)
            except WriteError:  # a full disk is not the run's outcome: one line, no record, trained again later
                raise
            except Exception as exc:  # every outcome becomes a record
                status, message = _failure(exc, cap)
                log.line(traceback.format_exc())
            finally:
                log.close()
            if trainer is not None:  # a run that diverged or failed did not complete the step it stopped in
                steps_done = steps_done or max(0, trainer.step - (status in ("diverged", "oom", "failed")))
            if trainer is not None and status in ("ok", "diverged", "timeout") and not is_trial(run):
                try:
                    test_acc = trainer.test(status)
                except Exception as exc:  # the test pass's failure is a record too
                    status, message = _failure(exc, cap, "testing failed: ")
    if trainer is not None and trainer.best["state"] is not None:
        atomic_torch_save({"model": trainer.best["state"], "step": trainer.best["step"], "run": run},
                          out_dir / "best.pt")
    if trainer is not None:
        write_curve(out_dir / "curve.csv", trainer.curve)
    record = build_record(run=run, data=data, status=status, message=message, trainer=trainer,
                          test_acc=test_acc, steps_done=steps_done, mem=mem, device=device,
                          wall_s=time.perf_counter() - wall0, baselines=baselines(data),
                          step_work=trainer_cls.step_work, extra=extra, memory_cap=cap)
    write_record(out_dir / RECORD_NAME, record)
    if status in ("ok", "diverged", "timeout"):  # a re-run would end the same: nothing left to resume
        checkpoint.remove(out_dir)
    log.line(f"{record['run_id']}: status {status}"
             + (f", test accuracy {test_acc:.4f}" if test_acc is not None else "")
             + (f" ({message})" if message else ""))
    return record
