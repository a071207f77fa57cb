"""The trainer's state and its training step: the model, AdamW (``harness.run.optimiser``) under the
warm-up-then-decay schedule (``harness.run.train_config.lr_factor``), the shuffled batches, and one
optimiser step (forward and backward over ``train.accumulate`` micro-batches, gradient clipping, the
update). What the first steps note once per run for its record is here too: the FLOPs of a step,
counted before the first and outside its timing (``count_step_flops``), the attention kernel the first
step ran and the SDPA kernels of the second.

``Trainer`` (``harness.run.trainer``) adds evaluation and the loop to ``TrainerSteps``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attnbench.harness.core import watchdog
from attnbench.harness.measure.flops import count_flops
from attnbench.harness.measure.sdpa_kernels import SdpaKernels
from attnbench.harness.measure.timing import LazyStepTimer
from attnbench.harness.run import checkpoint, precision
from attnbench.harness.run.batches import DeviceSplit, place_splits
from attnbench.harness.run.budget import Budget, TrainClock
from attnbench.harness.run.model import EncoderClassifier, model_for_run
from attnbench.harness.run.optimiser import adamw
from attnbench.harness.run.train_config import TrainConfig, effective_batch, lr_factor
from attnbench.tasks.base import PreparedData
from attnbench.variants.lib.kernels import KernelLog

#: a training step: (inputs, labels, whether any token is padding) -> the batch's mean loss, on the device
StepFunction = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]

#: how a run's ``flops_per_step`` is counted (``Trainer.count_step_flops``), for its record
STEP_FLOPS_METHOD = ("torch.utils.flop_counter.FlopCounterMode over one training step's forward and backward passes "
                     "before the first step, outside timing (torch's CPU flash attention counted with its SDPA "
                     "formulas; the optimiser's elementwise update not counted)")


class TrainerSteps:
    """A run's trainer up to its steps: the state one run trains with (model, optimiser, schedule, batches,
    timers, what was recorded so far) and one training step. ``Trainer`` adds evaluation and the loop; a
    subclass of it changes what is trained or how the loss is computed by overriding ``build_model`` and
    ``loss``."""

    #: what one timed training step does, for the record's timing method
    step_work = "forward, backward, clip, AdamW"

    def __init__(self, run: dict[str, Any], data: PreparedData, device: torch.device,
                 splits: dict[str, DeviceSplit] | None = None) -> None:
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
        self.opt, self.optimizer_kind = adamw(self.model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                              eps=cfg.eps, weight_decay=cfg.weight_decay, device=device)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: self.lr_at(s))
        self.gen = torch.Generator().manual_seed(run["seed"])
        self.splits = splits if splits is not None else place_splits(data, device)
        self.batch_size, self.batch_note = effective_batch(cfg.batch_size, cfg.accumulate, self.splits["train"].n)
        self.eval_timer = LazyStepTimer(device)
        self.eval_tokens = 0
        self.sdpa_kernels: str | None = None  # the SDPA kernels a training step ran (recorded once)
        # the attention kernel a training step and an evaluation pass ran, and why (recorded once each)
        self.attention_kernel: dict[str, str] | None = None
        self.eval_attention_kernel: dict[str, str] | None = None
        self.curve: list[dict[str, Any]] = []
        # the best validation accuracy so far, its step and the weights then (on the CPU)
        self.best: dict[str, Any] = {"val_acc": -1.0, "step": None, "state": None}
        self.tested: str | None = None  # the checkpoint the test split was evaluated on: best or final
        self.step = 0  # the step being run (or last finished)
        # this epoch's permutation of the training split and the place in it
        self.perm: torch.Tensor | None = None
        self.pos = 0
        # training losses since the last evaluation, on the device (floats: read back into a resumed run)
        self.losses: list[torch.Tensor | float] = []
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

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        """Endless shuffled training batches (a new permutation every epoch), on the device. The
        permutation is drawn on the host (the same on every device, and a checkpoint holds it) and
        staged on the device once per epoch; each step indexes with a slice of both."""
        split = self.splits["train"]
        bs = self.batch_size
        staged: torch.Tensor  # the permutation where ``batch`` indexes with it (``stage``): set in the first pass
        staged_for: torch.Tensor | None = None
        while True:  # the position is kept in self.perm / self.pos, so that a checkpoint holds it
            if self.perm is None or self.pos + bs > split.n:  # drop the ragged last batch: fixed shapes
                self.perm, self.pos = torch.randperm(split.n, generator=self.gen), 0
            if staged_for is not self.perm:  # a new epoch, or a permutation restored from a checkpoint
                staged, staged_for = split.stage(self.perm), self.perm
            at = slice(self.pos, self.pos + bs)
            self.pos += bs
            yield split.batch(self.perm[at], staged[at])

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, padded: bool,
                         scale: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The forward and backward passes of a step: (x, y) in ``train.accumulate`` equal micro-batches,
        each loss divided by their number and (``scale``, the gradient scaler's) scaled before its backward,
        gradients summed; returns the batch's mean loss as a device tensor (not read here)."""
        k = self.cfg.accumulate
        total: torch.Tensor | None = None
        for xm, ym in zip(x.chunk(k), y.chunk(k), strict=True):
            with precision.autocast(self.precision, self.device):
                loss = self.loss(xm, ym, padded) / k
            (scale(loss) if scale else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        assert total is not None  # a batch has at least one example: at least one micro-batch ran
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

    def next_step(self) -> StepFunction:
        """The step function of the next training step: the first records its attention kernel, the second its
        SDPA kernels (each once per process), then plain steps."""
        if self.attention_kernel is None:
            return self.first_step
        return self.sdpa_step if self.sdpa_kernels is None else self.train_step

    def kernel_probe(self, x: torch.Tensor, padded: bool, training: bool = False) -> dict[str, str]:
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

    @property
    def device_data_bytes(self) -> int:
        """Bytes of the data splits copied to the device (0 on a CPU, where they are used in place)."""
        return sum(split.device_bytes for split in self.splits.values())
