"""The runs' validation curves in the report: each run's ``curve.csv`` (beside its record, written by
``attnbench.harness.run.record.write_curve``) read with care, and the figure of them.

A curve is written whole (header, one row per evaluation, each ending in a newline), so anything else
is damage, and the report says so instead of drawing it silently or stopping: a file that is not
UTF-8 text or not a table, or lacks ``step``/``val_acc``, is left out; a last row cut off mid-line,
and rows whose step or accuracy is not a number (an accuracy also in 0-1), are left out of the curve;
a time or FLOPs count (``elapsed_s``, ``train_s``, ``train_flops``) that is not a finite number >= 0 is
made missing (an empty ``train_flops``: not counted, nothing wrong). Curves written before ``train_s``
and ``train_flops`` existed lack those columns and are read as they are. Each damaged file gets one
warning naming it and what is wrong."""
from __future__ import annotations

import csv
import io
from functools import lru_cache
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from attnbench.harness.report.layout import fit_accuracy
from attnbench.harness.report.writer import save_figure, suptitle

NAME = "curve.csv"
NEEDED = ("step", "val_acc")
COUNTS = ("elapsed_s", "train_s", "train_flops")  # cumulative time (s) and FLOPs at each evaluation, when written


def read_curve(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    """(the readable rows of the curve at ``path`` or None, what is wrong with it or None); a missing
    file is (None, None): a run that never evaluated has no curve."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None, None
    except UnicodeDecodeError as exc:
        return None, f"`{path}` is not UTF-8 text (byte {exc.start}): left out"
    except OSError as exc:
        return None, f"`{path}` cannot be read ({exc.strerror or exc}): left out"
    if not text.strip():
        return None, f"`{path}` is empty (not even its header): left out"
    if "\x00" in text:
        return None, f"`{path}` holds NUL bytes (not a text table): left out"
    problems = []
    if not text.endswith("\n"):  # cut off: its last row may be a number cut short, never drawn
        text = text[:text.rfind("\n") + 1]
        problems.append("ends mid-line (cut off?): its last row left out")
    try:
        curve = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as exc:
        return None, f"`{path}` is not a readable table ({str(exc).strip().splitlines()[0]}): left out"
    missing = [c for c in NEEDED if c not in curve]
    if missing:
        return None, f"`{path}` has no {', '.join(missing)} column: left out"
    step = pd.to_numeric(curve["step"], errors="coerce")
    acc = pd.to_numeric(curve["val_acc"], errors="coerce")
    good = step.notna() & acc.between(0.0, 1.0) & (step >= 0)
    if not good.all():
        problems.append(f"{int((~good).sum())} of {len(curve)} row(s) without a step and an accuracy in 0-1: "
                        "left out")
    curve = curve[good].assign(step=step[good], val_acc=acc[good])
    for column in (c for c in COUNTS if c in curve):
        raw = curve[column]
        values = pd.to_numeric(raw, errors="coerce").astype(float)
        bad = raw.notna() & ~(np.isfinite(values) & (values >= 0))
        if bad.any():
            problems.append(f"{int(bad.sum())} `{column}` value(s) not a finite number ≥ 0: treated as missing")
        curve[column] = values.where(~bad)
    return curve, (f"`{path}` " + "; ".join(problems)) if problems else None


@lru_cache(maxsize=4096)
def _read_curve_as_of(path: str, mtime_ns: int, size: int) -> tuple[pd.DataFrame | None, str | None]:
    return read_curve(Path(path))


def read_curve_once(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    """``read_curve``, reading each version of a file (its time and size) once: a report's views (the
    validation curves, equal compute, the Summary) each load the same runs' curves."""
    try:
        stat = path.stat()
    except OSError:
        return read_curve(path)
    curve, problem = _read_curve_as_of(str(path), stat.st_mtime_ns, stat.st_size)
    return (None if curve is None else curve.copy()), problem


def load_curves(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Every run's readable curve in one table (with its run's task, variant, seed, status and record), and a
    warning per damaged file."""
    frames, warnings = [], []
    for _, r in df.iterrows():
        if not isinstance(r["record"], str):  # no record path: nothing to look beside
            continue
        curve, problem = read_curve_once(Path(r["record"]).parent / NAME)
        if problem:
            warnings.append(f"Validation curve {problem}.")
        if curve is not None and len(curve):
            frames.append(curve.assign(task=r["task"], variant=r["variant"], seed=r["seed"], status=r["status"],
                                       record=r["record"]))
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), warnings


def figure_curves(curves: pd.DataFrame, path: Path) -> Path | None:
    if curves.empty:
        return None
    tasks = sorted(curves["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        t = curves[curves["task"] == task].copy()
        t["val_acc"] *= 100
        sns.lineplot(data=t, x="step", y="val_acc", hue="variant", errorbar=("pi", 100), ax=ax, palette="colorblind")
        ax.set_title(task)
        ax.set_ylabel("validation accuracy (%)")
        fit_accuracy(ax)
    suptitle(fig, "Validation accuracy during training (line: mean over seeds; band: min-max)")
    return save_figure(fig, path)
