"""The training runs in the report: tables and figures from ``results/summary.csv`` (one row per
run record) and the runs' curves, and the sections that show them."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
import seaborn as sns

from attnbench.harness.report.writer import Document, save_figure

ENV_COLUMNS = ["host", "device", "device_name", "torch_threads", "python", "torch", "cuda", "git_commit", "git_dirty"]
ACCURACY_NOTE = ("Test accuracy of each run's {tested}, evaluated once; mean ± sample std over "
                 "seeds (n = seeds that finished ok). Chance and majority-class baselines are on the test split.")
TESTED = {"best": "best-validation checkpoint", "final": "final weights"}


def tested_checkpoints(df: pd.DataFrame) -> str:
    """Which weights the runs' test accuracies are of, in words (train.test_checkpoint)."""
    tested = sorted(set(df["tested_checkpoint"].dropna())) if "tested_checkpoint" in df else []
    if not tested:
        return TESTED["best"]
    return " or ".join(TESTED[t] for t in tested) + (" (the runs' tested_checkpoint)" if len(tested) > 1 else "")


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """task x variant cells 'mean ± std (n=k)' of test accuracy (%) over ok runs, plus baselines."""
    variants = sorted(df["variant"].unique())
    rows = []
    for task, tdf in df.groupby("task", sort=True):
        row = {"task": task}
        for v in variants:
            vdf = tdf[tdf["variant"] == v]
            ok = vdf[vdf["status"] == "ok"]["test_acc"].dropna()
            bad = vdf[vdf["status"] != "ok"]["status"].value_counts()
            cell = "–"
            if len(ok):
                std = f" ± {pct(ok.std(ddof=1))}" if len(ok) > 1 else ""
                cell = f"{pct(ok.mean())}{std} (n={len(ok)})"
            if len(bad):
                cell += (" " if len(ok) else "") + ", ".join(f"{s.upper()}×{c}" for s, c in bad.items())
            row[v] = cell if len(vdf) else ""
        row["chance"] = pct(tdf["chance_acc"].iloc[0])
        row["majority class"] = pct(tdf["majority_test_acc"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def efficiency_table(df: pd.DataFrame) -> pd.DataFrame:
    """Medians over seeds of the training cost measures, per task and variant."""
    ok = df[df["train_steps_per_s"].notna()]
    if ok.empty:
        return pd.DataFrame()
    g = ok.groupby(["task", "variant"], sort=True)
    out = g.agg(seq_len=("seq_len", "first"), batch=("batch_size", "first"),
                steps_per_s=("train_steps_per_s", "median"), train_tok_per_s=("train_tokens_per_s", "median"),
                eval_tok_per_s=("eval_tokens_per_s", "median"), peak_mem_mb=("peak_memory_mb", "median"),
                params=("params", "first"), runs=("seed", "count")).reset_index()
    out["steps_per_s"] = out["steps_per_s"].round(2)
    for c in ("train_tok_per_s", "eval_tok_per_s"):
        out[c] = out[c].round(0).astype("Int64")
    out["peak_mem_mb"] = out["peak_mem_mb"].round(1)
    return out


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["task", "variant", "seed", "status", "test_acc", "best_val_acc", "best_step", "steps_done", "wall_s",
            "message"]
    if "machine" in df and df["machine"].nunique() > 1:  # several machines: each run names its own
        cols.insert(3, "machine")
    out = df[cols].copy()
    for c in ("test_acc", "best_val_acc"):
        out[c] = out[c].map(lambda x: "" if pd.isna(x) else pct(x))
    out["message"] = out["message"].map(lambda m: "" if pd.isna(m) else m)
    return out


def environment_table(df: pd.DataFrame) -> pd.DataFrame:
    return df[ENV_COLUMNS].astype(str).drop_duplicates().reset_index(drop=True)


def load_curves(df: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for _, r in df.iterrows():
        path = Path(r["record"]).parent / "curve.csv"
        if path.exists() and path.stat().st_size:
            c = pd.read_csv(path)
            c["task"], c["variant"], c["seed"] = r["task"], r["variant"], r["seed"]
            frames.append(c)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def figure_accuracy_vs_throughput(df: pd.DataFrame, path: Path) -> Path | None:
    ok = df[(df["status"] == "ok") & df["test_acc"].notna() & df["train_tokens_per_s"].notna()]
    if ok.empty:
        return None
    tasks = sorted(ok["task"].unique())
    palette = dict(zip(sorted(df["variant"].unique()), sns.color_palette("colorblind", df["variant"].nunique()),
                       strict=True))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        t = ok[ok["task"] == task]
        for v, vdf in t.groupby("variant"):
            ax.scatter(vdf["train_tokens_per_s"], 100 * vdf["test_acc"], color=palette[v], alpha=0.35, s=18)
            ax.errorbar(vdf["train_tokens_per_s"].median(), 100 * vdf["test_acc"].mean(),
                        yerr=100 * vdf["test_acc"].std(ddof=1) if len(vdf) > 1 else None,
                        fmt="o", color=palette[v], ms=8, capsize=4, label=v)
        base = df[df["task"] == task].iloc[0]
        ax.axhline(100 * base["majority_test_acc"], color="grey", ls="--", lw=1, label="majority class")
        ax.axhline(100 * base["chance_acc"], color="grey", ls=":", lw=1, label="chance")
        spread = ok["train_tokens_per_s"].max() / ok["train_tokens_per_s"].min()
        if spread > 5:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
            ax.margins(x=0.25)
        ax.set_ylim(0, 100)
        ax.set_title(f"{task} (N={int(t['seq_len'].iloc[0])})")
        ax.set_xlabel("training throughput (tokens/s)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("Accuracy vs training throughput (mean ± std over seeds; faint dots: single seeds)")
    fig.tight_layout()
    return save_figure(fig, path)


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
    fig.suptitle("Validation accuracy during training (line: mean over seeds; band: min-max)")
    fig.tight_layout()
    return save_figure(fig, path)




def accuracy_section(doc: Document, df: pd.DataFrame) -> None:
    doc.heading(2, "Test accuracy (%)")
    doc.note(ACCURACY_NOTE.format(tested=tested_checkpoints(df)))
    doc.table(accuracy_table(df))


def figures_section(doc: Document, df: pd.DataFrame) -> None:
    """Accuracy against training throughput, and the validation curves."""
    figures = doc.out_dir / "figures"
    doc.heading(2, "Accuracy vs throughput")
    doc.figure(figure_accuracy_vs_throughput(df, figures / "accuracy_vs_throughput.png"),
               "Test accuracy vs training throughput per task", md_alt="accuracy vs throughput")
    doc.heading(2, "Validation accuracy during training")
    doc.figure(figure_curves(load_curves(df), figures / "validation_curves.png"), "Validation accuracy vs step",
               md_alt="validation curves")


def cost_section(doc: Document, df: pd.DataFrame) -> None:
    mem_methods = "; ".join(sorted(df["peak_memory_method"].dropna().unique()))
    timing_method = "; ".join(sorted(df["timing_method"].dropna().unique())) if "timing_method" in df else ""
    doc.heading(2, "Training cost (median over seeds)")
    doc.note(f"Timing: {timing_method}. Peak memory: {mem_methods}.")
    doc.table(efficiency_table(df))


def runs_section(doc: Document, df: pd.DataFrame) -> None:
    doc.heading(2, "Runs")
    doc.table(runs_table(df))
