"""Timing a run's work on this machine, in this process: a few training steps and an evaluation pass of the
run's model on random tokens of its data's shape (``calibrate_run``), and a few steps of one efficiency-sweep
case (``calibrate_case``).

A training step is the trainer's own (``harness.run.trainer.Trainer``: forward, backward, clip, AdamW, at the
run's precision and micro-batches), after an untimed one; a distilled student's adds its teacher's forward
pass. Times are wall times: on a machine that other work shares, the calibration sees the share of it the
pipeline's jobs will get while that work goes on. The caller's torch threads and random generators are put back
afterwards."""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from attnbench.harness.bench.case import Stepper, analytic_flops, backend_context, unavailable
from attnbench.harness.bench.settings import BenchConfig, Case
from attnbench.harness.estimate.data_shape import DataShape
from attnbench.harness.measure.timing import synchronize
from attnbench.harness.run.model import model_for_run
from attnbench.harness.run.pretrain import PretrainTrainer
from attnbench.harness.run.train import resolve_device
from attnbench.harness.run.trainer import Trainer
from attnbench.tasks import TASKS
from attnbench.tasks.base import PreparedData

#: timed steps per shape (after the untimed ones), fewer where they take longer than SHAPE_BUDGET_S together
TIMED_STEPS = 3
SHAPE_BUDGET_S = 1.0
#: seconds of timed steps per sweep case (a longer case of the same kind is extrapolated: ``sweep_times``)
CASE_BUDGET_S = 0.3
#: what counting a step's FLOPs before a run's first step costs, in steps (its forward and backward under
#: ``FlopCounterMode``, measured at about 3 plain steps on a CPU)
FLOPS_COUNT_STEPS = 3


@dataclass(frozen=True)
class RunTiming:
    """What one training run's work costs here. ``step_s``: one training step; ``eval_example_s``: one example of
    an evaluation pass (validation or test); ``setup_s``: what a run does once (building the model and
    optimiser, counting a step's FLOPs); ``flops_per_step`` (for a FLOPs budget's steps); ``source``: how it is
    known (calibrated, or the record it comes from)."""

    step_s: float
    eval_example_s: float
    setup_s: float
    flops_per_step: int | None
    source: str


@contextlib.contextmanager
def torch_kept(threads: int) -> Iterator[None]:
    """``threads`` torch threads and forked random generators inside; the caller's put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(before)


def timed(call: Callable[[], Any], device: torch.device, at_most: int, budget_s: float = SHAPE_BUDGET_S) -> float:
    """The median time of up to ``at_most`` calls (at least one; no more once ``budget_s`` is spent)."""
    times: list[float] = []
    while len(times) < at_most and (not times or sum(times) < budget_s):
        t0 = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def synthetic_data(shape: DataShape, task: str, n_train: int, n_eval: int) -> PreparedData:
    """Random tokens of ``shape`` (train, val and test splits of the sizes given). Text-like tasks get one pad
    token per example, so that their batches take the masked path that padded real batches take; pixel tasks
    (a ``zero_token``) have no padding, as their images."""
    gen = torch.Generator().manual_seed(0)
    pad = TASKS.get(task).cls.zero_token is None

    def split(n: int) -> dict[str, torch.Tensor]:
        dims = (n, 2, shape.seq_len) if shape.paired else (n, shape.seq_len)
        tokens = torch.randint(1, max(2, shape.vocab_size), dims, generator=gen)
        if pad:
            tokens[..., -1] = 0
        return {"tokens": tokens, "labels": torch.randint(0, shape.num_classes, (n,), generator=gen)}

    return PreparedData(splits={"train": split(n_train), "val": split(n_eval), "test": split(n_eval)},
                        seq_len=shape.seq_len, vocab_size=max(2, shape.vocab_size), num_classes=shape.num_classes,
                        paired=shape.paired)


def calibrate_run(run: dict[str, Any], shape: DataShape, teacher: dict[str, Any] | None = None) -> RunTiming:
    """Time a resolved run's steps and evaluation here (``teacher``: a distilled student's teacher run, whose forward
    pass each step adds; a pretraining run steps and evaluates its masked-token objective). ``setup_s`` is the time to
    build the trainer plus FLOPS_COUNT_STEPS steps (a run counts one step's FLOPs before its first, under a slower
    counting mode); the count itself is made only for a FLOPs budget, whose steps follow from it. Raises what building
    or stepping the model raises (a device it cannot use, out of memory)."""
    device = resolve_device(run["device"])
    train = run["train"]
    with torch_kept(run["threads"]):
        data = synthetic_data(shape, run["task"]["name"], 2 * train["batch_size"], train["eval_batch_size"])
        t0 = time.perf_counter()
        trainer = (PretrainTrainer if run["method"]["name"] == "pretrain" else Trainer)(run, data, device)
        build_s = time.perf_counter() - t0
        if "flops" in train.get("budget", {}):
            trainer.count_step_flops()
        batches = trainer.batches()
        trainer.train_step(*next(batches))  # the first step allocates the optimiser's state: untimed
        step_s = timed(lambda: trainer.train_step(*next(batches)), device, TIMED_STEPS)
        if teacher is not None:
            step_s += teacher_forward_s(teacher, data, device)
        trainer.evaluate("val")
        eval_s = timed(lambda: trainer.evaluate("val"), device, 1)
    return RunTiming(step_s, eval_s / data.splits["val"]["labels"].shape[0], build_s + FLOPS_COUNT_STEPS * step_s,
                     trainer.flops_per_step, "calibrated")


def first_use_s(run: dict[str, Any], shape: DataShape) -> float:
    """What building the first trainer in a process costs over building another (torch's set-up on first use):
    each training job, a fresh process, pays it once. Call it before any other calibration; 0 in a process
    that has built one before."""
    device = resolve_device(run["device"])
    with torch_kept(run["threads"]):
        data = synthetic_data(shape, run["task"]["name"], run["train"]["batch_size"], 1)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            Trainer(run, data, device)
            times.append(time.perf_counter() - t0)
    return max(0.0, times[0] - times[1])


def teacher_forward_s(teacher: dict[str, Any], data: PreparedData, device: torch.device) -> float:
    """One forward pass of the teacher's model over a training batch, in eval mode without gradients."""
    model = model_for_run(teacher, data).to(device).eval()
    x = data.splits["train"]["tokens"][: teacher["train"]["batch_size"]].to(device)

    def forward() -> None:
        with torch.no_grad():
            model(x, True)

    forward()
    return timed(forward, device, TIMED_STEPS)


def calibrate_case(case: Case, settings: BenchConfig, device: str, threads: int) -> float | None:
    """Seconds of one step of an efficiency-sweep case here, after a priming step at ``bench.prime_length``
    tokens (as the sweep primes); None where the case cannot run here (its backend is unavailable, or it fails:
    the sweep records it without timing it)."""
    dev = torch.device(device)
    if unavailable(case, dev):
        return None
    try:
        with torch_kept(threads), backend_context(case.backend):
            stepper = Stepper(case, settings.heads, settings.head_dim, settings.mlp_dim, dev, settings.seed,
                              n=min(case.n, settings.prime_length))
            stepper()
            stepper.resize(case.n, settings.seed)
            return timed(stepper, dev, 2, CASE_BUDGET_S)
    except Exception:  # out of memory, no kernel: a row without timing
        return None


def case_flops(case: Case, settings: BenchConfig) -> int:
    """The analytic FLOPs of one step of a case (``bench.case.analytic_flops``), its module built, not run."""
    with torch_kept(1):
        return analytic_flops(Stepper(case, settings.heads, settings.head_dim, settings.mlp_dim, torch.device("cpu"),
                                      settings.seed, n=1))
