"""A run's training budget (``train.budget``): optimiser steps, seconds of training, or training FLOPs; the
checks that the config's validation runs on it, and the clock of a run's training time.

- ``steps: K``: K optimiser steps, as ``train.steps: K`` would.
- ``flops: F``: ``max(1, floor(F / flops_per_step))`` steps, where ``flops_per_step`` is one training step's
  FLOPs as ``torch.utils.flop_counter`` counts them (``Trainer.count_step_flops``); that is also the LR
  schedule's horizon. ``train.steps`` is then unused.
- ``seconds: S``: training until the run's training-step time (``TrainClock``; evaluation excluded) reaches
  S, checked after every step, with ``train.steps`` an upper bound: the first step past S is the last (on
  CUDA, where the clock is estimated between evaluations, within the few steps the host runs ahead). The
  LR decay follows the fraction of the budget used after warm-up (a budget-based schedule, as Cramming,
  Geiping & Goldstein 2022); warm-up stays in steps.
- none (``{}``): ``train.steps`` steps; the record says kind ``steps``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from attnbench.harness.measure.timing import LazyStepTimer

#: the kinds of budget, and the JSON type of each one's number (the config's schema types only "a number")
KINDS = {"steps": "integer", "seconds": "number", "flops": "number"}


def budget_problems(budget: object, where: str = "train.budget") -> list[str]:
    """What is wrong with a ``train.budget`` mapping (``where``: its key in the config), one line each:
    a key other than steps, seconds and flops, more than one of them, a value that is not a positive
    number (steps: an integer >= 1). Empty: nothing is."""
    allowed = ", ".join(sorted(KINDS))
    if not isinstance(budget, dict):
        return [f"'{where}' is {budget!r}; expected a mapping with one of {allowed} ({{}}: train.steps steps)"]
    unknown = sorted(set(budget) - set(KINDS))
    if unknown:
        return [f"unknown key {', '.join(repr(f'{where}.{u}') for u in unknown)}; allowed keys under '{where}': "
                f"{allowed}"]
    if len(budget) > 1:
        return [f"'{where}' gives {' and '.join(budget)}; give exactly one of {allowed} (a run stops at the "
                "budget it is given)"]
    problems = []
    for kind, value in budget.items():
        integer = KINDS[kind] == "integer"
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            problems.append(f"'{where}.{kind}' is {value!r}; expected {'an integer' if integer else 'a number'}")
        elif not math.isfinite(value):
            problems.append(f"'{where}.{kind}' is {value}; give a finite number")
        elif (value < 1) if integer else (value <= 0):
            problems.append(f"'{where}.{kind}' is {value!r}; must be {'>= 1' if integer else '> 0'}")
    return problems


@dataclass(frozen=True)
class Budget:
    """What a run trains for: ``kind`` steps, seconds or flops, and ``limit``, the number given."""

    kind: str
    limit: float

    @classmethod
    def of(cls, train: dict) -> Budget:
        """The budget of a run's train settings (``train.budget``, else ``train.steps`` steps); raises
        ValueError for a budget its config's validation would refuse."""
        budget = train.get("budget") or {}
        problems = budget_problems(budget)
        if problems:
            raise ValueError(problems[0])
        ((kind, limit),) = budget.items() if budget else (("steps", train["steps"]),)
        return cls(kind, limit)

    def steps(self, train_steps: int, flops_per_step: int | None) -> int:
        """The steps the run plans (the LR schedule's horizon): a steps budget's, a FLOPs budget's
        ``max(1, floor(limit / flops_per_step))``, else ``train_steps`` (a seconds budget's upper bound).
        A FLOPs budget without a count raises RuntimeError."""
        if self.kind == "steps":
            return int(self.limit)
        if self.kind == "seconds":
            return train_steps
        if not flops_per_step:
            raise RuntimeError(f"train.budget.flops {self.limit:g} needs the FLOPs of a training step, and they "
                               "could not be counted (training.flops_method says why); give steps or seconds")
        return max(1, math.floor(self.limit / flops_per_step))

    def as_record(self, steps_done: int, train_s: float | None, train_flops: int | None) -> dict:
        """The record's ``training.budget``: kind, limit, and what the run reached of it."""
        reached = {"steps": steps_done, "seconds": train_s, "flops": train_flops}[self.kind]
        return {"kind": self.kind, "limit": self.limit, "reached": reached}


class TrainClock:
    """A run's cumulative training-step time, evaluation excluded (``train_s``): the step timer's
    (``LazyStepTimer``) plus ``before``, the time of the steps an earlier process did (a resumed run).

    ``exact()`` reads the timer: on CUDA that waits for the device (its events are read then), so the
    loop calls it only where it synchronises anyway (evaluation, checkpoint) and when ``estimate()``
    says a seconds budget is spent. ``estimate()`` never waits: on a CPU it is ``exact()``; on CUDA the
    time last read plus the host's clock around each step since (``add_host``), which the device's
    queue may lead or trail by a few steps."""

    def __init__(self, timer: LazyStepTimer, before: float = 0.0):
        self.timer, self.before = timer, before
        self._read_s, self._read_n = 0.0, 0  # the timer's seconds and steps read so far
        self._host_s = 0.0  # host seconds of the steps since

    def exact(self) -> float:
        durations = self.timer.durations
        self._read_s += sum(durations[self._read_n:])
        self._read_n, self._host_s = len(durations), 0.0
        return self.before + self._read_s

    def add_host(self, seconds: float) -> None:
        self._host_s += seconds

    def estimate(self) -> float:
        if self.timer.device.type != "cuda":
            return self.exact()
        return self.before + self._read_s + self._host_s
