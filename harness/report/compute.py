"""Accuracy at equal compute: per task, every variant's validation accuracy against its cumulative
training time and training FLOPs (from the runs' ``curve.csv``), and the variants ranked at an equal
amount of each, so that a variant is not judged better for having been given more compute.

- Time is ``train_s`` (training steps only, evaluation excluded). A task whose curves do not all
  hold it (older runs) is placed by ``elapsed_s`` (wall time, evaluation included), and says so.
  FLOPs are ``train_flops``; runs whose curves lack them are left out of that view, and said.
- Equal time (or FLOPs): T is the least that every variant reached, the smallest over variants of
  their runs' last evaluation; each run's score is its best validation accuracy at an evaluation up
  to T (best so far), as a cell of the accuracy table (mean ± std over runs, n).
- Runs trained to a ``train.budget`` of seconds (or FLOPs) are at equal time (FLOPs) already: their
  test accuracies are ranked, per budget, and variants with different budgets never together.

Times are one machine's (the runs of several machines are ranked per machine); FLOPs do not depend on
the machine. As in every accuracy view, the runs with a test accuracy count, whatever their status
(``marks``), and the others do not."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
import seaborn as sns

from attnbench.harness.report.curves import load_curves
from attnbench.harness.report.layout import fit_accuracy
from attnbench.harness.report.marks import MARK, footnote, mark, tested
from attnbench.harness.report.runs import accuracy_cell
from attnbench.harness.report.writer import Document, save_figure, suptitle

TIME, ELAPSED, FLOPS = "train_s", "elapsed_s", "train_flops"
#: budget kind -> (curve column at equal amounts, the amount in words)
BUDGETS = {"seconds": (TIME, "training time"), "flops": (FLOPS, "training FLOPs")}


def amount(x: float, column: str) -> str:
    """'12.3 s', '1,230 s', '1,600 FLOPs', '4.5e12 FLOPs'."""
    if column == FLOPS:
        return (f"{x:,.0f}" if x < 1e4 else f"{x:.3g}".replace("e+", "e")) + " FLOPs"
    return f"{x:,.0f} s" if x >= 100 else f"{x:.3g} s"


def scoped(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``scope``: its task, and its machine too where the rows come from several (times are
    never compared across machines)."""
    several = "machine" in df and df["machine"].nunique() > 1
    scope = df["task"] + " on " + df["machine"] if several else df["task"]
    return df.assign(scope=scope)


def curves_of(df: pd.DataFrame) -> pd.DataFrame:
    """The curves of the runs of ``df`` with a test accuracy (a damaged one left out: the validation curves'
    section says so once), each with its run's ``scope``."""
    runs = scoped(tested(df))
    curves, _ = load_curves(runs)
    if curves.empty:
        return curves
    return curves.assign(scope=curves["record"].map(dict(zip(runs["record"], runs["scope"], strict=True))))


def time_column(curves: pd.DataFrame) -> str | None:
    """``train_s`` where every evaluation of these curves holds it, else ``elapsed_s`` where every one holds
    that, else None."""
    return next((c for c in (TIME, ELAPSED) if c in curves and curves[c].notna().all()), None)


def views(curves: pd.DataFrame, axis: str) -> dict[str, tuple[str, pd.DataFrame]]:
    """scope -> (the column it is placed by, its curves) on ``axis`` ("time" or "flops"): time by
    ``time_column``; FLOPs over the runs whose every evaluation holds ``train_flops``."""
    out = {}
    for scope, c in (curves.groupby("scope", sort=True) if len(curves) else []):
        if axis == "time":
            column = time_column(c)
            if column:
                out[scope] = (column, c)
        elif FLOPS in c:
            c = c[c.groupby("record")[FLOPS].transform(lambda x: x.notna().all())]
            if len(c):
                out[scope] = (FLOPS, c)
    return out


@dataclass(frozen=True)
class Equal:
    """One scope's variants at an equal amount ``limit`` of ``column``: ``runs`` (variant, status, test_acc:
    the run's best validation accuracy by then, NaN where it had no evaluation by then) and ``ranked``
    (variant, mean, cell, marked; best first)."""

    column: str
    limit: float
    runs: pd.DataFrame
    ranked: pd.DataFrame


def at_equal(curves: pd.DataFrame, column: str) -> Equal:
    """The variants of one scope's ``curves`` at the least amount of ``column`` every variant reached."""
    last = curves.groupby(["variant", "record"], sort=True).agg(reach=(column, "max"), status=("status", "first"))
    limit = float(last["reach"].groupby(level="variant").min().min())
    by_then = curves[curves[column] <= limit].groupby(["variant", "record"])["val_acc"].max()
    runs = last.assign(test_acc=by_then.reindex(last.index)).reset_index()
    rows = []
    for variant, v in runs.groupby("variant", sort=True):
        scored = v[v["test_acc"].notna()]
        late = len(v) - len(scored)
        rows.append({"variant": variant, "mean": scored["test_acc"].mean(), "marked": mark(v),
                     "cell": (accuracy_cell(scored) if len(scored) else "–")
                     + (f" ({late} without an evaluation by then)" if late else "")})
    ranked = pd.DataFrame(rows).sort_values(["mean", "variant"], ascending=[False, True], na_position="last")
    return Equal(column, limit, runs, ranked.reset_index(drop=True))


def equal_table(equals: dict[str, Equal], what: str) -> pd.DataFrame:
    """One row per (scope, variant), best first within each scope."""
    rows = []
    for scope, eq in equals.items():
        at = amount(eq.limit, eq.column) + (" (elapsed)" if eq.column == ELAPSED else "")
        for i, r in eq.ranked.iterrows():
            rows.append({"task": scope, "at": at, "rank": i + 1 if pd.notna(r["mean"]) else "–",
                         "variant": r["variant"] + r["marked"], f"best validation accuracy by {what} (%)": r["cell"]})
    return pd.DataFrame(rows)


def budgeted(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The runs of ``df`` trained to a ``kind`` budget (``budget_kind``), with ``limit`` as a number."""
    runs = df[df["budget_kind"] == kind] if "budget_kind" in df else df.iloc[0:0]
    limit = pd.to_numeric(runs["budget_limit"], errors="coerce") if len(runs) else math.nan
    return scoped(runs.assign(limit=limit)).dropna(subset=["limit"])


def budget_ranking(runs: pd.DataFrame) -> pd.DataFrame:
    """One budget's runs: per variant its test accuracy cell (as the accuracy table's), mean and mark, best
    first."""
    rows = [{"variant": variant, "mean": tested(v)["test_acc"].mean(), "cell": accuracy_cell(v),
             "marked": mark(tested(v)),
             "reached": pd.to_numeric(v["budget_reached"], errors="coerce").mean() if "budget_reached" in v
             else math.nan}
            for variant, v in runs.groupby("variant", sort=True)]
    ranked = pd.DataFrame(rows).sort_values(["mean", "variant"], ascending=[False, True], na_position="last")
    return ranked.reset_index(drop=True)


def budget_table(runs: pd.DataFrame, kind: str) -> tuple[pd.DataFrame, list[str]]:
    """The ``kind``-budget runs ranked per (scope, budget), and a note per scope whose variants had different
    budgets."""
    column = BUDGETS[kind][0]
    rows, differ = [], []
    for scope, s in runs.groupby("scope", sort=True):
        limits = sorted(s["limit"].unique())
        if len(limits) > 1:
            differ.append(f"{scope}: " + "; ".join(
                f"{amount(x, column)}: {', '.join(sorted(s[s['limit'] == x]['variant'].unique()))}" for x in limits))
        for limit in limits:
            for i, r in budget_ranking(s[s["limit"] == limit]).iterrows():
                rows.append({"task": scope, "budget": amount(limit, column),
                             "rank": i + 1 if pd.notna(r["mean"]) else "–", "variant": r["variant"] + r["marked"],
                             "test accuracy (%)": r["cell"],
                             "reached": "–" if pd.isna(r["reached"]) else amount(r["reached"], column)})
    return pd.DataFrame(rows), differ


@dataclass(frozen=True)
class Best:
    """A scope's best variant at equal training time: ``value`` (%), ``at`` (the time, in words), ``what``
    accuracy it is, ``marked``."""

    variant: str
    value: float
    at: str
    what: str
    marked: str


def equal_time_best(runs: pd.DataFrame) -> dict[str, Best]:
    """scope -> its best variant at equal training time: by test accuracy where every variant of the scope
    was trained to one seconds budget, else by best validation accuracy so far at T (``at_equal``)."""
    out = {}
    budget = budgeted(runs, "seconds")
    for scope, (column, c) in views(curves_of(runs), "time").items():
        eq = at_equal(c, column)
        if pd.notna(eq.ranked["mean"].iloc[0]):
            top = eq.ranked.iloc[0]
            where = "elapsed, evaluation included" if column == ELAPSED else "of training"
            out[scope] = Best(top["variant"], 100 * top["mean"], f"{amount(eq.limit, column)} {where}",
                              "best validation accuracy so far", top["marked"])
    ran = scoped(tested(runs))
    for scope, s in budget.groupby("scope", sort=True):
        top = budget_ranking(s).iloc[0]
        every = set(ran[ran["scope"] == scope]["variant"])
        if s["limit"].nunique() == 1 and every <= set(tested(s)["variant"]) and pd.notna(top["mean"]):
            out[scope] = Best(top["variant"], 100 * top["mean"], f"a budget of {amount(s['limit'].iloc[0], TIME)} "
                              "each", "test accuracy", top["marked"])
    return out


def tick(x: float, minor: bool = False) -> str:
    """A log axis' tick: '0.5', '20', '2e12'; of the minor ticks only 2 and 5 times a power of ten."""
    if x <= 0 or (minor and round(x / 10 ** math.floor(math.log10(x))) not in (2, 5)):
        return ""
    return f"{x:g}" if 0.01 <= x < 1e5 else f"{x:.0e}".replace("e+", "e")


def mean_curve(curves: pd.DataFrame, column: str) -> pd.DataFrame:
    """One variant's runs' mean ``column`` and ``val_acc`` per step, at the steps every run evaluated, ending
    with the mean of the runs' last evaluations where those are at different steps (runs stopped by a budget
    of time each stop at their own step)."""
    runs = curves.groupby("step")["record"].nunique()
    common = runs.index[runs == curves["record"].nunique()]
    mean = curves[curves["step"].isin(common)].groupby("step")[[column, "val_acc"]].mean()
    last = curves.sort_values("step").groupby("record").tail(1)
    if last["step"].nunique() > 1:
        mean = mean[mean.index < last["step"].min()]  # the last evaluations' own point stands for the end
        end = last[["step", column, "val_acc"]].mean()
        mean.loc[end["step"]] = end[[column, "val_acc"]]
    return mean


def figure_equal(found: dict[str, tuple[str, pd.DataFrame]], equals: dict[str, Equal], path: Path,
                 title: str) -> Path | None:
    """A panel per scope: each run's validation accuracy against its column, faint, and per variant the
    mean over its runs at the evaluations they all made (steps in common), on a log axis; a dotted line at
    the equal amount the table ranks at."""
    if not found:
        return None
    variants = sorted(set().union(*(set(c["variant"]) for _, c in found.values())))
    palette = dict(zip(variants, sns.color_palette("colorblind", len(variants)), strict=True))
    fig, axes = plt.subplots(1, len(found), figsize=(4.8 * len(found), 3.6), squeeze=False)
    for ax, (scope, (column, c)) in zip(axes[0], found.items(), strict=True):
        c = c[c[column] > 0]  # nothing at 0 on a log axis
        for variant, v in c.groupby("variant", sort=True):
            for _, run in v.groupby("record"):
                ax.plot(run[column], 100 * run["val_acc"], color=palette[variant], alpha=0.25, lw=0.8)
            mean = mean_curve(v, column)
            ax.plot(mean[column], 100 * mean["val_acc"], color=palette[variant], lw=2, marker=".",
                    label=variant + mark(v.drop_duplicates("record")))
        ax.axvline(equals[scope].limit, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: tick(x)))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: tick(x, minor=True)))
        ax.set_title(scope, fontsize=10)
        ax.set_xlabel({TIME: "training time (s)", ELAPSED: "elapsed time, evaluation included (s)",
                       FLOPS: "training FLOPs"}[column])
        ax.set_ylabel("validation accuracy (%)")
        fit_accuracy(ax)
        ax.legend(fontsize=8)
    suptitle(fig, title)
    return save_figure(fig, path)


def _budget_part(doc: Document, runs: pd.DataFrame, kind: str) -> None:
    """The test accuracies of the runs trained to a ``kind`` budget, ranked per budget (none: nothing)."""
    budget = budgeted(runs, kind)
    if budget.empty:
        return
    table, differ = budget_table(budget, kind)
    words = BUDGETS[kind][1]
    doc.note(f"Runs trained to a budget of {words} (`train.budget`) are at equal {words} already: their test "
             f"accuracies, ranked per budget (`reached`: {words} at the stop, mean)."
             + (f" Budgets differ between variants, never ranked together: {'; '.join(differ)}." if differ else ""))
    doc.table(table)


def _time_part(doc: Document, curves: pd.DataFrame, runs: pd.DataFrame) -> None:
    found = views(curves, "time")
    equals = {scope: at_equal(c, column) for scope, (column, c) in found.items()}
    elapsed = [scope for scope, (column, _) in found.items() if column == ELAPSED]
    older = (f"{', '.join(elapsed)}: time is elapsed_s (evaluation included), as not all their curves hold train_s"
             if elapsed else "")
    doc.figure(figure_equal(found, equals, doc.out_dir / "figures" / "accuracy_vs_time.png",
                            "Validation accuracy against training time"),
               "Validation accuracy against training time per task (thick: mean over runs at the evaluations they "
               "all made; faint: each run; dotted: T)" + (f"; {older}" if older else ""), md_alt="accuracy vs time")
    if equals:
        doc.note("At equal training time T (per task: the shortest time any variant's runs reached at their last "
                 "evaluation, so every variant trained at least T): each run's best validation accuracy at an "
                 "evaluation up to T; mean ± std over runs (n), best first." + (f" {older}." if older else ""))
        doc.table(equal_table(equals, "T"))
    _budget_part(doc, runs, "seconds")


def _flops_part(doc: Document, curves: pd.DataFrame, runs: pd.DataFrame) -> None:
    found = views(curves, "flops")
    if not found:
        doc.note("No curve holds training FLOPs (`train_flops`, written by newer runs): the FLOPs view is left out.")
    else:
        equals = {scope: at_equal(c, column) for scope, (column, c) in found.items()}
        without = sorted(set(curves["record"]) - set().union(*(set(c["record"]) for _, c in found.values())))
        doc.figure(figure_equal(found, equals, doc.out_dir / "figures" / "accuracy_vs_flops.png",
                                "Validation accuracy against training FLOPs"),
                   "Validation accuracy against cumulative training FLOPs per task (as above; dotted: F)",
                   md_alt="accuracy vs FLOPs")
        doc.note("At equal training FLOPs F (as T above)" + (f"; {len(without)} run(s) without FLOPs in their "
                                                             "curves left out" if without else "") + ":")
        doc.table(equal_table(equals, "F"))
    _budget_part(doc, runs, "flops")


def equal_compute_section(doc: Document, acc: pd.DataFrame, cost: pd.DataFrame) -> None:
    """The section: time from ``cost`` (runs named per machine where several: times never pooled), FLOPs from
    ``acc`` (runs pooled as the accuracy tables pool them)."""
    doc.heading(2, "Accuracy at equal compute")
    time_curves, flops_curves = curves_of(cost), curves_of(acc)
    if time_curves.empty and not len(budgeted(cost, "seconds")) and not len(budgeted(acc, "flops")):
        doc.note("No validation curves to place (a curve.csv beside each run's record) and no run trained to a "
                 "budget of seconds or FLOPs.")
        return
    doc.note("From each run's validation curve (`curve.csv`: one point per evaluation): training time is "
             "`train_s` (training steps only), FLOPs `train_flops` (steps × FLOPs of one step). Runs with a test "
             f"accuracy count, whatever their status (marked {MARK}); others are left out, as in every accuracy "
             "view.")
    _time_part(doc, time_curves, cost)
    _flops_part(doc, flops_curves, acc)
    used = set(time_curves.get("record", [])) | set(flops_curves.get("record", []))
    used |= set(budgeted(cost, "seconds")["record"]) | set(budgeted(acc, "flops")["record"])
    note = footnote(tested(cost[cost["record"].isin(used)]))
    if note:
        doc.note(note)
