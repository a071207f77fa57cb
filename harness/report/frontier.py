"""The accuracy/cost Pareto frontier of a run: per task, each variant as one point (mean test
accuracy over seeds against median training throughput, and against median peak training
memory), the points no other variant beats on both axes, and the figure that marks them. Every run
with a test accuracy counts, whatever its status; a variant with runs that did not finish ok is named
with ``marks.MARK`` and drawn as a diamond."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from attnbench.harness.report.layout import fit_accuracy
from attnbench.harness.report.marks import MARK, incomplete, tested
from attnbench.harness.report.measurements import whole
from attnbench.harness.report.writer import save_figure, suptitle

#: cost axis -> (summary.csv column, label, higher is better)
AXES = {"throughput": ("train_tokens_per_s", "training throughput (tokens/s)", True),
        "memory": ("peak_memory_mb", "peak training memory (MiB)", False)}


def points(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, variant) with tested runs: accuracy (%, mean over seeds), each cost axis
    (medians over seeds), and ``marked`` (True when some of its runs did not finish ok)."""
    runs = tested(df).assign(marked=lambda d: incomplete(d))
    if runs.empty:
        return pd.DataFrame(columns=["task", "variant", "accuracy", *AXES, "marked"])
    g = runs.groupby(["task", "variant"], sort=True)
    out = g.agg(accuracy=("test_acc", "mean"), **{axis: (column, "median") for axis, (column, _, _) in AXES.items()},
                marked=("marked", "any")).reset_index()
    out["accuracy"] *= 100
    return out


def name(point) -> str:
    """A point's variant, marked when some of its runs did not finish ok."""
    return point["variant"] + (MARK if point["marked"] else "")


def on_frontier(pts: pd.DataFrame, axis: str) -> pd.Series:
    """Per row of one task's points: True where no other point is at least as accurate and at
    least as cheap on ``axis`` while strictly better on one of the two (rows without a cost: False)."""
    better = AXES[axis][2]
    flags = []
    for i, p in pts.iterrows():
        if pd.isna(p[axis]):
            flags.append(False)
            continue
        others = pts.drop(index=i).dropna(subset=[axis])
        cheap_eq = others[axis] >= p[axis] if better else others[axis] <= p[axis]
        cheap_lt = others[axis] > p[axis] if better else others[axis] < p[axis]
        dominated = ((others["accuracy"] >= p["accuracy"]) & cheap_eq
                     & ((others["accuracy"] > p["accuracy"]) | cheap_lt)).any()
        flags.append(not dominated)
    return pd.Series(flags, index=pts.index, dtype=bool)


def frontiers(df: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    """task -> axis -> the variants on its frontier, ordered from cheapest to most accurate (``name``:
    marked when some of their runs did not finish ok)."""
    pts = points(df)
    out: dict[str, dict[str, list[str]]] = {}
    for task, t in pts.groupby("task", sort=True):
        out[task] = {}
        for axis, (_, _, better) in AXES.items():
            front = t[on_frontier(t, axis)]
            out[task][axis] = [name(p) for _, p in front.sort_values(axis, ascending=not better).iterrows()]
    return out


def figure_frontier(df: pd.DataFrame, path: Path) -> Path | None:
    """Rows = cost axes, columns = tasks; frontier points filled with a dark edge and joined by a
    dashed line, the others hollow; every point labelled with its variant."""
    pts = points(df)
    if pts.empty:
        return None
    tasks = sorted(pts["task"].unique())
    variants = sorted(df["variant"].unique())
    palette = dict(zip(variants, sns.color_palette("colorblind", len(variants)), strict=True))
    fig, axes = plt.subplots(len(AXES), len(tasks), figsize=(max(4.4 * len(tasks), 6.5), 5.8), squeeze=False)
    for col, task in enumerate(tasks):
        t = pts[pts["task"] == task].reset_index(drop=True)
        for row, (axis, (_, label, better)) in enumerate(AXES.items()):
            ax = axes[row][col]
            front = on_frontier(t, axis)
            line = t[front].sort_values(axis)
            ax.plot(line[axis], line["accuracy"], ls="--", color="black", lw=1, zorder=1)
            for i, p in t.iterrows():
                if pd.isna(p[axis]):
                    continue
                ax.scatter(p[axis], p["accuracy"], s=70 if front[i] else 45, zorder=2,
                           color=palette[p["variant"]] if front[i] else "white", marker="D" if p["marked"] else "o",
                           edgecolors="black" if front[i] else palette[p["variant"]], linewidths=1.5)
                ax.annotate(name(p), (p[axis], p["accuracy"]), textcoords="offset points", xytext=(5, 4),
                            fontsize=7.5)
            spread = t[axis].max() / t[axis].min() if t[axis].min() > 0 else 1  # NaN (no costs): 1
            if spread > 5:
                ax.set_xscale("log")
            ax.margins(x=0.2)
            fit_accuracy(ax)
            ax.set_xlabel(label + (" →" if better else " ← better"), fontsize=8.5)
            ax.set_ylabel("test accuracy (%)", fontsize=8.5)
            ax.tick_params(labelsize=7.5)
            if row == 0:
                ax.set_title(f"{task} (N={whole(df[df['task'] == task]['seq_len'].iloc[0])})", fontsize=10)
    suptitle(fig, "Accuracy/cost frontier per task (filled, dashed: on the frontier; hollow: beaten on both axes "
             "by another variant" + (f"; diamond, {MARK}: with runs that did not finish ok" if pts["marked"].any()
                                     else "") + ")", fontsize=10)
    return save_figure(fig, path)
