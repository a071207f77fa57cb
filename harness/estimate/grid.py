"""The expected wall time of a config's pipeline on this machine: Snakemake's start and planning, the data sets
to prepare, every training run (``run_times``), the efficiency sweep (``sweep_times``), the aggregation and the
report, scheduled on the cores as Snakemake runs them (``schedule``: training jobs of ``threads`` threads side
by side, each sweep job on every core)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attnbench.harness.bench.settings import bench_settings, bench_variants
from attnbench.harness.config import planned_runs
from attnbench.harness.config.runs import planned_pretraining, planned_tasks
from attnbench.harness.core import paths
from attnbench.harness.estimate import costs
from attnbench.harness.estimate.data_shape import data_shape
from attnbench.harness.estimate.history import History
from attnbench.harness.estimate.run_times import RunEstimate, RunTimer
from attnbench.harness.estimate.schedule import Job, makespan
from attnbench.harness.estimate.sweep_times import SweepEstimate, SweepTimer
from attnbench.harness.results.records import RunKey

#: the jobs after the runs and the sweep: aggregating the records, the sweep's files, the report
TAIL_RULES = ("aggregate", "bench_aggregate", "report")


@dataclass(frozen=True)
class PipelineEstimate:
    """A pipeline's expected time on ``cores`` cores: each job's seconds, Snakemake's ``start_s`` (its planning,
    with the calibration it makes for the progress lines) and the ``wall_s`` of them all scheduled."""

    cores: int
    runs: list[RunEstimate]
    prepare: dict[str, float]
    sweeps: list[SweepEstimate]
    tail: dict[str, float]
    start_s: float
    wall_s: float
    fixed: costs.FixedCosts
    calibrated_shapes: int
    calibrated_cases: int
    calibration_s: float
    left_out: list[str] = field(default_factory=list)


def results_history(config: dict) -> History:
    """The finished records of this machine in the config's results folder (runs, tuning trials, pretraining)."""
    results = Path(config.get("results_dir") or "results")
    return History.under([results / "runs", results / "tune", results / "pretrain"])


def prepare_seconds(section: dict, fixed: costs.FixedCosts) -> float:
    """A data set's preparation job: its start, the generation or reading, a subword tokenizer's training."""
    work = costs.PREPARE_S
    if section["data"].get("tokenizer") == "subword":
        work += costs.TOKENIZER_S_PER_1K * data_shape(section).sizes.get("train", 0) / 1000
    return fixed.job_start() + fixed.scaled(work)


def tail_seconds(rules: Iterable[str], runs: int, tasks: int, fixed: costs.FixedCosts) -> dict[str, float]:
    """The aggregation and report jobs' seconds."""
    each = {"aggregate": costs.AGGREGATE_S + costs.AGGREGATE_PER_RUN_S * runs, "bench_aggregate": costs.AGGREGATE_S,
            "report": costs.REPORT_S + costs.REPORT_PER_TASK_S * tasks + costs.REPORT_PER_RUN_S * runs,
            "bench_report": costs.REPORT_S}
    return {rule: fixed.job_start() + fixed.scaled(each[rule]) for rule in rules}


def estimate_pipeline(config: dict, cores: int, fixed: costs.FixedCosts, *, keys: Sequence[RunKey] | None = None,
                      sweep: Sequence[str] | None = None, tail: Sequence[str] | None = None,
                      history: History | None = None) -> PipelineEstimate:
    """The pipeline of ``config`` on ``cores`` cores: by default every planned run, the sweep of every
    ``bench`` variant (when it is on) and the jobs after them; ``keys``, ``sweep`` and ``tail`` (rule names)
    narrow it to what one invocation does. A self-pretrained run's pretraining is a run here (``keys`` hold it
    as method ``pretrain``). Data sets already prepared are not prepared again."""
    tasks, left_out = planned_tasks(config)
    keys = list(planned_runs(config, tasks) + planned_pretraining(config, tasks) if keys is None else keys)
    if sweep is None:
        sweep = bench_variants(config) if bench_settings(config).enabled else []
    if tail is None:
        tail = [r for r in TAIL_RULES if (r != "bench_aggregate" or sweep) and (r != "aggregate" or keys)]
    history = results_history(config) if history is None else history
    timer = RunTimer(config, history, fixed)
    runs = timer.estimates(keys)
    sweeper = SweepTimer(config, cores, fixed)
    sweeps = [sweeper.estimate(variant) for variant in sweep]
    sections = {run.data: timer.resolve(run.key)["task"] for run in runs}
    prepare = {data: prepare_seconds(section, fixed) for data, section in sections.items()
               if not paths.dataset_file(section["name"], section["data_key"]).exists()}
    tails = tail_seconds(tail, len(runs), len({run.key.task for run in runs}), fixed)
    calibration_s = timer.calibration_s + sweeper.calibration_s
    start_s = fixed.scaled(costs.SNAKEMAKE_START_S) + calibration_s  # the progress plan calibrates as this did
    wall_s = start_s + makespan(schedule_jobs(runs, prepare, sweeps, tails, cores), cores)
    return PipelineEstimate(cores, runs, prepare, sweeps, tails, start_s, wall_s, fixed, timer.calibrated,
                            sweeper.calibrated, calibration_s, left_out)


def schedule_jobs(runs: list[RunEstimate], prepare: dict[str, float], sweeps: list[SweepEstimate],
                  tails: dict[str, float], cores: int) -> list[Job]:
    """The jobs in the order they are started: data first, the runs longest first (a student after its teacher, a
    fine-tuning after its pretraining), the sweep's jobs on every core, then aggregation and report after what they
    read."""
    jobs = [Job(f"prepare {data}", seconds) for data, seconds in prepare.items()]
    jobs += [Job(run.key.run_id, run.job_s, run.threads, (f"prepare {run.data}", *run.after))
             for run in sorted(runs, key=lambda r: -r.job_s)]
    jobs += [Job(f"bench {s.variant}", s.job_s, cores) for s in sweeps]
    after = {"aggregate": tuple(run.key.run_id for run in runs),
             "bench_aggregate": tuple(f"bench {s.variant}" for s in sweeps),
             "report": ("aggregate", "bench_aggregate"), "bench_report": ("bench_aggregate",)}
    return jobs + [Job(rule, seconds, 1, after[rule]) for rule, seconds in tails.items()]
