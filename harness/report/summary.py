"""The report's opening "Summary": what the run found, written from the data: per task the best
variant and those statistically indistinguishable from it (paired by seed), the accuracy/cost
frontiers with their figure, per task the best variant at equal training time (``compute``), the
evidence flags where they apply (``flags``: runs still improving at their last step, training
throughput that differs widely between seeds, costs pooled across hosts), and per efficient variant
its speed and memory against full attention at the longest length the sweep measured, with the
crossover lengths.

Every run with a test accuracy counts, whatever its status (``marks``): a variant whose runs stopped
early is marked, with where they stopped, so no better run is ever left out of "best"."""
from __future__ import annotations

import math

import pandas as pd

from attnbench.harness.report.bench import headline
from attnbench.harness.report.compute import equal_time_best
from attnbench.harness.report.differences import accuracy_bounds, runs_of, seed_accuracies
from attnbench.harness.report.flags import hosts_line, improving_line, invocations_line, spread_line
from attnbench.harness.report.frontier import figure_frontier, frontiers
from attnbench.harness.report.length import length_lines
from attnbench.harness.report.marks import MARK, footnote, mark
from attnbench.harness.report.measurements import whole
from attnbench.harness.report.pretraining import pretraining_line
from attnbench.harness.report.stats import LEVEL, paired_difference, t_interval
from attnbench.harness.report.writer import Document

MAJORITY_MARGIN = 5.0  # points above the majority class below which a task is said to teach nothing


def _ci(low: float, high: float) -> str:
    if not math.isfinite(low):
        return "no interval (1 seed)"
    low, high = accuracy_bounds(low, high)
    return f"{low:.1f}–{high:.1f}"


def task_line(df: pd.DataFrame, task: str) -> str | None:
    """'listops (N=49, 2 seeds): best sparse 51.5% (95% CI 47.2–55.8); indistinguishable from it: ...'.
    Every run with a test accuracy counts: a variant with runs that did not finish ok is marked, and
    when the best is one, the best of the variants whose runs all finished is named beside it."""
    tdf = df[df["task"] == task]
    accs = {v: seed_accuracies(df, task, v) for v in sorted(tdf["variant"].unique())}
    accs = {v: a for v, a in accs.items() if not a.empty}
    if not accs:
        return None
    marked = {v: mark(runs_of(df, task, v)) for v in accs}
    best = max(accs, key=lambda v: (accs[v].mean(), v))
    iv = t_interval(accs[best])
    seeds = max(len(a) for a in accs.values())
    level = int(LEVEL * 100)
    text = (f"**{task}** (N={whole(tdf['seq_len'].iloc[0])}, {seeds} seed{'s' * (seeds > 1)}): best "
            f"**{best}**{marked[best]} {iv.mean:.1f}% ({level}% CI {_ci(iv.low, iv.high)})")
    tied, below, untested = [], [], []
    for v in accs:
        if v == best:
            continue
        d = paired_difference(accs[v], accs[best])
        if not d.defined:
            untested.append(v + marked[v])
        elif d.contains(0.0):
            tied.append(v + marked[v])
        else:
            below.append(f"{v}{marked[v]} ({d.mean:+.1f} points, CI {d.low:+.1f} to {d.high:+.1f})")
    if tied:
        text += f"; indistinguishable from it (paired by seed, {level}%): {', '.join(tied)}"
    if below:
        text += f"; below it: {', '.join(below)}"
    if untested:
        text += f"; not testable (fewer than 2 common seeds): {', '.join(untested)}"
    if marked[best]:
        text += _best_finished(accs, marked)
    majority = 100 * tdf["majority_test_acc"].iloc[0]
    if pd.notna(majority) and iv.mean < majority + MAJORITY_MARGIN:
        text += (f". No variant beats the majority class ({majority:.1f}%) by {MAJORITY_MARGIN:g} points: "
                 "this task taught nothing in this run")
    note = footnote(pd.concat([runs_of(df, task, v) for v in accs]))
    return text + "." + (f" {note}" if note else "")


def _best_finished(accs: dict[str, pd.Series], marked: dict[str, str]) -> str:
    """When the best variant holds runs that did not finish ok: the best of those whose runs all did."""
    finished = [v for v in accs if not marked[v]]
    if not finished:
        return "; no variant's runs all finished ok"
    best = max(finished, key=lambda v: (accs[v].mean(), v))
    return f"; best of the variants whose runs all finished ok: **{best}** {accs[best].mean():.1f}%"


def frontier_lines(df: pd.DataFrame) -> list[str]:
    fr = frontiers(df)
    lines = []
    for axis, what in (("throughput", "training throughput"), ("memory", "peak training memory")):
        parts = [f"{task}: {' → '.join(fr[task][axis])}" for task in fr if fr[task][axis]]
        if parts:
            marked = any(MARK in v for task in fr for v in fr[task][axis])
            lines.append(f"Frontier of accuracy against {what} (cheapest to most accurate): " + "; ".join(parts)
                         + (f" ({MARK}: with runs that did not finish ok, as above)" if marked else "") + ".")
    return lines


def equal_time_lines(runs: pd.DataFrame) -> list[str]:
    """Per task, 'At equal training time on **listops** (12.3 s of training; best validation accuracy so far):
    best **window** (61.0%).' (``compute.equal_time_best``: test accuracy where every variant had one seconds
    budget)."""
    return [f"At equal training time on **{task}** ({b.at}; {b.what}): best **{b.variant}**{b.marked} "
            f"({b.value:.1f}%)" + (f" ({MARK}: with runs that did not finish ok, as above)" if b.marked else "") + "."
            for task, b in equal_time_best(runs).items()]


def _times(x: float, what: str) -> str:
    """'1.41× the speed'; 'the speed not measured' where a side's measurement is missing (``measurements``)."""
    return f"{x:.3g}× the {what}" if math.isfinite(x) else f"the {what} not measured"


def _from(crossover: str, what: str) -> str:
    """A crossover cell of the sweep ('1024', 'none up to 4096', '≈ 12K (extrapolated)') as words."""
    if crossover.isdigit():
        return f"{what} from N={int(crossover):,}"
    if crossover.startswith("none up to "):
        return f"not {what} up to N={int(crossover.rsplit(' ', 1)[1]):,}"
    if crossover[:1] in "≈>":
        return f"{what} from N {crossover}"
    return f"{what}: {crossover}"


def bench_line(bench: pd.DataFrame) -> str | None:
    """Speed and memory of every efficient variant against full at the longest length measured."""
    if bench.empty:
        return None
    (scope, mode, dtype, batch), rows = headline(bench)
    if not rows:
        return None
    parts = []
    for r in rows:
        if r["n"] is None:
            parts.append(f"{r['impl']}: not comparable (no length where both ran ok)")
            continue
        parts.append(f"{r['impl']} {_times(r['speedup'], 'speed')}, {_times(r['memory'], 'memory')} at "
                     f"N={r['n']:,} ({_from(r['time_crossover'], 'faster')}, "
                     f"{_from(r['memory_crossover'], 'smaller')})")
    return (f"Against full attention in the efficiency sweep ({scope}, {mode.replace('_', '+')}, {dtype}, "
            f"batch {batch}): " + "; ".join(parts) + ".")


def summary_section(doc: Document, acc: pd.DataFrame, runs: pd.DataFrame, bench: pd.DataFrame,
                    tuned: str | None = None) -> None:
    """The opening section; every sentence is computed from the tables: ``acc`` the runs as the
    accuracy tables group them, ``runs`` the runs themselves (with their ``machine`` when several: the
    frontiers are per machine), ``bench`` the sweep of one machine (empty: none, or several machines,
    whose sweeps are never pooled); ``tuned`` the line that says the accuracies are of tuned settings
    (``tuning.tuned_line``), first."""
    doc.heading(2, "Summary")
    lines = [tuned] if tuned else []
    per_machine = list(_per_machine(runs))
    if not acc.empty:
        lines += [line for line in (task_line(acc, t) for t in sorted(acc["task"].unique())) if line]
        lines += length_lines(acc)
        lines += [line for line in [improving_line(acc)] if line]
        lines += [line for line in [pretraining_line(runs)] if line]
        cost_flags = [line for line in (spread_line(runs), hosts_line(runs), invocations_line(runs))
                      if line]  # per machine already
        for machine, runs in per_machine:  # frontiers and equal time are of one machine's costs: never across
            lines += [f"On {machine}: {line}" if machine else line
                      for line in frontier_lines(runs) + equal_time_lines(runs)]
        lines += cost_flags
    line = bench_line(bench)
    if line:
        lines.append(line)
    with doc.block("summary"):  # findings beside the figure: both on the first screen
        doc.bullets(lines)
        for i, (machine, runs) in enumerate(per_machine):
            name = "frontier.png" if i == 0 else f"frontier_{i + 1}.png"
            doc.figure(figure_frontier(runs, doc.out_dir / "figures" / name),
                       (f"{machine}: " if machine else "") + "Test accuracy against training throughput (top) and "
                       "peak training memory (bottom) per task; frontier points filled (click to enlarge)",
                       md_alt="accuracy/cost frontier" + (f" on {machine}" if machine else ""))


def _per_machine(runs: pd.DataFrame):
    """(machine or '', its runs): one entry, unnamed, when the runs come from one machine."""
    if runs.empty:
        return
    if "machine" not in runs or runs["machine"].nunique() <= 1:
        yield "", runs
        return
    for machine in sorted(runs["machine"].unique()):
        yield machine, runs[runs["machine"] == machine]
