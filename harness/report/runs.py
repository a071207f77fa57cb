"""The training runs in the report: tables and figures from ``results/summary.csv`` (one row per
run record), and the sections that show them (the runs' curves: ``curves``). Every run with a test
accuracy counts in the accuracy views, whatever its status, marked as ``marks`` says."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
import seaborn as sns

from attnbench.harness.report.curves import figure_curves, load_curves
from attnbench.harness.report.layout import fit_accuracy
from attnbench.harness.report.marks import MARK, TESTED, footnote, incomplete, mark, tested
from attnbench.harness.report.measurements import whole
from attnbench.harness.report.writer import Document, save_figure, suptitle

ENV_COLUMNS = ["host", "device", "device_name", "torch_threads", "python", "torch", "cuda", "git_commit", "git_dirty"]
ACCURACY_NOTE = ("Test accuracy of each run's {tested}, evaluated once; mean ± sample std over the n runs with "
                 f"a test accuracy, whatever their status: a run stopped by its time limit or by a diverging loss "
                 f"still tested a checkpoint, and a cell holding such runs is marked {MARK} (how many, e.g. "
                 "`timeout×1`, in the cell; where each stopped, below the table). Runs without a test accuracy "
                 "are counted after the cell in capitals (`OOM×1`, `FAILED×1`) and are not in the mean. Chance and "
                 "majority-class baselines are on the test split.")


def tested_checkpoints(df: pd.DataFrame) -> str:
    """Which weights the runs' test accuracies are of, in words (train.test_checkpoint)."""
    tested = sorted(set(df["tested_checkpoint"].dropna())) if "tested_checkpoint" in df else []
    if not tested:
        return TESTED["best"]
    return " or ".join(TESTED[t] for t in tested) + (" (the runs' tested_checkpoint)" if len(tested) > 1 else "")


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def counts(statuses: pd.Series, upper: bool) -> str:
    """'timeout×2, diverged×1' (``upper``: 'OOM×1')."""
    return ", ".join(f"{s.upper() if upper else s}×{c}" for s, c in statuses.value_counts().sort_index().items())


def accuracy_cell(runs: pd.DataFrame) -> str:
    """'51.0 ± 1.0 (n=3)', '76.0 (n=2; timeout×2)†', '– OOM×2' for one (task, variant)'s runs."""
    done = tested(runs)
    untested = runs[runs["test_acc"].isna()]["status"]
    cell = "–"
    if len(done):
        acc = done["test_acc"]
        std = f" ± {pct(acc.std(ddof=1))}" if len(acc) > 1 else ""
        early = done[incomplete(done)]["status"]
        cell = f"{pct(acc.mean())}{std} (n={len(acc)}{'; ' + counts(early, False) if len(early) else ''}){mark(done)}"
    return cell + (f" {counts(untested, True)}" if len(untested) else "")


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """task x variant cells of test accuracy (%) over the runs with one (``accuracy_cell``), plus baselines."""
    variants = sorted(df["variant"].unique())
    rows = []
    for task, tdf in df.groupby("task", sort=True):
        row = {"task": task}
        for v in variants:
            vdf = tdf[tdf["variant"] == v]
            row[v] = accuracy_cell(vdf) if len(vdf) else ""
        row["chance"] = _pct_or_dash(tdf["chance_acc"].iloc[0])
        row["majority class"] = _pct_or_dash(tdf["majority_test_acc"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def _pct_or_dash(x: float) -> str:
    return "–" if pd.isna(x) else pct(x)


def efficiency_table(df: pd.DataFrame) -> pd.DataFrame:
    """Medians over seeds of the training cost measures, per task and variant, over every run that
    measured its throughput whatever its status (``runs`` marked when some did not finish ok)."""
    measured = df[df["train_steps_per_s"].notna()]
    if measured.empty:
        return pd.DataFrame()
    g = measured.groupby(["task", "variant"], sort=True)
    out = g.agg(seq_len=("seq_len", "first"), batch=("batch_size", "first"),
                steps_per_s=("train_steps_per_s", "median"), train_tok_per_s=("train_tokens_per_s", "median"),
                eval_tok_per_s=("eval_tokens_per_s", "median"), peak_mem_mb=("peak_memory_mb", "median"),
                params=("params", "first"), runs=("seed", "count")).reset_index()
    out["steps_per_s"] = out["steps_per_s"].round(2)
    for c in ("train_tok_per_s", "eval_tok_per_s"):
        out[c] = out[c].round(0).astype("Int64")
    out["peak_mem_mb"] = out["peak_mem_mb"].round(1)
    marks = g.apply(mark, include_groups=False).reset_index(drop=True)
    out["runs"] = out["runs"].astype(str) + marks
    return out


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["task", "variant", "seed", "status", "test_acc", "best_val_acc", "best_step", "steps_done", "wall_s",
            "message"]
    if "machine" in df and df["machine"].nunique() > 1:  # several machines: each run names its own
        cols.insert(3, "machine")
    out = df[cols].copy()
    for c in ("test_acc", "best_val_acc"):
        out[c] = out[c].map(lambda x: "" if pd.isna(x) else pct(x))
    out["steps_done"] = [f"{whole(done)} of {whole(planned)}" for done, planned in
                         zip(df["steps_done"], df["steps_planned"], strict=True)]
    out["message"] = out["message"].map(lambda m: "" if pd.isna(m) else m)
    return out.rename(columns={"steps_done": "steps"})


def environment_table(df: pd.DataFrame) -> pd.DataFrame:
    return df[ENV_COLUMNS].astype(str).drop_duplicates().reset_index(drop=True)


def figure_accuracy_vs_throughput(df: pd.DataFrame, path: Path) -> Path | None:
    """Per task, each variant's mean test accuracy (± std over seeds) at its median throughput, over
    every run with both; a variant with runs that did not finish ok is a diamond labelled with
    ``MARK``, and those runs' own dots are crosses."""
    runs = tested(df)
    runs = runs[runs["train_tokens_per_s"].notna()]
    if runs.empty:
        return None
    tasks = sorted(runs["task"].unique())
    palette = dict(zip(sorted(df["variant"].unique()), sns.color_palette("colorblind", df["variant"].nunique()),
                       strict=True))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        t = runs[runs["task"] == task]
        for v, vdf in t.groupby("variant"):
            early = incomplete(vdf)
            for dots, marker in ((vdf[~early], "o"), (vdf[early], "x")):
                ax.scatter(dots["train_tokens_per_s"], 100 * dots["test_acc"], color=palette[v], alpha=0.35, s=18,
                           marker=marker)
            ax.errorbar(vdf["train_tokens_per_s"].median(), 100 * vdf["test_acc"].mean(),
                        yerr=100 * vdf["test_acc"].std(ddof=1) if len(vdf) > 1 else None,
                        fmt="D" if early.any() else "o", color=palette[v], ms=8, capsize=4, label=v + mark(vdf))
        base = df[df["task"] == task].iloc[0]
        ax.axhline(100 * base["majority_test_acc"], color="grey", ls="--", lw=1, label="majority class")
        ax.axhline(100 * base["chance_acc"], color="grey", ls=":", lw=1, label="chance")
        low = runs["train_tokens_per_s"].min()
        if low > 0 and runs["train_tokens_per_s"].max() / low > 5:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
            ax.margins(x=0.25)
        fit_accuracy(ax)  # the points, their error bars and the reference lines, not 0-100
        ax.set_title(f"{task} (N={whole(t['seq_len'].iloc[0])})")
        ax.set_xlabel("training throughput (tokens/s)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=8)
    suptitle(fig, "Accuracy vs training throughput (mean ± std over seeds; faint dots: single seeds"
             + (f"; {MARK}, diamonds, crosses: with runs that did not finish ok)" if incomplete(runs).any() else ")"))
    return save_figure(fig, path)


def accuracy_section(doc: Document, df: pd.DataFrame) -> None:
    doc.heading(2, "Test accuracy (%)")
    doc.note(ACCURACY_NOTE.format(tested=tested_checkpoints(df)))
    doc.table(accuracy_table(df))
    marked = footnote(tested(df))
    if marked:
        doc.note(marked)


def figures_section(doc: Document, df: pd.DataFrame) -> None:
    """Accuracy against training throughput, and the validation curves (a damaged curve: a warning)."""
    figures = doc.out_dir / "figures"
    doc.heading(2, "Accuracy vs throughput")
    doc.figure(figure_accuracy_vs_throughput(df, figures / "accuracy_vs_throughput.png"),
               "Test accuracy vs training throughput per task", md_alt="accuracy vs throughput")
    marked = footnote(tested(df[df["train_tokens_per_s"].notna()]))
    if marked:
        doc.note(marked)
    doc.heading(2, "Validation accuracy during training")
    curves, warnings = load_curves(df)
    for warning in warnings:
        doc.warn(warning)
    if not curves.empty:
        doc.note("Per task, validation accuracy and training loss (mean since the previous evaluation) at each "
                 "evaluation, against the step and against wall-clock time (`elapsed_s`: since training started, "
                 "evaluation included); training time alone is the x of Accuracy at equal compute.")
    doc.figure(figure_curves(curves, figures / "validation_curves.png"),
               "Validation accuracy and training loss against step and wall-clock time", md_alt="validation curves")


def cost_section(doc: Document, df: pd.DataFrame) -> None:
    mem_methods = "; ".join(sorted(df["peak_memory_method"].dropna().unique()))
    timing_method = "; ".join(sorted(df["timing_method"].dropna().unique())) if "timing_method" in df else ""
    doc.heading(2, "Training cost (median over seeds)")
    doc.note(f"Timing: {timing_method}. Peak memory: {mem_methods}. Medians over every run that measured its "
             f"throughput, whatever its status: a run's cost is real even when it stopped early; `runs` is marked "
             f"{MARK} where some of them did not finish ok (see Runs).")
    doc.table(efficiency_table(df))


def runs_section(doc: Document, df: pd.DataFrame) -> None:
    doc.heading(2, "Runs")
    doc.table(runs_table(df))
