"""The expected time of each training run of a config: its steps (from its budget), evaluations and test pass
at the times of its shape, known from an earlier record of this machine (``history``) or calibrated here
(``calibrate``, once per shape), and what its job adds around them (``costs``)."""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from attnbench.harness.config import resolve_run
from attnbench.harness.core.errors import UserError
from attnbench.harness.estimate import costs
from attnbench.harness.estimate.calibrate import RunTiming, calibrate_run, first_use_s
from attnbench.harness.estimate.data_shape import DataShape, data_shape
from attnbench.harness.estimate.history import History, eval_count, shape_key
from attnbench.harness.results.records import RunKey


class EstimateError(UserError):
    """A run that cannot be timed on this machine (a device it lacks, a model that does not fit)."""


@dataclass(frozen=True)
class RunEstimate:
    """One training run's expected time: ``train_s`` inside its process (what its record's ``training.wall_s``
    will say) and ``job_s``, its whole job; ``source``: where its times come from; ``sizes``: how its data's
    examples per split are known (``DataShape.source``); ``after``: the runs it waits for (a student's teacher)."""

    key: RunKey
    record: str
    data: str
    steps: int
    train_s: float
    job_s: float
    threads: int
    source: str
    sizes: str
    after: tuple[str, ...]


def planned_steps(train: dict[str, Any], timing: RunTiming) -> int:
    """The steps a run's budget gives: steps, FLOPs over a step's, or what fits a seconds budget (at most
    ``train.steps``); without a budget, ``train.steps``."""
    budget = train.get("budget") or {}
    if "steps" in budget:
        return int(budget["steps"])
    if "flops" in budget and timing.flops_per_step:
        return max(1, math.floor(budget["flops"] / timing.flops_per_step))
    if "seconds" in budget:
        return min(train["steps"], max(1, math.ceil(budget["seconds"] / timing.step_s)))
    return int(train["steps"])


def in_process_s(run: dict[str, Any], shape: DataShape, timing: RunTiming, steps: int) -> float:
    """Set-up, steps (within ``train.time_limit_min``), evaluations and, for a final run, the test pass (a
    pretraining run evaluates its held-out share of the training inputs and tests nothing)."""
    train = run["train"]
    stepping = steps * timing.step_s
    if train.get("time_limit_min"):
        stepping = min(stepping, 60 * train["time_limit_min"])
    if run["method"]["name"] == "pretrain":
        heldout = max(1, round(shape.sizes.get("train", 0) * run["method"]["holdout"]))
        return timing.setup_s + stepping + eval_count(steps, train["eval_every"]) * heldout * timing.eval_example_s
    examples = eval_count(steps, train["eval_every"]) * shape.sizes.get("val", 0)
    if run.get("tuning", {}).get("stage") != "tune":
        examples += shape.sizes.get("test", 0)
    return timing.setup_s + stepping + examples * timing.eval_example_s


class RunTimer:
    """Times runs: from a record of the same run, else of the same shape, else by calibrating the shape here
    (each shape once). ``calibrated`` counts the shapes calibrated and ``calibration_s`` their seconds."""

    def __init__(self, config: dict, history: History, fixed: costs.FixedCosts) -> None:
        self.config, self.history, self.fixed = config, history, fixed
        self.timings: dict[str, RunTiming] = {}
        self.calibrated, self.calibration_s = 0, 0.0
        self.first_use_s: float | None = None

    def resolve(self, key: RunKey) -> dict[str, Any]:
        return resolve_run(self.config, key.task, key.variant, key.seed, key.method, key.trial)

    def timing(self, key: RunKey, run: dict[str, Any], shape: DataShape) -> RunTiming:
        """The run's timing: from records of its shape, else calibrated (a calibrated set-up includes what the
        first trainer of a process costs more, ``first_use_s``, which a record's set-up holds already)."""
        found = self.history.timing(run)
        if found is not None:
            return found
        shape_id = shape_key(run)
        if shape_id not in self.timings:
            t0 = time.perf_counter()
            teacher = None
            if key.method == "distill":
                teacher = self.resolve(RunKey(key.task, run["method"]["teacher"], key.seed))
            try:
                if self.first_use_s is None:
                    self.first_use_s = first_use_s(run, shape)
                timing = calibrate_run(run, shape, teacher)
            except Exception as exc:  # a device this machine lacks, out of memory: one line
                first_line = (str(exc).splitlines() or [""])[0]
                raise EstimateError(f"cannot time {key.run_id} here ({type(exc).__name__}: {first_line}); "
                                    "estimate on the machine that runs it") from None
            self.timings[shape_id] = dataclasses.replace(timing, setup_s=timing.setup_s + self.first_use_s)
            self.calibrated += 1
            self.calibration_s += time.perf_counter() - t0
        return self.timings[shape_id]

    def estimate(self, key: RunKey, progress_line: bool = True) -> RunEstimate:
        """One run's estimate (``progress_line``: its job prints the pipeline's progress line after it)."""
        run = self.resolve(key)
        shape = data_shape(run["task"])
        timing = self.timing(key, run, shape)
        steps = planned_steps(run["train"], timing)
        known = self.history.run_seconds(run)
        train_s, source = known if known else (in_process_s(run, shape, timing, steps), timing.source)
        around = self.fixed.scaled(costs.RUN_FILES_S + costs.PROGRESS_S * progress_line)
        job_s = self.fixed.job_start() + around + train_s
        after: tuple[str, ...] = ()
        if key.method == "distill":  # a student after its teacher
            after = (RunKey(key.task, run["method"]["teacher"], key.seed).run_id,)
        elif key.method == "spt":  # a fine-tuning after its pretraining
            after = (key._replace(method="pretrain").run_id,)
        return RunEstimate(key, str(key.record), f"{run['task']['name']}/{run['task']['data_key']}", steps, train_s,
                           job_s, run["threads"], source, shape.source, after)

    def estimates(self, keys: Iterable[RunKey]) -> list[RunEstimate]:
        return [self.estimate(key, progress_line=key.trial is None) for key in keys]
