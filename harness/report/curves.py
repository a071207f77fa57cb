"""The runs' curves in the report: each run's ``curve.csv`` (beside its record, written by
``attnbench.harness.run.record.write_curve``) read with care, and the figure of them: per task,
validation accuracy and training loss against the step (mean over seeds, min-max band) and against
wall-clock time (``elapsed_s``, evaluation included; one line per run, as runs reach a step at their own
time). Training time alone (``train_s``) is the x of the equal-compute view (``compute``).

A curve is written whole (header, one row per evaluation, each ending in a newline), so anything else
is damage, and the report says so instead of drawing it silently or stopping: a file that is not
UTF-8 text or not a table, or lacks ``step``/``val_acc``, is left out; a last row cut off mid-line,
and rows whose step or accuracy is not a number (an accuracy also in 0-1), are left out of the curve;
a time or FLOPs count (``elapsed_s``, ``train_s``, ``train_flops``) that is not a finite number >= 0 is
made missing (an empty ``train_flops``: not counted, nothing wrong), and so is a loss (``train_loss``,
``val_loss``) that is not a number >= 0 (a non-finite one, as a diverged run writes: missing, nothing
wrong). Curves written before ``train_s`` and ``train_flops`` existed lack those columns and are read as
they are. Each damaged file gets one warning naming it and what is wrong."""
from __future__ import annotations

import csv
import io
from functools import lru_cache
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from attnbench.harness.report.layout import fit_accuracy
from attnbench.harness.report.writer import save_figure, suptitle

NAME = "curve.csv"
NEEDED = ("step", "val_acc")
COUNTS = ("elapsed_s", "train_s", "train_flops")  # cumulative time (s) and FLOPs at each evaluation, when written
LOSSES = ("train_loss", "val_loss")  # mean training loss since the previous evaluation; validation loss


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
    for column in (c for c in LOSSES if c in curve):
        raw = curve[column]
        values = pd.to_numeric(raw, errors="coerce").astype(float)
        bad = (raw.notna() & values.isna()) | (values < 0)
        if bad.any():
            problems.append(f"{int(bad.sum())} `{column}` value(s) not a number ≥ 0: treated as missing")
        curve[column] = values.where(~bad & np.isfinite(values))
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


ELAPSED = "elapsed_s"
#: the panels of a task's row: (x, y)
PANELS = (("step", "val_acc"), (ELAPSED, "val_acc"), ("step", "train_loss"), (ELAPSED, "train_loss"))
WORDS = {"step": "step", ELAPSED: "wall-clock time", "val_acc": "validation accuracy", "train_loss": "training loss"}
AXIS = {"step": "step", ELAPSED: "wall-clock time, evaluation included (s)", "val_acc": "validation accuracy (%)",
        "train_loss": "training loss"}


def _panel(ax, curves: pd.DataFrame, x: str, y: str, palette: dict) -> None:
    """``y`` against ``x`` for one task's curves: by step the mean over runs with a min-max band, by time each
    run's own line; a note in the panel where no curve holds both."""
    data = curves.dropna(subset=[x, y]) if x in curves and y in curves else curves.iloc[0:0]
    if data.empty:
        ax.text(0.5, 0.5, f"no {WORDS[y]} against {WORDS[x]}\nin these curves", ha="center", va="center",
                transform=ax.transAxes, color="grey")
    elif x == "step":
        sns.lineplot(data=data, x=x, y=y, hue="variant", errorbar=("pi", 100), ax=ax, palette=palette, legend=False)
    else:
        for (variant, _), run in data.groupby(["variant", "record"], sort=True):
            run = run.sort_values(x)
            ax.plot(run[x], run[y], color=palette[variant], lw=1.2, alpha=0.8)
    ax.set_title(f"{WORDS[y]} by {WORDS[x]}", fontsize=10)
    ax.set_xlabel(AXIS[x])
    ax.set_ylabel(AXIS[y])
    if y == "val_acc" and not data.empty:
        fit_accuracy(ax)


def figure_curves(curves: pd.DataFrame, path: Path) -> Path | None:
    """A row of panels per task (``PANELS``): validation accuracy and training loss, each against the step and
    against wall-clock time; the variants' legend beside the row."""
    if curves.empty:
        return None
    tasks = sorted(curves["task"].unique())
    variants = sorted(curves["variant"].unique())
    palette = dict(zip(variants, sns.color_palette("colorblind", len(variants)), strict=True))
    fig, axes = plt.subplots(len(tasks), len(PANELS), figsize=(4.2 * len(PANELS), 3.4 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks, strict=True):
        t = curves[curves["task"] == task]
        t = t.assign(val_acc=100 * t["val_acc"])
        for ax, (x, y) in zip(row, PANELS, strict=True):
            _panel(ax, t, x, y, palette)
        row[0].set_title(f"{task}: {row[0].get_title()}", fontsize=10)
        shown = sorted(t["variant"].unique())
        row[-1].legend([Line2D([], [], color=palette[v], lw=2) for v in shown], shown, fontsize=8)
    suptitle(fig, "Validation accuracy and training loss during training, by step (line: mean over seeds; band: "
             "min-max) and by wall-clock time (one line per run)")
    return save_figure(fig, path)
