"""The expected time of the efficiency sweep's jobs (``bench:``), one per variant: each case's step timed here
(``calibrate.calibrate_case``), then what the sweep does with it (``harness.bench.sweep``): a fresh process per
case for its memory (a start, a priming, a measured and a FLOPs-counted step), then ``warmup`` + ``repeats``
steps per round; and per job its own start, its pytest process and the matmul-rate probe."""
from __future__ import annotations

import time
from dataclasses import dataclass

from attnbench.harness.bench.settings import (
    BenchConfig,
    Case,
    bench_settings,
    resolve_device,
    sweep_threads,
    variant_cases,
)
from attnbench.harness.estimate import costs
from attnbench.harness.estimate.calibrate import CASE_BUDGET_S, calibrate_case, case_flops


@dataclass(frozen=True)
class SweepEstimate:
    """One variant's sweep job: its cases and seconds; ``threads``, the torch threads its cases run with."""

    variant: str
    cases: int
    job_s: float
    threads: int


@dataclass
class SweepTimer:
    """Times sweep jobs on ``cores`` cores; ``calibrated`` counts the cases timed and ``calibration_s`` their
    seconds."""

    config: dict
    cores: int
    fixed: costs.FixedCosts
    calibrated: int = 0
    calibration_s: float = 0.0

    def estimate(self, variant: str) -> SweepEstimate:
        settings = bench_settings(self.config)
        device = resolve_device(self.config.get("device", "cpu"))
        threads = sweep_threads(settings, self.cores)
        start = self.fixed.process_start_s
        # the command, and its pytest and matmul-probe processes
        job_s = self.fixed.job_start() + 2 * start + self.fixed.scaled(costs.SWEEP_JOB_S)
        cases = variant_cases(self.config, variant, device)
        for step_s in self.step_times(cases, settings, device, threads):
            if step_s is None:  # a row without timing (unavailable here, or failing): next to nothing
                continue
            job_s += (start + self.fixed.scaled(costs.SWEEP_CASE_S) + costs.SWEEP_FRESH_STEPS * step_s
                      + settings.rounds * (settings.warmup + settings.repeats) * step_s)
        return SweepEstimate(variant, len(cases), job_s, threads)

    def step_times(self, cases: list[Case], settings: BenchConfig, device: str, threads: int) -> list[float | None]:
        """Each case's step time. Within a kind of case (all but the length), lengths are timed from the shortest
        up until a step takes CASE_BUDGET_S; the longer ones are extrapolated from the last timed one by their
        analytic FLOPs (``calibrate.case_flops``), so that a sweep to 8K tokens is not run to estimate it."""
        times: list[float | None] = [None] * len(cases)
        last: dict[tuple, tuple[Case, float]] = {}
        for i in sorted(range(len(cases)), key=lambda i: cases[i].n):
            case = cases[i]
            kind = (case.backend, case.scope, case.mode, case.dtype, case.batch)
            timed = last.get(kind)
            if timed is not None and timed[1] >= CASE_BUDGET_S:
                times[i] = timed[1] * case_flops(case, settings) / max(1, case_flops(timed[0], settings))
                continue
            t0 = time.perf_counter()
            step_s = times[i] = calibrate_case(case, settings, device, threads)
            self.calibration_s += time.perf_counter() - t0
            self.calibrated += 1
            if step_s is not None:
                last[kind] = (case, step_s)
        return times
