"""Accuracy against length: a task the config runs at several lengths (ListOps' maximum
length, Pathfinder's resolution, a text task's truncation length: the runs' ``length``, named by
``length_param``) becomes one task per length (``task`` 'listops@256' of ``base_task`` 'listops'). Per
base task this view shows each variant's test accuracy at every length beside the efficiency sweep's
time per training step against sequence length (accuracy and cost against length side by side), and
says from which length each efficient variant falls more than ``MARGIN_PTS`` points below full
attention and stays there.

- A variant "falls below" the reference from length L when its mean test accuracy over seeds is more
  than the margin below the reference's at L and at every longer length; only lengths where both have
  a run with a test accuracy count. A dip that recovers at a longer length is no fall.
- As in every accuracy view, the runs with a test accuracy count whatever their status (``marks``),
  and the others do not. Tuning trials (``stage`` 'tune') and tasks run at one length (``length``
  empty) are not in this view."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
import seaborn as sns

from attnbench.harness.report.bench_cases import fit_exponents, impl_order, ok_cases, primary_setting
from attnbench.harness.report.bench_figures import plot_scaling_panel
from attnbench.harness.report.differences import REFERENCE, seed_accuracies
from attnbench.harness.report.layout import fit_accuracy
from attnbench.harness.report.marks import MARK, footnote, mark, tested
from attnbench.harness.report.runs import accuracy_cell
from attnbench.harness.report.tuning import final_runs
from attnbench.harness.report.writer import Document, save_figure, suptitle

MARGIN_PTS = 5.0  # accuracy points below the reference from which a variant is said to fall below it


# ---------------------------------------------------------------- the runs at several lengths

def at_lengths(acc: pd.DataFrame) -> pd.DataFrame:
    """The runs of ``acc`` whose base task ran at two or more lengths (tuning trials left out), with
    ``length`` as a number."""
    if acc.empty or "length" not in acc or "base_task" not in acc:
        return acc.iloc[0:0]
    runs = final_runs(acc.assign(length=pd.to_numeric(acc["length"], errors="coerce")).dropna(subset=["length"]))
    return runs[runs.groupby("base_task")["length"].transform("nunique") > 1]


def _length(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def fmt_length(x: float) -> str:
    """'1024', '0.5'."""
    return f"{_length(x)}" if float(x).is_integer() else f"{x:g}"


def lengths_of(runs: pd.DataFrame, base_task: str) -> dict[int | float, str]:
    """length -> the task that is ``base_task`` at that length, shortest first (``runs``: ``at_lengths``)."""
    sub = runs[runs["base_task"] == base_task]
    return {_length(n): task for n, task in sub.groupby("length", sort=True)["task"].first().items()}


def length_param(runs: pd.DataFrame, base_task: str) -> str:
    """The data setting the lengths of ``base_task`` are ('max_length'); 'length' where unrecorded."""
    sub = runs[runs["base_task"] == base_task]
    names = sorted(set(sub["length_param"].dropna().astype(str))) if "length_param" in sub else []
    return "/".join(names) or "length"


def mean_accuracies(runs: pd.DataFrame, base_task: str, variant: str) -> pd.Series:
    """length -> the variant's mean test accuracy (points) over its seeds, at the lengths where it has one."""
    means = {n: seed_accuracies(runs, task, variant) for n, task in lengths_of(runs, base_task).items()}
    return pd.Series({n: a.mean() for n, a in means.items() if len(a)}, dtype=float)


def taught_nothing(runs: pd.DataFrame, base_task: str, reference: str = REFERENCE,
                   margin: float = MARGIN_PTS) -> list[int | float]:
    """The lengths where the reference's mean test accuracy is within ``margin`` points of the majority class
    (as the Summary calls a task that taught nothing): no variant can fall ``margin`` points below it there, so
    those lengths say nothing about falling below it and are left out of the comparison."""
    out = []
    for n, task in lengths_of(runs, base_task).items():
        ref = runs[(runs["task"] == task) & (runs["variant"] == reference)]
        mean, majority = 100 * ref["test_acc"].mean(), 100 * ref["majority_test_acc"].mean()
        if pd.notna(mean) and pd.notna(majority) and mean < majority + margin:
            out.append(n)
    return out


def gaps(runs: pd.DataFrame, base_task: str, variant: str, reference: str = REFERENCE,
         margin: float = MARGIN_PTS) -> pd.Series:
    """length -> the variant's mean minus the reference's (points), at the lengths where both have one and the
    reference taught something (``taught_nothing``)."""
    v, r = mean_accuracies(runs, base_task, variant), mean_accuracies(runs, base_task, reference)
    r = r.drop(taught_nothing(runs, base_task, reference, margin), errors="ignore")
    common = v.index.intersection(r.index).sort_values()
    return v[common] - r[common]


def _fall(gap: pd.Series, margin: float) -> int | float | None:
    """The first length of the longest run of lengths, ending at the longest, more than ``margin`` below."""
    start = None
    for n, d in reversed(list(gap.items())):
        if not d < -margin:
            break
        start = n
    return start


def falls_below(acc: pd.DataFrame, base_task: str, variant: str, reference: str = REFERENCE,
                margin: float = MARGIN_PTS) -> int | float | None:
    """The shortest length from which ``variant``'s mean test accuracy is more than ``margin`` points below
    ``reference``'s at that and every longer length both ran; None when it does not (within the lengths run,
    or no length holds both)."""
    return _fall(gaps(at_lengths(acc), base_task, variant, reference, margin), margin)


# ---------------------------------------------------------------- the table and the Summary's lines

def _fall_cell(runs: pd.DataFrame, base_task: str, variant: str, reference: str, margin: float) -> str:
    """'256', 'none up to 1024', 'not comparable' ('' for the reference itself)."""
    if variant == reference:
        return ""
    gap = gaps(runs, base_task, variant, reference, margin)
    if gap.empty:
        return "not comparable"
    start = _fall(gap, margin)
    return fmt_length(start) if start is not None else f"none up to {fmt_length(gap.index[-1])}"


def length_table(acc: pd.DataFrame, reference: str = REFERENCE, margin: float = MARGIN_PTS) -> pd.DataFrame:
    """Per base task run at several lengths, one row per variant (``reference`` first): its test accuracy (%)
    at each length as the accuracy table's cell ('51.0 ± 1.0 (n=3)', marked where runs did not finish ok,
    '' where it did not run), and the length from which it falls more than ``margin`` points below the
    reference (``falls_below``). Columns: task, variant, the lengths (as text), that length."""
    runs = at_lengths(acc)
    fall = f"more than {margin:g} points below {reference} from"
    if runs.empty:
        return pd.DataFrame(columns=["task", "variant", fall])
    rows, every = [], set()
    for base in sorted(runs["base_task"].unique()):
        sub, lengths = runs[runs["base_task"] == base], lengths_of(runs, base)
        every |= set(lengths)
        for variant in impl_order(sub["variant"]):
            cells = {n: sub[(sub["task"] == task) & (sub["variant"] == variant)] for n, task in lengths.items()}
            rows.append({"task": base, "variant": variant,
                         **{fmt_length(n): accuracy_cell(c) if len(c) else "" for n, c in cells.items()},
                         fall: _fall_cell(runs, base, variant, reference, margin)})
    return pd.DataFrame(rows, columns=["task", "variant", *map(fmt_length, sorted(every)), fall])


def _names(names: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _base_line(runs: pd.DataFrame, base: str, reference: str, margin: float) -> str:
    sub, lengths = runs[runs["base_task"] == base], list(lengths_of(runs, base))
    head = (f"**{base}** at {len(lengths)} lengths ({length_param(runs, base)} {fmt_length(lengths[0])}–"
            f"{fmt_length(lengths[-1])})")
    marked = {v: mark(tested(sub[sub["variant"] == v])) for v in impl_order(sub["variant"])}
    ran = [v for v in marked if len(mean_accuracies(runs, base, v))]
    if reference not in ran:
        return f"{head}: no {reference} attention run with a test accuracy, so no variant is compared with it."
    if ran == [reference]:
        return f"{head}: only {reference} attention has a test accuracy."
    nothing = taught_nothing(runs, base, reference, margin)
    left_out = (f" ({'length' if len(nothing) == 1 else 'lengths'} {_names([fmt_length(n) for n in nothing])} left "
                f"out: {reference} is within {margin:g} points of the majority class there, so nothing can fall below "
                "it)") if nothing else ""
    if len(nothing) == len(lengths):
        return (f"{head}: {reference} is within {margin:g} points of the majority class at every length: no "
                "length taught anything to compare.")
    falls, dips, apart = [], [], []
    never: dict[int, list[str]] = {}  # the longest length both ran -> the variants that never fall
    for v in (v for v in ran if v != reference):
        gap, name = gaps(runs, base, v, reference, margin), v + marked[v]
        start = _fall(gap, margin) if len(gap) else None
        if gap.empty:
            apart.append(name)
        elif start is not None:
            falls.append((start, v, name, f"from length {fmt_length(start)} ({gap.iloc[-1]:+.1f} points at "
                          f"{fmt_length(gap.index[-1])})"))
        elif (gap < -margin).any():
            below = [fmt_length(n) for n in gap.index[gap < -margin]]
            dips.append(f"{name} is more than {margin:g} points below it at {_names(below)}, but not at the longest "
                        f"length both ran ({fmt_length(gap.index[-1])})")
        else:
            never.setdefault(gap.index[-1], []).append(name)
    lead = f"falls more than {margin:g} points below it "
    parts = [f"{name} {lead if i == 0 else ''}{where}" for i, (_, _, name, where) in enumerate(sorted(falls))]
    parts += dips
    parts += [f"{_names(names)} never fall{'s' * (len(names) == 1)} more than {margin:g} points below it up to "
              f"length {fmt_length(n)}" for n, names in sorted(never.items())]
    if apart:
        parts.append(f"{_names(apart)}: no length where both have a test accuracy")
    text = (f"{head}, mean test accuracy over seeds against **{reference}**{marked[reference]}: " + "; ".join(parts)
            + left_out)
    return text + (f" ({MARK}: with runs that did not finish ok, see Runs)." if any(marked.values()) else ".")


def length_lines(acc: pd.DataFrame, reference: str = REFERENCE, margin: float = MARGIN_PTS) -> list[str]:
    """The Summary's lines, one per base task run at several lengths: from which length each variant falls
    more than ``margin`` points below ``reference`` (``falls_below``), or that it does not within the lengths
    run (a dip that recovers is named with its lengths); said when the reference has no test accuracy."""
    runs = at_lengths(acc)
    return [] if runs.empty else [_base_line(runs, b, reference, margin) for b in sorted(runs["base_task"].unique())]


# ---------------------------------------------------------------- the figure

def _sweep(bench: pd.DataFrame | None) -> tuple[pd.DataFrame | None, tuple[str, str, str, int] | None]:
    """The sweep's cases of its primary setting (``bench_cases.primary_setting``: a layer's training step where
    measured) and that setting; (None, None) when there is no time to plot."""
    if bench is None or bench.empty or "median_s" not in bench:
        return None, None
    setting = scope, mode, dtype, batch = primary_setting(bench)
    cases = bench[(bench["scope"] == scope) & (bench["mode"] == mode) & (bench["dtype"] == dtype)
                  & (bench["batch"] == batch)]
    return (cases, setting) if (ok_cases(cases)["median_s"] > 0).any() else (None, None)


def _colours(runs: pd.DataFrame, cases: pd.DataFrame | None) -> dict[str, tuple]:
    """One colour per variant, the same in both panels (a sweep's impl takes its variant's)."""
    names = set(runs["variant"]) | (set(cases.get("variant", cases["impl"])) if cases is not None else set())
    ordered = impl_order(names)
    return dict(zip(ordered, sns.color_palette("colorblind", len(ordered)), strict=True))


def _accuracy_panel(ax, runs: pd.DataFrame, base: str, colours: dict, reference: str, margin: float) -> None:
    """Per variant its mean test accuracy at each length (error bars: std over seeds; dots: the seeds), and a
    band from the reference's mean down ``margin`` points."""
    lengths = lengths_of(runs, base)
    for v in impl_order(runs["variant"]):
        means = []
        for n, task in lengths.items():
            a = seed_accuracies(runs, task, v)
            if len(a):
                ax.scatter([n] * len(a), a, color=colours[v], alpha=0.35, s=12)
                means.append((n, a.mean(), a.std(ddof=1) if len(a) > 1 else 0.0))
        if means:
            x, y, err = zip(*means, strict=True)
            ax.errorbar(x, y, yerr=err, color=colours[v], marker="o", ms=4, capsize=3,
                        label=v + mark(runs[runs["variant"] == v]))
            if v == reference:
                ax.fill_between(x, [m - margin for m in y], y, color=colours[v], alpha=0.12, lw=0,
                                label=f"within {margin:g} points below {reference}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(lengths), [fmt_length(n) for n in lengths])  # the lengths run, not every power of 2
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_title(f"{base}: test accuracy", fontsize=10)
    ax.set_xlabel(length_param(runs, base))
    ax.set_ylabel("test accuracy (%)")
    fit_accuracy(ax)  # the seeds, the error bars and the band
    ax.legend(fontsize=7)


def figure_accuracy_vs_length(acc: pd.DataFrame, bench: pd.DataFrame | None, path: Path,
                              reference: str = REFERENCE, margin: float = MARGIN_PTS) -> Path | None:
    """A row of panels per base task run at several lengths: left, each variant's test accuracy against length
    (``_accuracy_panel``, log2 axis); right, where ``bench`` holds the sweep, its time per training step
    against sequence length n per impl (log-log, as the sweep's scaling figure), dotted at the task's lengths
    in tokens (the runs' ``seq_len``). None when no such task has a run with a test accuracy."""
    runs = tested(at_lengths(acc))
    if runs.empty:
        return None
    cases, setting = _sweep(bench)
    colours = _colours(runs, cases)
    bases = sorted(runs["base_task"].unique())
    fig, axes = plt.subplots(len(bases), 1 if cases is None else 2,
                             figsize=(5.6 * (1 if cases is None else 2), 3.9 * len(bases)), squeeze=False)
    for row, base in zip(axes, bases, strict=True):
        sub = runs[runs["base_task"] == base]
        _accuracy_panel(row[0], sub, base, colours, reference, margin)
        if cases is not None:
            assert setting is not None  # _sweep gives both or neither
            impl_colours = {i: colours[v] for i, v in zip(cases["impl"], cases.get("variant", cases["impl"]),
                                                           strict=True)}
            plot_scaling_panel(row[1], cases, fit_exponents(cases), "median_s", impl_colours)
            tokens = sorted(sub["seq_len"].dropna().unique()) if "seq_len" in sub else []
            for n in tokens:
                row[1].axvline(n, color="grey", ls=":", lw=1)
            ticks = sorted(set(cases["n"]) | set(tokens))  # the lengths measured and the task's, labelled
            row[1].set_xticks(ticks, [fmt_length(n) for n in ticks])
            scope, mode, dtype, batch = setting
            row[1].set_title(f"sweep: time per step ({scope}, {mode.replace('_', '+')}, {dtype}, batch {batch})",
                             fontsize=10)
            row[1].set_xlabel("sequence length n (dotted: this task's lengths in tokens)")
            row[1].set_ylabel("time per step (s)")
    early = f"; {MARK}: with runs that did not finish ok" if mark(runs) else ""
    suptitle(fig, "Test accuracy against length (mean ± std over seeds; dots: single seeds" + early + ")"
             + ("" if cases is None else ", beside the efficiency sweep's cost against length"
                "; b = fitted log-log slope"))
    return save_figure(fig, path)


# ---------------------------------------------------------------- the section

def length_section(doc: Document, acc: pd.DataFrame, bench: pd.DataFrame | None,
                   reference: str = REFERENCE, margin: float = MARGIN_PTS) -> None:
    """The report's "Accuracy against length" section, when a task ran at several lengths (else nothing):
    ``acc`` the runs as the accuracy tables group them, ``bench`` the sweep of one machine (empty or None:
    none, or several machines, whose sweeps are never pooled)."""
    runs = at_lengths(acc)
    if runs.empty:
        return
    doc.heading(2, "Accuracy against length")
    _, setting = _sweep(bench)
    sweep = ("Right: the efficiency sweep's time per training step against sequence length n "
             f"({setting[0]}, {setting[1].replace('_', '+')}, {setting[2]}, batch {setting[3]}; one machine), "
             "dotted at each length's sequence length in tokens, so accuracy and cost against length sit side by "
             "side." if setting else "No efficiency sweep to place beside it.")
    doc.note("Tasks run at several lengths (ListOps' maximum length, Pathfinder's resolution, a text task's "
             "truncation length): test accuracy of each variant at each length, mean ± std over runs (n), every run "
             f"with a test accuracy counting whatever its status (marked {MARK}). A variant falls more than "
             f"{margin:g} points below {reference} from a length when its mean test accuracy over seeds is more than "
             f"{margin:g} points below {reference}'s at that length and at every longer one both ran; a dip that "
             f"recovers is no fall. {sweep}")
    for base in sorted(runs["base_task"].unique()):
        doc.table(length_table(runs[runs["base_task"] == base], reference, margin),
                  f"{base}: test accuracy (%) by {length_param(runs, base)}")
    doc.figure(figure_accuracy_vs_length(runs, bench, doc.out_dir / "figures" / "accuracy_vs_length.png",
                                         reference, margin),
               "Test accuracy against length per task (left)" + (", beside the sweep's time per training step "
                                                                  "against sequence length (right)" if setting else ""),
               md_alt="accuracy vs length")
    note = footnote(tested(runs))
    if note:
        doc.note(note)
