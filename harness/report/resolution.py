"""Adaptive seeds: when a comparison has resolved, how many seeds each variant should run next, and the
report's view of where each comparison stopped. Pure functions of the runs' table (``summary.csv``).

``seeds`` is the config's mapping ``{"min", "max", "step", "target": {"reference", "width"}}``. A
comparison is a variant (a run's label) against ``target["reference"]`` on one task: the paired
difference of their test accuracies over the seeds both have (``stats.paired_difference``, as in the
report's paired table). It has RESOLVED when that difference's 95% t-interval excludes 0, or when the
interval's full width is under ``width`` accuracy points; with fewer than 2 pairs there is no interval and
it has not.

Which rows count: only final runs (``stage`` "final"; every row where the table has no ``stage``
column, as in results from before tuning); tuning trials never do. As in every accuracy view, a final run
with a test accuracy counts whatever its status (a run stopped by its time limit tested a checkpoint:
``marks``), and one without (``failed``, ``oom``) is in no difference. It still counts as a seed run: the
seeds a variant has are the seeds of its final rows, tested or not, so a failed seed is not planned
again, and a variant whose runs keep failing grows until the maximum and is reported unresolved there."""
from __future__ import annotations

import pandas as pd

from attnbench.harness.report.differences import seed_accuracies
from attnbench.harness.report.stats import LEVEL, Interval, paired_difference, verdict
from attnbench.harness.report.tuning import final_runs
from attnbench.harness.report.writer import Document


def seeds_run(df: pd.DataFrame, task: str, label: str) -> int:
    """How many seeds (task, label) has final runs for, tested or not (seeds 0..n-1 in a pipeline)."""
    runs = final_runs(df)
    return int(runs.loc[(runs["task"] == task) & (runs["variant"] == label), "seed"].nunique())


def _difference(df: pd.DataFrame, task: str, label: str, reference: str) -> Interval:
    """label - reference on ``task`` in accuracy points, paired over the tested seeds both have."""
    runs = final_runs(df)
    return paired_difference(seed_accuracies(runs, task, label), seed_accuracies(runs, task, reference))


def _why(diff: Interval, width: float) -> str:
    if verdict(diff) in ("higher", "lower"):
        return "excludes 0"
    if diff.defined and diff.high - diff.low < width:
        return f"narrower than {width:g} points"
    return "not yet"


def comparison_state(df: pd.DataFrame, task: str, label: str, target: dict) -> dict:
    """Where ``label`` against ``target["reference"]`` on ``task`` stands: ``n`` the seeds paired (tested
    on both sides), ``mean``/``low``/``high`` the difference and its interval in accuracy fractions (the
    bounds NaN below 2 pairs), ``resolved`` and ``why``: "excludes 0", "narrower than W points" (W =
    ``target["width"]``) or "not yet". Untested runs are left out of the pairs (module docstring)."""
    diff = _difference(df, task, label, target["reference"])
    why = _why(diff, target["width"])
    return {"n": diff.n, "mean": diff.mean / 100, "low": diff.low / 100, "high": diff.high / 100,
            "resolved": why != "not yet", "why": why}


def _grown(current: int, seeds: dict) -> int:
    """The seeds a variant needing more should have next: ``step`` more, up to ``max`` (never fewer)."""
    return max(current, min(current + seeds["step"], seeds["max"]))


def next_seed_counts(df: pd.DataFrame, task: str, labels: list[str], seeds: dict) -> dict[str, int]:
    """label -> the seeds it should have after the next round on ``task``, for every label of ``labels``.

    A label whose comparison with the reference has not resolved (``comparison_state``) and is below
    ``max`` gets ``step`` more seeds (up to ``max``), and the reference at least as many (the pairs need
    its runs at the same seeds: it gets the most any label needing it asks for, and grows only then).
    Every other label keeps what it has. A label with fewer than ``min`` seeds (none yet: round 0) gets
    ``min``. Where the reference is not among ``labels`` there is no comparison: each label keeps its
    seeds (at least ``min``). The counts never shrink, so planning stops once every comparison has
    resolved or hit ``max``."""
    reference = seeds["target"]["reference"]
    current = {label: seeds_run(df, task, label) for label in labels}
    wanted = {label: max(n, seeds["min"]) for label, n in current.items()}
    if reference not in wanted:
        return wanted
    for label in labels:
        if label == reference or comparison_state(df, task, label, seeds["target"])["resolved"]:
            continue
        grown = _grown(current[label], seeds)
        wanted[label] = max(wanted[label], grown)
        wanted[reference] = max(wanted[reference], grown)
    return wanted


def _outcome(state: dict, n_seeds: int, seeds: dict) -> str:
    if state["resolved"]:
        return f"resolved ({state['why']})"
    if n_seeds >= seeds["max"]:
        return f"unresolved: hit the maximum ({seeds['max']} seeds)"
    return f"unresolved ({n_seeds} seeds; more planned)"


def resolution_table(df: pd.DataFrame, seeds: dict) -> pd.DataFrame:
    """One row per task and variant other than the reference, on tasks where the reference ran: the
    seeds run, the seeds paired, the 95% interval of variant minus reference (points) and the outcome:
    "resolved (excludes 0)", "resolved (narrower than W points)", "unresolved: hit the maximum (M
    seeds)", or "unresolved (N seeds; more planned)" below the maximum."""
    reference, target = seeds["target"]["reference"], seeds["target"]
    runs = final_runs(df)
    rows = []
    for task in sorted(runs["task"].unique()) if len(runs) else []:
        labels = set(runs.loc[runs["task"] == task, "variant"])
        if reference not in labels:
            continue
        for label in sorted(labels - {reference}):
            state, n_seeds = comparison_state(runs, task, label, target), seeds_run(runs, task, label)
            interval = (f"{100 * state['low']:+.1f} – {100 * state['high']:+.1f}"
                        if state["n"] >= 2 else "– (under 2 pairs)")
            rows.append({"task": task, "variant": label, "seeds": n_seeds, "pairs": state["n"],
                         f"{int(LEVEL * 100)}% CI, minus {reference} (points)": interval,
                         "outcome": _outcome(state, n_seeds, seeds)})
    return pd.DataFrame(rows)


def resolution_section(doc: Document, df: pd.DataFrame, seeds: dict | None) -> None:
    """"Seeds": the adaptive-seed target and, per comparison, whether it resolved or hit the maximum;
    nothing when ``seeds`` is None (a fixed list of seeds)."""
    if seeds is None:
        return
    reference, width = seeds["target"]["reference"], seeds["target"]["width"]
    doc.heading(2, "Seeds")
    doc.note(f"Seeds are added only where a comparison has not resolved. Every variant first ran {seeds['min']} "
             f"seeds (0 to {seeds['min'] - 1}) on each task; after each round, a variant whose paired difference to "
             f"{reference} (test accuracy over the seeds both ran, {int(LEVEL * 100)}% t-interval) neither excluded 0 "
             f"nor was narrower than {width:g} points got {seeds['step']} more seeds, and {reference} with it, up to "
             f"{seeds['max']}. `pairs`: the seeds with a test accuracy on both sides (a run without one is in no "
             "difference but is a seed run).")
    doc.table(resolution_table(df, seeds))
