"""The Self-pretraining section's figure: per task, each variant's test accuracy from scratch and
self-pretrained (mean ± std over its pairs, each pair's two runs as faint dots), joined by a line: its gain.
Points, not bars, so that the accuracy axis fits the values (``layout.fit_accuracy``) instead of starting at 0."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from attnbench.harness.report.layout import fit_accuracy
from attnbench.harness.report.marks import MARK
from attnbench.harness.report.writer import save_figure, suptitle

#: (column of a pair, legend label, marker face): from scratch hollow, self-pretrained filled
PROTOCOLS = (("scratch_test_acc", "from scratch", "white"), ("test_acc", "self-pretrained", None))
OFFSET = 0.15  # the two protocols either side of their variant's x


def _sd(values: pd.Series) -> float | None:
    return 100 * float(values.std(ddof=1)) if len(values) > 1 else None


def figure_pretraining(pairs: pd.DataFrame, marked: dict[tuple[str, str], bool], path: Path) -> Path | None:
    """``pairs``: one row per pair (``task``, ``name``: the variant, ``scratch_test_acc``, ``test_acc``);
    ``marked``: (task, variant) -> whether a run of its pairs did not finish ok (its label gets ``MARK``).
    None when there is no pair."""
    if pairs.empty:
        return None
    tasks = sorted(pairs["task"].unique())
    names = sorted(pairs["name"].unique())
    palette = dict(zip(names, sns.color_palette("colorblind", len(names)), strict=True))
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.2, 1.4 * pairs.groupby("task")["name"].nunique().max()
                                                         + 2.0) * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        t = pairs[pairs["task"] == task]
        variants = sorted(t["name"].unique())
        for x, name in enumerate(variants):
            v = t[t["name"] == name]
            means = [100 * float(v[column].mean()) for column, _, _ in PROTOCOLS]
            ax.plot([x - OFFSET, x + OFFSET], means, color=palette[name], lw=1.5)
            for dx, mean, (column, _, face) in zip((-OFFSET, OFFSET), means, PROTOCOLS, strict=True):
                ax.scatter([x + dx] * len(v), 100 * v[column], color=palette[name], alpha=0.3, s=14)
                ax.errorbar(x + dx, mean, yerr=_sd(v[column]), fmt="o", ms=8, capsize=4,
                            color=palette[name], markerfacecolor=face or palette[name])
        ax.set_xticks(range(len(variants)),
                      [n + (MARK if marked.get((task, n)) else "") for n in variants], rotation=20)
        ax.set_xlim(-0.6, len(variants) - 0.4)
        fit_accuracy(ax)
        ax.set_title(task)
        ax.set_ylabel("test accuracy (%)")
        ax.legend(handles=[Line2D([], [], ls="", marker="o", ms=8, color="grey", markerfacecolor=face or "grey",
                                  label=label) for _, label, face in PROTOCOLS], fontsize=8)
    suptitle(fig, "Test accuracy from scratch (hollow) and self-pretrained (filled) per variant: mean ± std over "
                  "the seeds paired; faint dots: single seeds" + (f"; {MARK}: with runs that did not finish ok"
                                                                  if any(marked.values()) else ""))
    return save_figure(fig, path)
