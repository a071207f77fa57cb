"""The pipeline's progress line: after each training job, ``attnbench progress`` prints how many of this
invocation's runs are done, the time elapsed and the time left (ETA).

When Snakemake starts running jobs (``rules/progress.smk``; never in a dry run) it writes the invocation's
plan (``write_plan``): when it started, the records its training jobs write and the sweep files its sweep jobs
write, each job's expected seconds (``harness.estimate``), the seconds of the jobs after them, the cores.
``progress_line`` reads it with the records finished since: a run is done once its record is written after
the start. The ETA is the rest of the plan, scheduled on the cores, each job's estimate scaled by the pace so
far (the finished runs' ``training.wall_s`` against what was expected of them); a plan without estimates
(the estimate failed) gives an ETA from the elapsed time per finished run instead.

No torch here: the progress command runs after every training job and stays a fraction of a second.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from attnbench.harness.core.io import atomic_write_json
from attnbench.harness.estimate.durations import clock
from attnbench.harness.estimate.schedule import Job, makespan

#: the plan, under the results folder
PLAN_FILE = Path(".progress") / "plan.json"
#: the pace is kept within these bounds (a first, odd run does not throw the ETA off)
PACE_BOUNDS = (0.25, 4.0)


def write_plan(path: Path, started: float, cores: int, runs: list[dict[str, Any]], sweeps: list[dict[str, Any]],
               tail_s: float | None) -> None:
    """The plan of one invocation. ``runs``: ``{"record", "job_s", "train_s", "threads"}`` per training job
    (``job_s`` and ``train_s`` None where not estimated); ``sweeps``: ``{"output", "job_s"}`` per sweep job;
    ``tail_s``: the jobs after them (aggregation, report)."""
    atomic_write_json(Path(path), {"started": started, "planned": time.time(), "cores": cores, "runs": runs,
                                   "sweeps": sweeps, "tail_s": tail_s})


def written_since(path: str, since: float) -> bool:
    """Whether ``path`` exists and was written at or after ``since`` (seconds since the epoch)."""
    try:
        return os.stat(path).st_mtime >= since
    except OSError:
        return False


def wall_s(record: str) -> float | None:
    """A record's ``training.wall_s`` (None where it cannot be read)."""
    try:
        return float(json.loads(Path(record).read_text())["training"]["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pace(done: list[dict[str, Any]]) -> float:
    """How long the finished runs took against their estimates (1.0 with none to compare)."""
    took, expected = 0.0, 0.0
    for run in done:
        seconds = wall_s(run["record"])
        if seconds is not None and run.get("train_s"):
            took, expected = took + seconds, expected + float(run["train_s"])
    if not expected:
        return 1.0
    ratio = took / expected
    return min(max(ratio, PACE_BOUNDS[0]), PACE_BOUNDS[1])


def time_left(plan: dict[str, Any], done: list[dict[str, Any]], elapsed: float) -> float:
    """Seconds left: the jobs not done, scaled by the pace and scheduled on the plan's cores, then the jobs after
    them; without estimates, the elapsed time per finished run times the runs left."""
    runs = plan["runs"]
    todo = [run for run in runs if run not in done]
    if any(run.get("job_s") is None for run in runs):
        return elapsed / len(done) * len(todo) if done else 0.0
    factor, cores, since = pace(done), int(plan["cores"]), float(plan["planned"])
    jobs = [Job(run["record"], run["job_s"] * factor, int(run.get("threads") or 1)) for run in todo]
    jobs += [Job(s["output"], s["job_s"] * factor, cores) for s in plan["sweeps"]
             if not written_since(s["output"], since)]
    return makespan(sorted(jobs, key=lambda j: -j.seconds), cores) + (plan.get("tail_s") or 0.0) * factor


def progress_line(plan: dict[str, Any], now: float | None = None) -> str:
    """``attnbench: 12 of 36 runs done, elapsed 2:10, ETA 4:05``."""
    now = time.time() if now is None else now
    since = float(plan["planned"])
    done = [run for run in plan["runs"] if written_since(run["record"], since)]
    elapsed = now - float(plan["started"])
    return (f"attnbench: {len(done)} of {len(plan['runs'])} runs done, elapsed {clock(elapsed)}, "
            f"ETA {clock(time_left(plan, done, elapsed))}")


def read_plan(path: Path) -> dict[str, Any] | None:
    """The plan at ``path`` (None where there is none or it cannot be read)."""
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) and {"started", "planned", "cores", "runs", "sweeps"} <= set(plan) else None
