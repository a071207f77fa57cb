"""The Summary's evidence flags: lines that say where a finding may not hold as it stands. Each is a
line of the Summary only where it applies (none: no line).

- **Still improving.** A run is still improving at its last step when its validation curve
  (``curve.csv``, ``curves.load_curves``) holds at least two evaluations and the last one's validation
  accuracy is strictly above every earlier one's: a new best at the last evaluation, so its
  best-validation checkpoint is its last and the run ended on the rise. A (task, variant), as the accuracy
  views name it, is flagged when more than half of its runs with such a curve are still improving (2 of
  2, 2 of 3, 3 of 4): one run of several ends on a best by noise more often than most of them do. The
  runs are those with a test accuracy, as every accuracy view counts them; runs without a curve, or with
  one evaluation, are not counted.
- **Throughput spread.** Per (task, variant), and per machine where the runs come from several (costs
  are never pooled across machines: ``machines.for_cost``), over its runs with a training throughput
  (``train_tokens_per_s`` > 0, whatever their status, as the cost table's median): flagged when it has at
  least two and the largest is more than ``SPREAD`` times the smallest. The cost tables show the median,
  which hides such a spread.
- **Several hosts.** The same groups, flagged when their runs with a training throughput were measured on
  more than one ``host``: one cost median then pools measurements of different hosts under one machine
  label (device name and type, torch, commit).
- **Several invocations.** Per task (and machine), over its runs with a training throughput whose record
  says which pipeline invocation measured it (``environment.invocation``, which the snakemake that planned
  the run sets; a run by hand has none and is not counted): flagged when they come from more than one, naming
  each variant's invocations. The machine's load, and so its throughput, may differ between invocations: a
  cost ratio between variants measured in different ones is not of one sitting."""
from __future__ import annotations

import pandas as pd

from attnbench.harness.report.curves import load_curves
from attnbench.harness.report.machines import for_cost
from attnbench.harness.report.marks import tested

SPREAD = 1.25  # max/min training throughput over a (task, variant)'s runs above which it is flagged
THROUGHPUT = "train_tokens_per_s"


def still_improving(curve: pd.DataFrame) -> bool | None:
    """One run's curve (rows in any order): True when its last evaluation's validation accuracy is above
    every earlier one's, False when not, None when it holds fewer than two evaluations."""
    acc = curve.sort_values("step")["val_acc"].to_numpy()
    if len(acc) < 2:
        return None
    return bool(acc[-1] > acc[:-1].max())


def improving_runs(acc: pd.DataFrame) -> pd.DataFrame:
    """Per (task, variant) of ``acc`` with a curve of two evaluations or more: ``runs`` (how many such runs)
    and ``improving`` (how many are still improving), sorted; empty when no run has such a curve."""
    curves, _ = load_curves(tested(acc))  # a damaged curve: the validation curves' section says so
    if curves.empty:
        return pd.DataFrame(columns=["task", "variant", "runs", "improving"])
    per_run = [{"task": task, "variant": variant, "improving": verdict}
               for (task, variant, _), curve in curves.groupby(["task", "variant", "record"], sort=True)
               if (verdict := still_improving(curve)) is not None]
    if not per_run:
        return pd.DataFrame(columns=["task", "variant", "runs", "improving"])
    return (pd.DataFrame(per_run).groupby(["task", "variant"], sort=True)
            .agg(runs=("improving", "size"), improving=("improving", "sum")).reset_index())


def improving_line(acc: pd.DataFrame) -> str | None:
    """'Still improving at the last step (...): **listops**: full (2 of 2 runs), window (2 of 3 runs). More
    steps may change the ranking.', or None when no (task, variant) is."""
    if acc.empty:
        return None
    counts = improving_runs(acc)
    named = counts[2 * counts["improving"] > counts["runs"]]
    if named.empty:
        return None
    parts = [f"**{task}**: " + ", ".join(f"{r['variant']} ({r['improving']} of {r['runs']} runs)"
                                         for _, r in t.iterrows())
             for task, t in named.groupby("task", sort=True)]
    return ("Still improving at the last step (in more than half of their runs the last evaluation's validation "
            "accuracy is above every earlier one): " + "; ".join(parts) + ". More steps may change the ranking.")


def _measured(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with a positive training throughput, each (task, variant) named per machine where several."""
    if runs.empty or THROUGHPUT not in runs:
        return runs.iloc[0:0]
    out = for_cost(runs)
    speed = pd.to_numeric(out[THROUGHPUT], errors="coerce")
    return out[speed > 0].assign(**{THROUGHPUT: speed[speed > 0]})


def spread_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (task, variant) with two runs or more with a training throughput: ``runs``, ``low``, ``high``
    (tokens/s) and ``ratio`` (high / low), sorted."""
    measured = _measured(runs)
    if measured.empty:
        return pd.DataFrame(columns=["task", "variant", "runs", "low", "high", "ratio"])
    g = measured.groupby(["task", "variant"], sort=True)[THROUGHPUT]
    out = g.agg(runs="size", low="min", high="max").reset_index()
    out = out[out["runs"] >= 2]
    return out.assign(ratio=out["high"] / out["low"]).reset_index(drop=True)


def spread_line(runs: pd.DataFrame, threshold: float = SPREAD) -> str | None:
    """'Training throughput differs widely between seeds (...): **listops**: full 17,158–27,856 tokens/s over
    2 runs (1.62×).', or None when no (task, variant)'s runs differ by more than ``threshold`` times."""
    table = spread_table(runs)
    wide = table[table["ratio"] > threshold]
    if wide.empty:
        return None
    parts = [f"**{task}**: " + ", ".join(f"{r['variant']} {r['low']:,.0f}–{r['high']:,.0f} tokens/s over "
                                         f"{r['runs']} runs ({r['ratio']:.2f}×)" for _, r in t.iterrows())
             for task, t in wide.groupby("task", sort=True)]
    return (f"Training throughput differs widely between seeds (the fastest run more than {threshold:g}× the "
            "slowest; the cost tables show the median): " + "; ".join(parts) + ".")


def hosts_line(runs: pd.DataFrame) -> str | None:
    """'Cost measurements pooled across hosts (...): **listops**: full (ha ×1, hb ×1).', or None when every
    (task, variant)'s runs with a training throughput were measured on one host."""
    measured = _measured(runs)
    if measured.empty or "host" not in measured:
        return None
    host = measured["host"].fillna("unknown host").astype(str)
    parts: dict[str, list[str]] = {}
    for (task, variant), h in host.groupby([measured["task"], measured["variant"]], sort=True):
        if h.nunique() > 1:
            counts = h.value_counts().sort_index()
            parts.setdefault(str(task), []).append(
                f"{variant} ({', '.join(f'{name} ×{n}' for name, n in counts.items())})")
    if not parts:
        return None
    return ("Cost measurements pooled across hosts (one median holds runs measured on different hosts): "
            + "; ".join(f"**{task}**: {', '.join(named)}" for task, named in parts.items()) + ".")


def invocations_line(runs: pd.DataFrame) -> str | None:
    """'Cost measurements from separate invocations (...): **listops**: full (1, 2), window (2).', or None when
    every task's runs with a training throughput and a known invocation come from one invocation."""
    measured = _measured(runs)
    if measured.empty or "invocation" not in measured:
        return None
    known = measured[measured["invocation"].notna()]
    parts = []
    for task, t in known.groupby("task", sort=True):
        if t["invocation"].nunique() < 2:
            continue
        order = {inv: i + 1 for i, inv in enumerate(sorted(t["invocation"].unique()))}  # numbered by start time
        named = [f"{variant} ({', '.join(str(n) for n in sorted({order[i] for i in v['invocation']}))})"
                 for variant, v in t.groupby("variant", sort=True)]
        parts.append(f"**{task}**: {', '.join(named)}")
    if not parts:
        return None
    return ("Cost measurements from separate invocations of the pipeline (numbered by start time; the machine's load "
            "may differ between them, so a cost ratio across invocations is not of one sitting): "
            + "; ".join(parts) + ".")
