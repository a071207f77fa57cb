"""A pipeline estimate as ``attnbench estimate`` prints it: a table per task and run label (runs, steps,
seconds per run, where the times come from), the totals, and the headline; or as JSON (``as_json``)."""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from attnbench.harness.estimate.durations import duration
from attnbench.harness.estimate.grid import PipelineEstimate


def how_known(est: PipelineEstimate) -> str:
    """Where the times come from: the calibration (what and how long) and the records used."""
    parts = []
    if est.calibrated_shapes or est.calibrated_cases:
        what = [f"{n} {name}{'s' * (n != 1)}" for n, name in ((est.calibrated_shapes, "run shape"),
                                                             (est.calibrated_cases, "sweep case")) if n]
        parts.append(f"calibrated: {' and '.join(what)} in {est.calibration_s:.0f} s")
    recorded = sum(run.source != "calibrated" for run in est.runs)
    if recorded:
        parts.append(f"{recorded} runs from earlier records of this machine")
    start = "measured" if est.fixed.source == "measured" else "assumed"
    parts.append(f"process start {est.fixed.process_start_s:.1f} s {start}")
    return "; ".join(parts)


def headline(est: PipelineEstimate) -> str:
    return f"expected wall time on this machine: {duration(est.wall_s)} ({how_known(est)})"


def run_table(est: PipelineEstimate) -> list[str]:
    """One row per task and run label: runs, steps per run, seconds per run (whole job), source."""
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for run in est.runs:
        stage = "" if run.key.trial is None else " (tuning)"
        groups[(run.key.task, run.key.label + stage)].append(run)
    rows = [("task", "run", "runs", "steps", "s/run", "from")]
    for (task, label), runs in groups.items():
        steps = sorted({r.steps for r in runs})
        sources = sorted({"calibrated" if r.source == "calibrated" else "records" for r in runs})
        rows.append((task, label, str(len(runs)), "/".join(map(str, steps)),
                     f"{sum(r.job_s for r in runs) / len(runs):.1f}", ", ".join(sources)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i < 2 or i == 5 else cell.rjust(w) for i, (cell, w) in
                      enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]


def as_text(est: PipelineEstimate, config_name: str) -> str:
    threads = sorted({run.threads for run in est.runs}) or [1]
    side = max(1, est.cores // threads[0])
    lines = [f"{config_name} on this machine: {est.cores} cores, {side} training job(s) of {threads[0]} thread(s) "
             "side by side, each sweep job on every core", ""]
    lines += run_table(est) if est.runs else ["no training runs"]
    lines.append("")
    job_s = sum(r.job_s for r in est.runs)
    lines.append(f"training: {len(est.runs)} runs, {job_s:.0f} s of jobs ({sum(r.train_s for r in est.runs):.0f} s "
                 "training and evaluating, the rest starting, loading and writing)")
    if est.prepare:
        lines.append(f"data preparation: {len(est.prepare)} data set(s), {sum(est.prepare.values()):.0f} s")
    if est.sweeps:
        lines.append(f"efficiency sweep: {len(est.sweeps)} job(s), {sum(s.cases for s in est.sweeps)} cases, "
                     f"{sum(s.job_s for s in est.sweeps):.0f} s (each job on every core)")
    if est.tail:
        lines.append(f"aggregation and report: {', '.join(est.tail)}, {sum(est.tail.values()):.0f} s")
    lines.append(f"Snakemake's start and planning: {est.start_s:.0f} s")
    guessed = sorted({run.key.task for run in est.runs if run.sizes == "guessed"})
    if guessed:
        lines.append(f"examples per split guessed for {', '.join(guessed)} (its data is neither prepared nor counted "
                     "from a local file; `attnbench prepare` it for exact sizes)")
    if est.left_out:
        lines.append(f"left out (optional, data missing): {', '.join(est.left_out)}")
    lines += ["", headline(est)]
    return "\n".join(lines)


def as_json(est: PipelineEstimate) -> dict[str, Any]:
    """The estimate as JSON values: every job's seconds, the totals and how the times are known."""
    runs = [{"run_id": run.key.run_id, "task": run.key.task, "label": run.key.label,
             **{f.name: getattr(run, f.name) for f in dataclasses.fields(run) if f.name != "key"},
             "after": list(run.after)} for run in est.runs]
    return {"cores": est.cores, "wall_s": round(est.wall_s, 1), "start_s": round(est.start_s, 1), "runs": runs,
            "prepare": est.prepare, "sweeps": [dataclasses.asdict(s) for s in est.sweeps], "tail": est.tail,
            "process_start": dataclasses.asdict(est.fixed), "calibrated_shapes": est.calibrated_shapes,
            "calibrated_cases": est.calibrated_cases, "calibration_s": round(est.calibration_s, 2),
            "left_out": est.left_out, "headline": headline(est)}
