"""The report's Distillation section: each distilled student against its teacher, from the
teacher columns of ``results/summary.csv``."""
from __future__ import annotations

import pandas as pd

from attnbench.harness.report.marks import MARK, incomplete
from attnbench.harness.report.measurements import whole
from attnbench.harness.report.runs import pct
from attnbench.harness.report.writer import Document

DISTILLATION_NOTE = (
    "Each distilled student (distilled[<its attention>]) against its teacher: the teacher variant's run of the "
    "same task and seed. "
    "Means over the seeds where both have a test accuracy, whatever their status (pairs: such pairs / distilled "
    f"runs; {MARK}: a student or teacher among them did not finish ok: the Runs table says where it stopped). "
    "Accuracy kept = student test accuracy / teacher test accuracy; Δ = student minus teacher, in points. "
    "Train speed = training tokens/s of the distillation step (the teacher's forward pass included) over the "
    "teacher's own training tokens/s; eval speed = the student's evaluation tokens/s over the teacher's; "
    "params = student / teacher parameter count. Above 1 (×) is faster or larger.")


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    return num / den.where(den > 0)


def _mean(s: pd.Series) -> float:
    return s.mean() if s.notna().any() else float("nan")


def _g(x: float) -> str:
    return f"{x:g}"


def _fmt(x: float, f) -> str:
    return "–" if pd.isna(x) else f(x)


def distillation_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per task and distilled variant: accuracy kept and speed gained versus the teacher, as
    means over seeds of the per-seed ratios (empty when no run was distilled)."""
    if "teacher_run_id" not in df or df["teacher_run_id"].isna().all():
        return pd.DataFrame()
    rows = []
    for (task, variant), g in df[df["teacher_run_id"].notna()].groupby(["task", "variant"], sort=True):
        first = g.iloc[0]
        pairs = g[g["test_acc"].notna() & g["teacher_test_acc"].notna()]
        early = incomplete(pairs) | (pairs["teacher_status"] != "ok")
        kept = _mean(_ratio(pairs["test_acc"], pairs["teacher_test_acc"]))
        delta = _mean(pairs["test_acc"] - pairs["teacher_test_acc"])
        train = _mean(_ratio(pairs["train_tokens_per_s"], pairs["teacher_train_tokens_per_s"]))
        evals = _mean(_ratio(pairs["eval_tokens_per_s"], pairs["teacher_eval_tokens_per_s"]))
        params = _mean(_ratio(pairs["params"], pairs["teacher_params"]))
        rows.append({
            "task": task, "student": variant, "teacher": str(first["teacher_run_id"]).split("/")[1],
            "layers (student/teacher)": f"{whole(first['layers'])}/{whole(first['teacher_layers'])}",
            "student attention": first["attention"],
            "T, alpha": f"{_fmt(first['distill_temperature'], _g)}, {_fmt(first['distill_alpha'], _g)}",
            "pairs": f"{len(pairs)}/{len(g)}" + (MARK if early.any() else ""),
            "student acc (%)": _fmt(_mean(pairs["test_acc"]), pct),
            "teacher acc (%)": _fmt(_mean(pairs["teacher_test_acc"]), pct),
            "accuracy kept (%)": _fmt(kept, pct),
            "Δ acc (points)": _fmt(delta, lambda x: f"{100 * x:+.1f}"),
            "train speed (×)": _fmt(train, lambda x: f"{x:.2f}"),
            "eval speed (×)": _fmt(evals, lambda x: f"{x:.2f}"),
            "params (×)": _fmt(params, lambda x: f"{x:.2f}"),
        })
    return pd.DataFrame(rows)




def distillation_section(doc: Document, df: pd.DataFrame) -> None:
    """Nothing when no run was distilled."""
    table = distillation_table(df)
    if table.empty:
        return
    doc.heading(2, "Distillation")
    doc.note(DISTILLATION_NOTE)
    doc.table(table)
