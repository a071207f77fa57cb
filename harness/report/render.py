"""Render the comparison report from ``results/summary.csv`` and the runs' curves, and/or the
efficiency sweep's ``results/bench.csv``: ``reports/index.html`` (self-contained, figures
embedded), ``reports/summary.md`` and ``reports/figures/*.png``. Every number comes from a run
record or a sweep case; nothing is re-measured."""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from attnbench.harness.core.io import atomic_write_bytes, atomic_write_text  # noqa: E402

ENV_COLUMNS = ["host", "device", "device_name", "torch_threads", "python", "torch", "cuda", "git_commit", "git_dirty"]


def _pct(x: float) -> str:
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
                std = f" ± {_pct(ok.std(ddof=1))}" if len(ok) > 1 else ""
                cell = f"{_pct(ok.mean())}{std} (n={len(ok)})"
            if len(bad):
                cell += (" " if len(ok) else "") + ", ".join(f"{s.upper()}×{c}" for s, c in bad.items())
            row[v] = cell if len(vdf) else ""
        row["chance"] = _pct(tdf["chance_acc"].iloc[0])
        row["majority class"] = _pct(tdf["majority_test_acc"].iloc[0])
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


DISTILLATION_NOTE = (
    "Each distilled student (distilled[<its attention>]) against its teacher: the teacher variant's run of the "
    "same task and seed. "
    "Means over the seeds where both finished ok (pairs: ok / distilled runs). Accuracy kept = student test "
    "accuracy / teacher test accuracy; Δ = student minus teacher, in points. Train speed = training tokens/s "
    "of the distillation step (the teacher's forward pass included) over the teacher's own training "
    "tokens/s; eval speed = the student's evaluation tokens/s over the teacher's; params = student / teacher "
    "parameter count. Above 1 (×) is faster or larger.")


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    return num / den.where(den > 0)


def distillation_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per task and distilled variant: accuracy kept and speed gained versus the teacher, as
    means over seeds of the per-seed ratios (empty when no run was distilled)."""
    if "teacher_run_id" not in df or df["teacher_run_id"].isna().all():
        return pd.DataFrame()
    rows = []
    for (task, variant), g in df[df["teacher_run_id"].notna()].groupby(["task", "variant"], sort=True):
        first = g.iloc[0]
        pairs = g[(g["status"] == "ok") & (g["teacher_status"] == "ok")
                  & g["test_acc"].notna() & g["teacher_test_acc"].notna()]
        mean = lambda s: s.mean() if s.notna().any() else float("nan")  # noqa: E731
        fmt = lambda x, f: "–" if pd.isna(x) else f(x)  # noqa: E731
        kept = mean(_ratio(pairs["test_acc"], pairs["teacher_test_acc"]))
        delta = mean(pairs["test_acc"] - pairs["teacher_test_acc"])
        train = mean(_ratio(pairs["train_tokens_per_s"], pairs["teacher_train_tokens_per_s"]))
        evals = mean(_ratio(pairs["eval_tokens_per_s"], pairs["teacher_eval_tokens_per_s"]))
        params = mean(_ratio(pairs["params"], pairs["teacher_params"]))
        rows.append({
            "task": task, "student": variant, "teacher": str(first["teacher_run_id"]).split("/")[1],
            "layers (student/teacher)": f"{int(first['layers'])}/{int(first['teacher_layers'])}",
            "student attention": first["attention"],
            "T, alpha": f"{first['distill_temperature']:g}, {first['distill_alpha']:g}",
            "pairs": f"{len(pairs)}/{len(g)}",
            "student acc (%)": fmt(mean(pairs["test_acc"]), _pct),
            "teacher acc (%)": fmt(mean(pairs["teacher_test_acc"]), _pct),
            "accuracy kept (%)": fmt(kept, _pct),
            "Δ acc (points)": fmt(delta, lambda x: f"{100 * x:+.1f}"),
            "train speed (×)": fmt(train, lambda x: f"{x:.2f}"),
            "eval speed (×)": fmt(evals, lambda x: f"{x:.2f}"),
            "params (×)": fmt(params, lambda x: f"{x:.2f}"),
        })
    return pd.DataFrame(rows)


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["task", "variant", "seed", "status", "test_acc", "best_val_acc", "best_step", "steps_done", "wall_s", "message"]
    out = df[cols].copy()
    for c in ("test_acc", "best_val_acc"):
        out[c] = out[c].map(lambda x: "" if pd.isna(x) else _pct(x))
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
    palette = dict(zip(sorted(df["variant"].unique()), sns.color_palette("colorblind", df["variant"].nunique())))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
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
    return _save(fig, path)


def figure_curves(curves: pd.DataFrame, path: Path) -> Path | None:
    if curves.empty:
        return None
    tasks = sorted(curves["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        t = curves[curves["task"] == task].copy()
        t["val_acc"] *= 100
        sns.lineplot(data=t, x="step", y="val_acc", hue="variant", errorbar=("pi", 100), ax=ax, palette="colorblind")
        ax.set_title(task)
        ax.set_ylabel("validation accuracy (%)")
    fig.suptitle("Validation accuracy during training (line: mean over seeds; band: min-max)")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(r[c]) else str(r[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>(none)</em></p>"
    return df.to_html(index=False, escape=True, na_rep="", border=0, classes="t")


def _img(path: Path | None, alt: str) -> str:
    if path is None:
        return f"<p><em>{html.escape(alt)}: no data to plot</em></p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table.t{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
table.t th,table.t td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
table.t th{background:#f3f3f3} img{max-width:100%} figcaption{font-size:.85em;color:#555}
.note{color:#555;font-size:.9em} .bad{color:#a00}"""


def _read_table(path: Path | None) -> pd.DataFrame:
    """A CSV as a DataFrame; empty when there is no path or the file holds no rows."""
    if path is None:
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _write_report(out_dir: Path, title: str, md: list[str], body: list[str]) -> Path:
    """Write ``summary.md`` and the self-contained ``index.html``; returns the latter."""
    atomic_write_text(out_dir / "summary.md", "\n".join(md))
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
    index = out_dir / "index.html"
    atomic_write_text(index, page)
    return index


def _stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def render_report(summary_csv: Path | None, out_dir: Path, bench_csv: Path | None = None,
                  lra_average: int = 5) -> Path:
    """Render ``out_dir/index.html`` and ``out_dir/summary.md`` (figures in ``out_dir/figures``)
    from the training runs' ``summary_csv`` and/or the efficiency sweep's ``bench_csv``.

    With both, the sweep's section follows the training cost; with only the sweep, the report
    holds the sweep alone. ``lra_average`` is the LRA Table 1 comparison's averaging convention
    (5 or 6 tasks, ``attnbench.harness.report.lra_published``). Raises ValueError when neither holds any rows."""
    df, bench = _read_table(summary_csv), _read_table(bench_csv)
    if df.empty and bench.empty:
        why = [f"{summary_csv} holds no runs" if summary_csv is not None else "no summary_csv given",
               f"{bench_csv} holds no efficiency cases" if bench_csv is not None else "no bench_csv given"]
        raise ValueError(f"{'; '.join(why)}: nothing to report")
    bench_md, bench_html = "", ""
    if not bench.empty:
        from attnbench.harness.report.bench import bench_section

        bench_md, bench_html = bench_section(bench, out_dir / "figures", bench_csv)
    if df.empty:
        return _render_bench_only(bench, bench_csv, out_dir, bench_md, bench_html)
    return _render_runs(df, summary_csv, out_dir, bench_md, bench_html, lra_average)


def _render_bench_only(bench: pd.DataFrame, bench_csv: Path, out_dir: Path, bench_md: str, bench_html: str) -> Path:
    """The report of an efficiency sweep without training runs."""
    from attnbench.harness.report.bench import bench_environment_table

    title = "attnbench efficiency report"
    counts = bench["status"].value_counts()
    status_line = f"{len(bench)} cases: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    env, stamp = bench_environment_table(bench), _stamp()
    md = [f"# {title}", "", f"Generated {stamp} from `{bench_csv}`. {status_line}.", "", bench_md,
          "## Environment", "", "The machines and library versions these numbers come from:", "", _md_table(env)]
    body = [f"<h1>{title}</h1>",
            (f"<p class='note'>Generated {stamp} from <code>{html.escape(str(bench_csv))}</code>. "
             f"{html.escape(status_line)}.</p>"), bench_html,
            "<h2>Environment</h2>", "<p class='note'>The machines and library versions these numbers come from.</p>",
            _html_table(env)]
    return _write_report(out_dir, title, md, body)


def _render_runs(df: pd.DataFrame, summary_csv: Path, out_dir: Path, bench_md: str, bench_html: str,
                 lra_average: int = 5) -> Path:
    """The report of the training runs, with the LRA Table 1 comparison after the accuracy table
    and the efficiency sweep's section (if any) after the training cost."""
    from attnbench.harness.report.lra import lra_section

    figures = out_dir / "figures"
    acc_fig = figure_accuracy_vs_throughput(df, figures / "accuracy_vs_throughput.png")
    curve_fig = figure_curves(load_curves(df), figures / "validation_curves.png")
    acc, eff, runs, env = accuracy_table(df), efficiency_table(df), runs_table(df), environment_table(df)
    distill = distillation_table(df)
    lra_md, lra_html = lra_section(df, lra_average)
    status_counts = df["status"].value_counts().to_dict()
    mem_methods = sorted(df["peak_memory_method"].dropna().unique())
    timing_method = "; ".join(sorted(df["timing_method"].dropna().unique())) if "timing_method" in df else ""
    stamp = _stamp()
    not_ok = {k: v for k, v in status_counts.items() if k != "ok"}
    status_line = f"{len(df)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(status_counts.items()))

    md = [
        "# attnbench report", "",
        f"Generated {stamp} from `{summary_csv}`. {status_line}.", "",
        "## Test accuracy (%)", "",
        ("Test accuracy of each run's best-validation checkpoint, evaluated once; mean ± sample std over seeds "
         "(n = seeds that finished ok). Chance and majority-class baselines are on the test split."), "",
        _md_table(acc),
        *([lra_md] if lra_md else []),
        "## Accuracy vs throughput", "",
        "![accuracy vs throughput](figures/accuracy_vs_throughput.png)" if acc_fig else "_no data_", "",
        "## Validation accuracy during training", "",
        "![validation curves](figures/validation_curves.png)" if curve_fig else "_no data_", "",
        "## Training cost (median over seeds)", "",
        f"Timing: {timing_method}. Peak memory: {'; '.join(mem_methods)}.", "",
        _md_table(eff),
        *([bench_md] if bench_md else []),
        *(["## Distillation", "", DISTILLATION_NOTE, "", _md_table(distill)] if not distill.empty else []),
        "## Runs", "", _md_table(runs),
        "## Environment", "", "The machines and code versions these numbers come from:", "", _md_table(env),
    ]

    body = [
        "<h1>attnbench report</h1>",
        (f"<p class='note'>Generated {stamp} from <code>{html.escape(str(summary_csv))}</code>. "
         f"{html.escape(status_line)}.</p>"),
        (f"<p class='bad'>Runs that did not finish ok: {html.escape(json.dumps(not_ok))} (see Runs).</p>" if not_ok else ""),
        "<h2>Test accuracy (%)</h2>",
        ("<p class='note'>Test accuracy of each run's best-validation checkpoint, evaluated once; mean ± sample std "
         "over seeds (n = seeds that finished ok). Chance and majority-class baselines are on the test split.</p>"),
        _html_table(acc),
        lra_html,
        "<h2>Accuracy vs throughput</h2>", _img(acc_fig, "Test accuracy vs training throughput per task"),
        "<h2>Validation accuracy during training</h2>", _img(curve_fig, "Validation accuracy vs step"),
        "<h2>Training cost (median over seeds)</h2>",
        f"<p class='note'>Timing: {html.escape(timing_method)}. Peak memory: {html.escape('; '.join(mem_methods))}.</p>",
        _html_table(eff),
        bench_html,
        *([f"<h2>Distillation</h2><p class='note'>{html.escape(DISTILLATION_NOTE)}</p>", _html_table(distill)]
          if not distill.empty else []),
        "<h2>Runs</h2>", _html_table(runs),
        "<h2>Environment</h2>", "<p class='note'>The machines and code versions these numbers come from.</p>",
        _html_table(env),
    ]
    return _write_report(out_dir, "attnbench report", md, body)
