"""``attnbench estimate`` (a config's expected wall time on this machine, ``harness.estimate``), the line
``check-config`` prints from it, and ``attnbench progress`` (the pipeline's progress line after each training
job, ``harness.estimate.pipeline_progress``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from attnbench.harness.cli.setup_commands import config_of
from attnbench.harness.core.errors import UsageError


def available_cores() -> int:
    """The cores this process may use: what ``snakemake --cores`` (and ``make run``) gives the pipeline here."""
    return len(os.sched_getaffinity(0))


def is_attnbench_process() -> bool:
    """Whether this process is an ``attnbench`` command (the console script or ``python -m attnbench.harness.cli``)."""
    return Path(sys.argv[0]).name == "attnbench" or Path(sys.argv[0]).parts[-2:] == ("cli", "__main__.py")


def estimate_of(config: dict[str, Any], cores: int | None) -> Any:
    """The pipeline estimate of ``config`` on ``cores`` cores (default: all of this machine's). Call it first
    in a command: the process start it measures is this process's running time up to the call."""
    from attnbench.harness.estimate import costs
    from attnbench.harness.estimate.grid import estimate_pipeline

    # after the imports above, an `attnbench` process's running time is what a job's process pays to start;
    # inside another program (a test calling main()), its running time says nothing of that
    fixed = costs.measured_process_start() if is_attnbench_process() else costs.reference_process_start()
    if cores is not None and cores < 1:
        raise UsageError(f"--cores {cores}: give at least 1")
    return estimate_pipeline(config, cores or available_cores(), fixed)


def cmd_estimate(args: argparse.Namespace) -> int:
    from attnbench.harness.config import DEFAULT_CONFIG
    from attnbench.harness.estimate.text import as_json, as_text

    est = estimate_of(config_of(args), args.cores)
    print(json.dumps(as_json(est), indent=2) if args.json else as_text(est, str(args.config or DEFAULT_CONFIG)))
    return 0


def estimate_line(config: dict[str, Any]) -> str:
    """``check-config``'s line: the expected wall time on this machine's cores."""
    from attnbench.harness.estimate.durations import duration
    from attnbench.harness.estimate.run_times import EstimateError

    try:
        est = estimate_of(config, None)
    except EstimateError as exc:  # a valid config this machine cannot time (one for a GPU, on a CPU)
        return f"expected wall time on this machine: not estimated ({exc})"
    return (f"expected wall time on this machine: {duration(est.wall_s)} at {est.cores} cores "
            "(attnbench estimate for the breakdown)")


def plan_of_record(record: Path) -> Path:
    """The plan of the invocation that trains the run whose record is ``record``: RESULTS/.progress/plan.json for
    RESULTS/runs/TASK/LABEL/seedS/record.json (and RESULTS/tune/TASK/LABEL/trialT/record.json)."""
    from attnbench.harness.estimate.pipeline_progress import PLAN_FILE

    return record.parents[4] / PLAN_FILE if len(record.parents) > 4 else Path(PLAN_FILE)


def cmd_progress(args: argparse.Namespace) -> int:
    """Print the progress line of the plan; nothing (and status 0) where there is no plan: the line is a
    courtesy of the pipeline, never a reason for a job to fail."""
    from attnbench.harness.estimate.pipeline_progress import progress_line, read_plan

    plan = read_plan(Path(args.plan) if args.plan else plan_of_record(Path(args.after)))
    if plan is not None:
        print(progress_line(plan), flush=True)
    return 0
