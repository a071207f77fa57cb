"""The efficiency sweep in the report: the section that puts its tables and figures together, and the lines
the Summary takes from it (the headline: each variant against ``full``), all from the tidy ``results/bench.csv``
(one row per measured case: impl x scope x mode x dtype x batch x sequence length n).

Everything here is a pure function of that table. The cases, their combinations and the fitted exponents are in
``bench_cases``, the tables (relative to full in the style of LRA's Table 2, crossovers, FLOPs) in
``bench_tables``, the log-log scaling figures in ``bench_figures``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.harness.report.bench_cases import (
    BASELINE,
    MIN_FIT_POINTS,
    combination_cases,
    dtype_batches,
    impl_order,
    ok_cases,
    primary_setting,
    scope_modes,
)
from attnbench.harness.report.bench_figures import METRIC_LABELS, figure_scaling
from attnbench.harness.report.bench_tables import (
    BENCH_ENV_COLUMNS,
    crossover_table,
    flops_table,
    matmul_peak_line,
    peak_share_table,
    relative_tables,
    rounded_exponents,
)
from attnbench.harness.report.writer import Document


def headline(df: pd.DataFrame) -> tuple[tuple[str, str, str, int], list[dict[str, Any]]]:
    """The primary setting and, per variant other than full, its speed-up (full time / its time) and
    memory ratio (its peak / full's) at the longest n where both ran ok, and its measured (else
    extrapolated) time and memory crossovers with full as text."""
    setting = primary_setting(df)
    cases = combination_cases(df, *setting)
    impls = impl_order(cases.index.get_level_values("impl"))
    if BASELINE not in impls:
        return setting, []
    crossings = crossover_table(df, *setting).set_index("impl")
    rows = []
    for impl in impls[1:]:
        both = [n for n in sorted(cases.loc[impl].index) if (BASELINE, n) in cases.index
                and cases.loc[(impl, n), "status"] == "ok" and cases.loc[(BASELINE, n), "status"] == "ok"]
        row: dict[str, Any] = {"impl": impl, "n": None, "speedup": None, "memory": None}
        if both:
            n = both[-1]
            case, base = cases.loc[(impl, n)], cases.loc[(BASELINE, n)]
            row.update(n=int(n), speedup=base["median_s"] / case["median_s"], memory=case["peak_mb"] / base["peak_mb"])
        for key, measured, fit in (("time_crossover", "faster than full from n", "time crossover (fit)"),
                                   ("memory_crossover", "less memory than full from n", "memory crossover (fit)")):
            row[key] = crossings.loc[impl, measured] if crossings.loc[impl, fit] == "–" else crossings.loc[impl, fit]
        rows.append(row)
    return setting, rows


def machine_line(df: pd.DataFrame) -> str:
    """'NVIDIA H100 (cuda), 16 threads, torch 2.5.1' per distinct machine of the sweep."""
    machines = df[BENCH_ENV_COLUMNS].drop_duplicates()
    return "; ".join(f"{r.device_name} ({r.device}), {r.threads} threads, torch {r.torch}"
                     for r in machines.itertuples())


def method_line(df: pd.DataFrame) -> str:
    """How the numbers were measured, from the table itself."""
    ok = ok_cases(df)
    rounds = sorted(ok["rounds"].dropna().astype(int).unique())
    rounds_text = (f"{rounds[0]}" if len(rounds) == 1 else f"{rounds[0]}–{rounds[-1]}") if rounds else "?"
    memory = "; ".join(sorted(ok["peak_method"].dropna().astype(str).unique())) or "not measured"
    return (f"Timing: median of {rounds_text} timed steps per case after warm-up (pytest-benchmark). "
            f"Peak memory: {memory}. FLOPs: each variant's analytic count (backward = 2 x forward), "
            "cross-checked against torch's FLOP counter in the FLOPs table.")


FLOPS_NOTE = ("Analytic FLOPs of one step at the largest n, the achieved rate there (also as a % of the machine's "
              "matmul peak at the same dtype and threads), and what torch.utils."
              "flop_counter saw as a share of the analytic count over all lengths. The counter sees matmuls and "
              "the CUDA SDPA kernels, but not torch's CPU flash kernel nor elementwise work: where a case ran "
              "the CPU flash kernel its attention is missing from the count; elsewhere the two should agree.")


PEAK_SHARE_CAPTION = "Achieved GFLOP/s per case (analytic FLOPs / median time) and, in brackets, its % of matmul peak"
SPEED_CAPTION = "Speed: full's median time per step; others full time / their time (× above 1: faster)"
MEMORY_CAPTION = "Peak memory: full's peak; others their peak / full's (below 1: smaller)"


def _relative_block(sec: Document, df: pd.DataFrame, dtype: str, batch: int, level: int) -> None:
    """The speed and memory tables of every (scope, mode) of one (dtype, batch)."""
    sub = df[(df["dtype"] == dtype) & (df["batch"] == batch)]
    for scope, mode in scope_modes(sub):
        speed, memory = relative_tables(df, scope, mode, dtype, batch)
        sec.heading(level, f"{scope}, {mode} ({dtype}, batch {batch})")
        sec.table(speed, SPEED_CAPTION)
        sec.table(memory, MEMORY_CAPTION)


def bench_section(sec: Document, df: pd.DataFrame, bench_csv: Path | str = "results/bench.csv",
                  level: int = 2) -> None:
    """The report's "Efficiency sweep" section, into ``sec``; figures go to its ``figures/``."""
    combos = dtype_batches(df)
    dtype, batch = combos[0]
    sub = level + 1
    figures_dir = sec.out_dir / "figures"
    sec.heading(level, "Efficiency sweep")
    sec.note(f"Machine: {machine_line(df)}. {method_line(df)}")
    sec.note(f"Primary setting: {dtype}, batch {batch}. Cases: " + ", ".join(
        f"{c} {s}" for s, c in sorted(df["status"].value_counts().items())) + ".")
    _relative_block(sec, df, dtype, batch, sub)

    sec.heading(sub, "Scaling exponents")
    sec.note("Least-squares slope of log(time per step) and log(peak memory) against log(n) over the ok "
             f"cases (blank below {MIN_FIT_POINTS} points): 1 is linear, 2 quadratic.")
    sec.table(rounded_exponents(df))

    scope, mode, dtype, batch = primary_setting(df)
    sec.heading(sub, f"Crossover with full ({scope}, {mode}, {dtype}, batch {batch})")
    sec.note("The smallest measured n from which a variant beats full at that and every larger measured n "
             "(a full OOM counts as beaten); where that is not reached, the crossover of the two fitted "
             "power laws a·n^b, when the variant's exponent is the lower one.")
    sec.table(crossover_table(df, scope, mode, dtype, batch))

    sec.heading(sub, f"FLOPs ({scope}, {mode}, {dtype}, batch {batch})")
    sec.note(f"{FLOPS_NOTE} {matmul_peak_line(df)}")
    sec.table(flops_table(df, scope, mode, dtype, batch))
    sec.table(peak_share_table(df, scope, mode, dtype, batch), PEAK_SHARE_CAPTION)

    sec.heading(sub, "Scaling figures")
    suffix = len(combos) > 1
    for d, b in combos:
        tag = f"_{d}_b{b}" if suffix else ""
        for metric, name in (("median_s", "time"), ("peak_mb", "memory")):
            path = figure_scaling(df, figures_dir / f"bench_{name}{tag}.png", metric, d, b)
            sec.figure(path, f"{METRIC_LABELS[metric]} vs n ({d}, batch {b})")

    if len(combos) > 1:
        sec.heading(sub, "Other dtypes and batch sizes")
        for d, b in combos[1:]:
            _relative_block(sec, df, d, b, sub + 1)

    sec.details(f"All {len(df)} cases (tidy table, from `{bench_csv}`)", df,
                f"All {len(df)} cases, one row each: `{bench_csv}`.")
