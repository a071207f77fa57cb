"""The costs of the pipeline's jobs beyond their measured work: starting a process, Snakemake's handling of a
job, reading and writing files, the sweep's fresh processes, the report.

``process_start_s`` (a Python process importing torch and attnbench: what every job pays first) is measured
on this machine where it can be: an ``attnbench`` command reads how long it has been running, which is just that
start (``measured_process_start``). The other costs are seconds measured on the reference machine (2 CPU
cores, `make run` of config/config.yaml), kept here by name and scaled to this machine by its process start
(``FixedCosts.scaled``); they are small beside the training and the sweep."""
from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

#: a process start where none is measured (planning inside Snakemake): the reference machine's
REFERENCE_PROCESS_START_S = 2.0
#: Snakemake's handling of one job: starting its shell, noting its end, choosing the next jobs
JOB_S = 0.4
#: Snakemake itself before the first job: importing, reading the config, planning the runs and the DAG
SNAKEMAKE_START_S = 6.0
#: a training job beyond its record's training.wall_s and the start: loading the data, the record (the
#: environment's capture), its curve and weights, the process's exit
RUN_FILES_S = 1.2
#: the progress line after each training job (``attnbench progress``: a small process, no torch)
PROGRESS_S = 0.3
#: preparing a data set beyond the start (generating or reading it), and training a subword tokenizer on its
#: training texts, per 1,000 of them
PREPARE_S, TOKENIZER_S_PER_1K = 1.0, 0.35
#: a sweep job (one variant): its pytest process and the matmul-rate probe in a fresh process, each a start,
#: plus collection and the probe's own work
SWEEP_JOB_S = 2.0
#: one sweep case's fresh process beyond its start and its 3 steps (priming, measured, counted): building
#: the case, its memory readings, the result's file
SWEEP_CASE_S = 0.4
#: steps a case's fresh process runs (priming, measured, FLOPs-counted) before its warm-up and timed steps
SWEEP_FRESH_STEPS = 3
#: aggregating run records (per record) and the sweep's files; the report's fixed work, per task and per run
AGGREGATE_S, AGGREGATE_PER_RUN_S = 1.0, 0.02
REPORT_S, REPORT_PER_TASK_S, REPORT_PER_RUN_S = 6.0, 1.5, 0.05


@dataclass(frozen=True)
class FixedCosts:
    """The measured process start and how it is known (``measured`` or ``reference``). The reference machine's
    seconds above are scaled to this machine by how its process start compares (``scaled``): a slower or busier
    machine starts, imports, plans and writes more slowly alike."""

    process_start_s: float
    source: str

    def scaled(self, reference_s: float) -> float:
        """Seconds of the reference machine, on this one."""
        return reference_s * self.process_start_s / REFERENCE_PROCESS_START_S

    def job_start(self) -> float:
        """What every job pays before its work: Snakemake's handling of it and its process's start."""
        return self.scaled(JOB_S) + self.process_start_s


def measured_process_start() -> FixedCosts:
    """How long this process has been running, as the start of a process that imports what a job imports: call
    it from a fresh ``attnbench`` command once it has imported the training code and before it does any work."""
    return FixedCosts(time.time() - psutil.Process().create_time(), "measured")


def reference_process_start() -> FixedCosts:
    """The reference machine's process start, where this process's own is no measure of one (Snakemake's)."""
    return FixedCosts(REFERENCE_PROCESS_START_S, "reference")
