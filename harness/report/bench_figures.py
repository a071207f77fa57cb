"""The efficiency sweep's figures in the report: log-log scaling of time and peak memory with the sequence
length n, one line per impl labelled with its fitted exponent, from ``results/bench.csv``."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from attnbench.harness.report.bench_cases import MODE_ORDER, SCOPE_ORDER, fit_exponents, impl_order, ok_cases, ordered
from attnbench.harness.report.writer import save_figure, suptitle

METRIC_LABELS = {"median_s": "time per step (s)", "peak_mb": "peak memory (MiB)"}
EXPONENT_COLUMNS = {"median_s": "time_exponent", "peak_mb": "memory_exponent"}


def impl_palette(impls: Iterable[str]) -> dict[str, tuple[Any, ...]]:
    """One colour per impl, fixed by the impl order so that every figure agrees."""
    order = impl_order(impls)
    # strict=False: the palette has at least one colour, so no impls must give an empty dict
    return dict(zip(order, sns.color_palette("colorblind", max(len(order), 1)), strict=False))


def _not_ok_label(statuses: Iterable[str]) -> str:
    return "/".join(s.upper() if s == "oom" else s for s in sorted(set(statuses)))


def plot_scaling_panel(ax: Axes, cases: pd.DataFrame, exps: pd.DataFrame, metric: str,
                       palette: dict[str, tuple[Any, ...]]) -> None:
    """One log-log panel: a line per impl over its ok cases; an 'x' on the top edge where not ok."""
    exp_col = EXPONENT_COLUMNS[metric]
    failed: set[str] = set()
    for impl in impl_order(cases["impl"]):
        g = cases[cases["impl"] == impl].sort_values("n")
        ok = ok_cases(g)
        ok = ok[ok[metric].notna() & (ok[metric] > 0)]
        b = exps.loc[exps["impl"] == impl, exp_col]
        label = f"{impl} (b={b.iloc[0]:.2f})" if len(b) and pd.notna(b.iloc[0]) else impl
        dashed = (g["backend"] != "default").any() if "backend" in g else False
        if len(ok):
            ax.plot(ok["n"], ok[metric], marker="o", ms=4, ls="--" if dashed else "-",
                    color=palette[impl], label=label)
        bad = g[g["status"] != "ok"]
        if len(bad):
            failed |= set(bad["status"])
            ax.scatter(bad["n"], np.full(len(bad), 0.97), marker="x", s=40, color=palette[impl],
                       transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)
    handles, labels = ax.get_legend_handles_labels()
    if failed:
        handles.append(Line2D([], [], ls="none", marker="x", color="black"))
        labels.append(_not_ok_label(failed))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ns = sorted(cases["n"].unique())
    ax.set_xticks(ns, [str(n) for n in ns])  # the measured n, not every power of 2
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    if handles:
        ax.legend(handles, labels, fontsize=7)


def figure_scaling(df: pd.DataFrame, path: Path, metric: str, dtype: str, batch: int) -> Path | None:
    """Log-log scaling of ``metric`` ('median_s' or 'peak_mb') with n, rows = scope, columns =
    mode, one line per impl labelled with its fitted exponent b; non-default backends dashed,
    non-ok cases as an 'x' on the top edge. None when there is nothing to plot."""
    if metric not in METRIC_LABELS:
        raise ValueError(f"metric must be one of {sorted(METRIC_LABELS)}, not {metric!r}")
    sub = df[(df["dtype"] == dtype) & (df["batch"] == batch)]
    if not (ok_cases(sub)[metric] > 0).any():
        return None
    palette = impl_palette(df["impl"])
    exps = fit_exponents(sub)
    scopes, modes = ordered(sub["scope"], SCOPE_ORDER), ordered(sub["mode"], MODE_ORDER)
    fig, axes = plt.subplots(len(scopes), len(modes), figsize=(5.2 * len(modes), 3.9 * len(scopes)),
                             squeeze=False)
    for i, scope in enumerate(scopes):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            sel = (sub["scope"] == scope) & (sub["mode"] == mode)
            ex = (exps["scope"] == scope) & (exps["mode"] == mode)
            plot_scaling_panel(ax, sub[sel], exps[ex], metric, palette)
            ax.set_title(f"{scope}, {mode}", fontsize=10)
            ax.set_xlabel("sequence length n")
            ax.set_ylabel(METRIC_LABELS[metric])
    suptitle(fig, f"{METRIC_LABELS[metric]} vs n ({dtype}, batch {batch}); b = fitted log-log slope; "
                  "dashed: non-default backend", fontsize=10)  # wrapped when saved: one panel is narrower than it
    return save_figure(fig, path)
