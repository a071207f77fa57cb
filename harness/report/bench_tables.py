"""The efficiency sweep's tables in the report, each a pure function of ``results/bench.csv``: speed and
memory relative to the ``full`` baseline in the style of LRA's Table 2, crossover points, the fitted scaling
exponents, the machines, and FLOPs with the achieved share of the machine's matmul peak."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from attnbench.harness.report.bench_cases import (
    BASELINE,
    MODE_ORDER,
    SCOPE_ORDER,
    combination_cases,
    dtype_batches,
    fit_exponents,
    impl_order,
    ok_cases,
    ordered,
    power_fit,
)

# extrapolate a crossover only where the impl's exponent is lower than full's by this much
# (equal laws with noise cross anywhere), and say no more than "beyond" past this many times the largest n
EXPONENT_MARGIN = 0.05
EXTRAPOLATION_LIMIT = 100
# statuses that say the case costs more than the budget allowed: the other side is cheaper there
OVER_BUDGET = {"median_s": {"oom", "timeout"}, "peak_mb": {"oom"}}
BENCH_ENV_COLUMNS = ["device", "device_name", "threads", "torch"]

# one cell of a table of cases: (impl, its case, full's case at the same n), a case None where not measured
CaseCell = Callable[[str, pd.Series | None, pd.Series | None], str]


# ---------------------------------------------------------------- formatting

def _fmt_time(s: float) -> str:
    """Seconds with a readable unit and 3 significant digits: '850 µs', '12.3 ms', '1.20 s'."""
    unit, scale = ("s", 1.0) if s >= 1 else ("ms", 1e-3) if s >= 1e-3 else ("µs", 1e-6)
    return f"{_sig3(s / scale)} {unit}"


def _fmt_mem(mb: float) -> str:
    """MiB with 3 significant digits, GiB from 1024 MiB: '116 MiB', '2.50 GiB'."""
    return f"{_sig3(mb / 1024)} GiB" if mb >= 1024 else f"{_sig3(mb)} MiB"


def _sig3(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _fmt_ratio(r: float) -> str:
    return f"{r:.2f}" if r >= 0.1 else f"{r:.2g}"


def _fmt_n(n: float) -> str:
    """A sequence length in short form: '512', '4.1K', '23K', '1.2M'."""
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e4:
        return f"{n / 1e3:.0f}K"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return f"{n:.0f}"


METRIC_FORMATS = {"median_s": _fmt_time, "peak_mb": _fmt_mem}


# ---------------------------------------------------------------- relative to full

def _relative_cell(case: pd.Series | None, base: pd.Series | None, metric: str) -> str:
    """One cell of a relative table: the impl's cost relative to full's at the same n."""
    fmt = METRIC_FORMATS[metric]
    if case is None:
        return ""
    if case["status"] != "ok":
        return str(case["status"]).upper()
    value = case[metric]
    if pd.isna(value):
        return "–"
    if base is None:
        return f"{fmt(value)} (full not run)"
    if base["status"] != "ok":
        return f"{fmt(value)} (full {str(base['status']).upper()})"
    if pd.isna(base[metric]) or value <= 0:
        return fmt(value)
    if metric == "median_s":
        return f"{_fmt_ratio(base[metric] / value)}×"
    return _fmt_ratio(value / base[metric])


def _baseline_cell(case: pd.Series | None, metric: str) -> str:
    if case is None:
        return ""
    if case["status"] != "ok":
        return str(case["status"]).upper()
    value = case[metric]
    return "–" if pd.isna(value) else METRIC_FORMATS[metric](value)


def _case_table(cases: pd.DataFrame, cell: CaseCell, header: Callable[[Any], str] = str) -> pd.DataFrame:
    """Rows = impl (full first), columns = ``header(n)``; each cell ``cell(impl, case, full's case)``, the
    cases None where not measured."""
    ns = sorted(cases.index.get_level_values("n").unique())

    def row(impl: str, n: Any) -> pd.Series | None:
        return cases.loc[(impl, n)] if (impl, n) in cases.index else None

    rows = [{"impl": impl, **{header(n): cell(impl, row(impl, n), row(BASELINE, n)) for n in ns}}
            for impl in impl_order(cases.index.get_level_values("impl"))]
    return pd.DataFrame(rows, columns=["impl", *map(header, ns)])


def _relative_table(cases: pd.DataFrame, metric: str) -> pd.DataFrame:
    return _case_table(cases, lambda impl, case, base: (_baseline_cell(case, metric) if impl == BASELINE
                                                        else _relative_cell(case, base, metric)))


def relative_tables(df: pd.DataFrame, scope: str, mode: str, dtype: str,
                    batch: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(speed, memory) tables of one combination, rows = impl (full first), columns = n.

    The full row holds absolute values ('12.3 ms', '116 MiB'); the others hold speed as
    full time / impl time ('1.90×', above 1 is faster) and memory as impl peak / full peak
    ('0.45', below 1 is smaller). Non-ok cases show their status ('OOM'); where full itself
    is not ok, the impl's absolute value is shown with ' (full OOM)'; missing cases are ''."""
    cases = combination_cases(df, scope, mode, dtype, batch)
    return _relative_table(cases, "median_s"), _relative_table(cases, "peak_mb")


# ---------------------------------------------------------------- crossovers with full

def _cheaper(case: pd.Series, base: pd.Series, metric: str) -> bool | None:
    """Whether the impl costs less than full at one n; None where the two are not comparable."""
    if case["status"] == "ok" and base["status"] == "ok":
        if pd.isna(case[metric]) or pd.isna(base[metric]):
            return None
        return bool(case[metric] < base[metric])
    if case["status"] == "ok" and base["status"] in OVER_BUDGET[metric]:
        return True
    if base["status"] == "ok" and case["status"] in OVER_BUDGET[metric]:
        return False
    return None


def _measured_crossover(cases: pd.DataFrame, impl: str, metric: str) -> tuple[int | None, str]:
    """The smallest measured n from which the impl is cheaper than full at every larger
    comparable n: ``(n, text)``, n None when there is none."""
    outcomes = []
    for n in sorted(cases.loc[impl].index):
        if (BASELINE, n) in cases.index:
            cheaper = _cheaper(cases.loc[(impl, n)], cases.loc[(BASELINE, n)], metric)
            if cheaper is not None:
                outcomes.append((n, cheaper))
    if not outcomes:
        return None, "not comparable"
    start = None
    for n, cheaper in reversed(outcomes):
        if not cheaper:
            break
        start = n
    return (start, str(start)) if start is not None else (None, f"none up to {outcomes[-1][0]}")


def _extrapolated_crossover(cases: pd.DataFrame, impl: str, metric: str) -> str:
    """Where the fitted power laws a·n^b of impl and full cross, when that lies beyond the
    measured n and the impl's exponent is lower by at least ``EXPONENT_MARGIN``; '–' otherwise."""
    fits = {}
    for who in (impl, BASELINE):
        ok = ok_cases(cases.loc[who]).reset_index()
        fits[who] = power_fit(ok["n"], ok[metric])
    (a_i, b_i), (a_f, b_f) = fits[impl], fits[BASELINE]
    if not np.isfinite([a_i, b_i, a_f, b_f]).all() or b_i > b_f - EXPONENT_MARGIN:
        return "–"
    n_star = (a_i / a_f) ** (1.0 / (b_f - b_i))
    n_max = cases.index.get_level_values("n").max()
    if n_star <= n_max:
        return "–"
    if n_star > EXTRAPOLATION_LIMIT * n_max:
        return f"> {_fmt_n(EXTRAPOLATION_LIMIT * n_max)} (extrapolated)"
    return f"≈ {_fmt_n(n_star)} (extrapolated)"


def crossover_table(df: pd.DataFrame, scope: str, mode: str, dtype: str, batch: int) -> pd.DataFrame:
    """Per non-baseline impl: the measured n from which it is faster (and, separately, smaller in
    memory) than full at that and every larger n, and the crossover extrapolated from the fitted
    power laws when it was not reached within the measured range. A full OOM (or timeout, for
    time) where the impl ran counts as the impl being cheaper."""
    cases = combination_cases(df, scope, mode, dtype, batch)
    impls = impl_order(cases.index.get_level_values("impl"))
    metrics = {"median_s": ("faster than full from n", "time crossover (fit)"),
               "peak_mb": ("less memory than full from n", "memory crossover (fit)")}
    columns = ["impl", *(measured for measured, _ in metrics.values()), *(fit for _, fit in metrics.values())]
    if BASELINE not in impls:
        return pd.DataFrame(columns=columns)
    rows = []
    for impl in impls[1:]:
        row = {"impl": impl}
        for metric, (measured_col, fit_col) in metrics.items():
            n, text = _measured_crossover(cases, impl, metric)
            row[measured_col] = text
            row[fit_col] = "–" if n is not None else _extrapolated_crossover(cases, impl, metric)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- exponents and machines

def rounded_exponents(df: pd.DataFrame) -> pd.DataFrame:
    """``fit_exponents`` for the report: the primary (dtype, batch) first, then by scope, mode
    and impl; exponents as text with 2 decimals (blank where not fitted), n range as integers."""
    out = fit_exponents(df)
    combos, impls = dtype_batches(df), impl_order(out["impl"])
    scopes, modes = ordered(out["scope"], SCOPE_ORDER), ordered(out["mode"], MODE_ORDER)
    keys = [(combos.index((r.dtype, int(r.batch))), scopes.index(r.scope), modes.index(r.mode), impls.index(r.impl))
            for r in out.itertuples()]
    out = out.iloc[sorted(range(len(out)), key=keys.__getitem__)].reset_index(drop=True)
    for c in ("time_exponent", "memory_exponent"):
        out[c] = out[c].map(lambda b: "" if pd.isna(b) else f"{b:.2f}")
    for c in ("n_min", "n_max"):
        out[c] = out[c].astype("Int64")
    return out


def bench_environment_table(df: pd.DataFrame) -> pd.DataFrame:
    """The distinct machines of the sweep (device, device_name, threads, torch)."""
    cols = [c for c in BENCH_ENV_COLUMNS if c in df]
    return df[cols].astype(str).drop_duplicates().reset_index(drop=True)


# ---------------------------------------------------------------- FLOPs and the matmul peak

def _fmt_share(share: Any) -> str:
    """A fraction of the matmul peak as a percentage ('12.3%'); '–' where there is none."""
    return "–" if share is None or pd.isna(share) else f"{100 * float(share):.3g}%"


def matmul_peak_line(df: pd.DataFrame) -> str:
    """The matmul probe that '% of matmul peak' reads against, once: its method and its rate per device,
    threads and dtype (the median over the sweeps, each of which measured its own, and their range)."""
    if "matmul_peak_gflops" not in df or df["matmul_peak_gflops"].isna().all():
        return "Matmul peak: not measured (no matmul probe in this table)."
    probed = df[df["matmul_peak_gflops"].notna()]
    keys = [c for c in ("device", "threads", "dtype") if c in probed]
    per_sweep = probed.drop_duplicates([*keys, "source"] if "source" in probed else keys)
    rates = []
    for key, g in per_sweep.groupby(keys, sort=True):
        what = dict(zip(keys, key, strict=True))
        values = g["matmul_peak_gflops"].astype(float)
        text = (f"{what.get('dtype', '?')} on {what.get('device', '?')}, {what.get('threads', '?')} threads: "
                f"{values.median():.3g} GFLOP/s")
        if len(values) > 1:
            text += f" (median of {len(values)} sweeps' probes, {values.min():.3g}–{values.max():.3g})"
        rates.append(text)
    methods = (sorted(set(probed["matmul_peak_method"].dropna().astype(str)))
               if "matmul_peak_method" in probed else [])
    how = f" Probe: {'; '.join(methods)}." if methods else ""
    return "Matmul peak, measured once per sweep in a fresh process: " + "; ".join(rates) + "." + how


def flops_table(df: pd.DataFrame, scope: str, mode: str, dtype: str, batch: int) -> pd.DataFrame:
    """Per impl: the attention kernel and SDPA kernels it ran (in order of length: dense, then gather, say),
    analytic GFLOP and GFLOP/s at its largest ok n (and that rate as a % of the machine's matmul peak,
    ``peak_share``), and the counted / analytic range over its ok cases."""
    ok = ok_cases(df[(df["scope"] == scope) & (df["mode"] == mode) & (df["dtype"] == dtype) & (df["batch"] == batch)])
    rows = []
    for impl in impl_order(ok["impl"].unique()):
        g = ok[ok["impl"] == impl].sort_values("n")
        last = g.iloc[-1]
        share = (g["flops_counted"] / g["flops_analytic"]).dropna()
        rows.append({
            "impl": impl, "attention kernel": _distinct(g, "attention_kernel"),
            "SDPA kernels": _distinct(g, "sdpa_kernels"),
            "n": int(last["n"]), "GFLOP per step": f"{last['flops_analytic'] / 1e9:.3g}",
            "GFLOP/s": f"{last['gflops_per_s']:.3g}",
            "% of matmul peak": _fmt_share(last.get("peak_share")),
            "counted / analytic": (f"{share.min():.2f}–{share.max():.2f}" if len(share) else "–"),
        })
    return pd.DataFrame(rows)


def _distinct(g: pd.DataFrame, column: str) -> str:
    """The distinct values of a column over an impl's cases ("–": none recorded, as in sweeps before it was)."""
    if column not in g:
        return "–"
    return ", ".join(dict.fromkeys(g[column].dropna().astype(str))) or "–"


def _share_cell(case: pd.Series | None) -> str:
    """A case's 'GFLOP/s (% of matmul peak)'; its status ('OOM') where not ok, '' where not measured."""
    if case is None:
        return ""
    if case["status"] != "ok":
        return str(case["status"]).upper()
    if pd.isna(case.get("gflops_per_s")):
        return "–"
    return f"{case['gflops_per_s']:.3g} ({_fmt_share(case.get('peak_share'))})"


def peak_share_table(df: pd.DataFrame, scope: str, mode: str, dtype: str, batch: int) -> pd.DataFrame:
    """Every case's achieved rate of one combination, rows = impl (full first), columns = 'n=<n>': 'GFLOP/s
    (% of matmul peak)', '–' for the share where no probe was measured, the status ('OOM') where not ok."""
    return _case_table(combination_cases(df, scope, mode, dtype, batch), lambda impl, case, base: _share_cell(case),
                       header=lambda n: f"n={n}")
