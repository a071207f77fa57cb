"""The efficiency sweep in the report: tables and figures from the tidy ``results/bench.csv``
(one row per measured case: impl x scope x mode x dtype x batch x sequence length n).

Everything here is a pure function of that table: fitted scaling exponents, speed and memory
relative to the ``full`` baseline in the style of LRA's Table 2, crossover points, log-log
scaling figures, and the report section that puts them together."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from attnbench.harness.report.writer import Document, save_figure, suptitle

BASELINE = "full"  # the impl label of variant "full" on the "default" backend
GROUP = ["impl", "scope", "mode", "dtype", "batch"]
SCOPE_ORDER = ["layer", "block"]
MODE_ORDER = ["forward", "forward_backward"]
MIN_FIT_POINTS = 3
# extrapolate a crossover only where the impl's exponent is lower than full's by this much
# (equal laws with noise cross anywhere), and say no more than "beyond" past this many times the largest n
EXPONENT_MARGIN = 0.05
EXTRAPOLATION_LIMIT = 100
# statuses that say the case costs more than the budget allowed: the other side is cheaper there
OVER_BUDGET = {"median_s": {"oom", "timeout"}, "peak_mb": {"oom"}}
METRIC_LABELS = {"median_s": "time per step (s)", "peak_mb": "peak memory (MiB)"}
EXPONENT_COLUMNS = {"median_s": "time_exponent", "peak_mb": "memory_exponent"}
BENCH_ENV_COLUMNS = ["device", "device_name", "threads", "torch"]


# ---------------------------------------------------------------- fitting

def _power_fit(n: pd.Series, y: pd.Series) -> tuple[float, float]:
    """Least-squares fit of log(y) = log(a) + b·log(n) over the finite positive points:
    ``(a, b)``, or NaNs when fewer than ``MIN_FIT_POINTS`` points remain."""
    keep = np.isfinite(y) & (y > 0) & (n > 0)
    if keep.sum() < MIN_FIT_POINTS:
        return float("nan"), float("nan")
    b, log_a = np.polyfit(np.log(n[keep].astype(float)), np.log(y[keep].astype(float)), 1)
    return float(np.exp(log_a)), float(b)


def ok_cases(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def fit_exponents(df: pd.DataFrame) -> pd.DataFrame:
    """Per (impl, scope, mode, dtype, batch): the log-log slopes of median_s (``time_exponent``)
    and peak_mb (``memory_exponent``) against n over the ok cases (NaN below 3 points), with
    the number of ok points and their n range."""
    rows = []
    for key, g in df.groupby(GROUP, sort=True):
        ok = ok_cases(g)
        rows.append({
            **dict(zip(GROUP, key, strict=True)), "points": len(ok),
            "n_min": ok["n"].min() if len(ok) else np.nan, "n_max": ok["n"].max() if len(ok) else np.nan,
            "time_exponent": _power_fit(ok["n"], ok["median_s"])[1],
            "memory_exponent": _power_fit(ok["n"], ok["peak_mb"])[1],
        })
    columns = [*GROUP, "points", "n_min", "n_max", "time_exponent", "memory_exponent"]
    return pd.DataFrame(rows, columns=columns)


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


# ---------------------------------------------------------------- tables

def impl_order(impls) -> list[str]:
    """The baseline first, then the other impls sorted."""
    impls = set(impls)
    return ([BASELINE] if BASELINE in impls else []) + sorted(impls - {BASELINE})


def _cases(df: pd.DataFrame, scope: str, mode: str, dtype: str, batch: int) -> pd.DataFrame:
    """The cases of one (scope, mode, dtype, batch) combination, one row per (impl, n) (the last
    row wins where a case was measured twice)."""
    sel = df[(df["scope"] == scope) & (df["mode"] == mode) & (df["dtype"] == dtype) & (df["batch"] == batch)]
    return sel.drop_duplicates(["impl", "n"], keep="last").set_index(["impl", "n"]).sort_index()


def _relative_cell(case, base, metric: str) -> str:
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


def _baseline_cell(case, metric: str) -> str:
    if case is None:
        return ""
    if case["status"] != "ok":
        return str(case["status"]).upper()
    value = case[metric]
    return "–" if pd.isna(value) else METRIC_FORMATS[metric](value)


def _case_table(cases: pd.DataFrame, cell, header=str) -> pd.DataFrame:
    """Rows = impl (full first), columns = ``header(n)``; each cell ``cell(impl, case, full's case)``, the
    cases None where not measured."""
    ns = sorted(cases.index.get_level_values("n").unique())

    def row(impl, n):
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
    cases = _cases(df, scope, mode, dtype, batch)
    return _relative_table(cases, "median_s"), _relative_table(cases, "peak_mb")


def _cheaper(case, base, metric: str) -> bool | None:
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
        fits[who] = _power_fit(ok["n"], ok[metric])
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
    cases = _cases(df, scope, mode, dtype, batch)
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


def rounded_exponents(df: pd.DataFrame) -> pd.DataFrame:
    """``fit_exponents`` for the report: the primary (dtype, batch) first, then by scope, mode
    and impl; exponents as text with 2 decimals (blank where not fitted), n range as integers."""
    out = fit_exponents(df)
    combos, impls = _combos(df), impl_order(out["impl"])
    scopes, modes = _ordered(out["scope"], SCOPE_ORDER), _ordered(out["mode"], MODE_ORDER)
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


# ---------------------------------------------------------------- figures

def _ordered(values, order: list[str]) -> list[str]:
    present = set(values)
    return [v for v in order if v in present] + sorted(present - set(order))


def impl_palette(impls) -> dict[str, tuple]:
    """One colour per impl, fixed by the impl order so that every figure agrees."""
    ordered = impl_order(impls)
    # strict=False: the palette has at least one colour, so no impls must give an empty dict
    return dict(zip(ordered, sns.color_palette("colorblind", max(len(ordered), 1)), strict=False))


def _not_ok_label(statuses) -> str:
    return "/".join(s.upper() if s == "oom" else s for s in sorted(set(statuses)))


def plot_scaling_panel(ax, cases: pd.DataFrame, exps: pd.DataFrame, metric: str, palette: dict) -> None:
    """One log-log panel: a line per impl over its ok cases; an 'x' on the top edge where not ok."""
    exp_col = EXPONENT_COLUMNS[metric]
    failed = set()
    for impl in impl_order(cases["impl"]):
        g = cases[cases["impl"] == impl].sort_values("n")
        ok = ok_cases(g)
        ok = ok[ok[metric].notna() & (ok[metric] > 0)]
        b = exps.loc[exps["impl"] == impl, exp_col]
        label = f"{impl} (b={b.iloc[0]:.2f})" if len(b) and pd.notna(b.iloc[0]) else impl
        dashed = (g["backend"] != "default").any() if "backend" in g else False
        if len(ok):
            ax.plot(ok["n"], ok[metric], marker="o", ms=4, ls="--" if dashed else "-",
                    color=palette[impl], label=label)
        bad = g[g["status"] != "ok"]
        if len(bad):
            failed |= set(bad["status"])
            ax.scatter(bad["n"], np.full(len(bad), 0.97), marker="x", s=40, color=palette[impl],
                       transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)
    handles, labels = ax.get_legend_handles_labels()
    if failed:
        handles.append(Line2D([], [], ls="none", marker="x", color="black"))
        labels.append(_not_ok_label(failed))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ns = sorted(cases["n"].unique())
    ax.set_xticks(ns, [str(n) for n in ns])  # the measured n, not every power of 2
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="lower right")


def figure_scaling(df: pd.DataFrame, path: Path, metric: str, dtype: str, batch: int) -> Path | None:
    """Log-log scaling of ``metric`` ('median_s' or 'peak_mb') with n, rows = scope, columns =
    mode, one line per impl labelled with its fitted exponent b; non-default backends dashed,
    non-ok cases as an 'x' on the top edge. None when there is nothing to plot."""
    if metric not in METRIC_LABELS:
        raise ValueError(f"metric must be one of {sorted(METRIC_LABELS)}, not {metric!r}")
    sub = df[(df["dtype"] == dtype) & (df["batch"] == batch)]
    if not (ok_cases(sub)[metric] > 0).any():
        return None
    palette = impl_palette(df["impl"])
    exps = fit_exponents(sub)
    scopes, modes = _ordered(sub["scope"], SCOPE_ORDER), _ordered(sub["mode"], MODE_ORDER)
    fig, axes = plt.subplots(len(scopes), len(modes), figsize=(5.2 * len(modes), 3.9 * len(scopes)),
                             squeeze=False)
    for i, scope in enumerate(scopes):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            sel = (sub["scope"] == scope) & (sub["mode"] == mode)
            ex = (exps["scope"] == scope) & (exps["mode"] == mode)
            plot_scaling_panel(ax, sub[sel], exps[ex], metric, palette)
            ax.set_title(f"{scope}, {mode}", fontsize=10)
            ax.set_xlabel("sequence length n")
            ax.set_ylabel(METRIC_LABELS[metric])
    suptitle(fig, f"{METRIC_LABELS[metric]} vs n ({dtype}, batch {batch}); b = fitted log-log slope; "
                  "dashed: non-default backend", fontsize=10)  # wrapped: a one-panel figure is narrower than it
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------- the report section

def _combos(df: pd.DataFrame) -> list[tuple[str, int]]:
    """(dtype, batch) combinations, the primary first: float32 (else the first dtype in the data)
    at its smallest batch."""
    dtypes = list(dict.fromkeys(df["dtype"]))
    if "float32" in dtypes:
        dtypes.remove("float32")
        dtypes.insert(0, "float32")
    return [(d, int(b)) for d in dtypes for b in sorted(df.loc[df["dtype"] == d, "batch"].unique())]


def _scope_modes(df: pd.DataFrame) -> list[tuple[str, str]]:
    present = set(zip(df["scope"], df["mode"], strict=True))
    return [(s, m) for s in _ordered(df["scope"], SCOPE_ORDER) for m in _ordered(df["mode"], MODE_ORDER)
            if (s, m) in present]


def primary_setting(df: pd.DataFrame) -> tuple[str, str, str, int]:
    """(scope, mode, dtype, batch) the report leads with: a layer's training step (forward+backward)
    where measured, at the primary dtype and batch."""
    dtype, batch = _combos(df)[0]
    pairs = _scope_modes(df[(df["dtype"] == dtype) & (df["batch"] == batch)])
    scope, mode = ("layer", "forward_backward") if ("layer", "forward_backward") in pairs else pairs[0]
    return scope, mode, dtype, batch


def headline(df: pd.DataFrame) -> tuple[tuple[str, str, str, int], list[dict]]:
    """The primary setting and, per variant other than full, its speed-up (full time / its time) and
    memory ratio (its peak / full's) at the longest n where both ran ok, and its measured (else
    extrapolated) time and memory crossovers with full as text."""
    setting = primary_setting(df)
    cases = _cases(df, *setting)
    impls = impl_order(cases.index.get_level_values("impl"))
    if BASELINE not in impls:
        return setting, []
    crossings = crossover_table(df, *setting).set_index("impl")
    rows = []
    for impl in impls[1:]:
        both = [n for n in sorted(cases.loc[impl].index) if (BASELINE, n) in cases.index
                and cases.loc[(impl, n), "status"] == "ok" and cases.loc[(BASELINE, n), "status"] == "ok"]
        row = {"impl": impl, "n": None, "speedup": None, "memory": None}
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


def _fmt_share(share) -> str:
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


def _share_cell(case) -> str:
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
    return _case_table(_cases(df, scope, mode, dtype, batch), lambda impl, case, base: _share_cell(case),
                       header=lambda n: f"n={n}")


PEAK_SHARE_CAPTION = "Achieved GFLOP/s per case (analytic FLOPs / median time) and, in brackets, its % of matmul peak"
SPEED_CAPTION = "Speed: full's median time per step; others full time / their time (× above 1: faster)"
MEMORY_CAPTION = "Peak memory: full's peak; others their peak / full's (below 1: smaller)"


def _relative_block(sec: Document, df: pd.DataFrame, dtype: str, batch: int, level: int) -> None:
    """The speed and memory tables of every (scope, mode) of one (dtype, batch)."""
    sub = df[(df["dtype"] == dtype) & (df["batch"] == batch)]
    for scope, mode in _scope_modes(sub):
        speed, memory = relative_tables(df, scope, mode, dtype, batch)
        sec.heading(level, f"{scope}, {mode} ({dtype}, batch {batch})")
        sec.table(speed, SPEED_CAPTION)
        sec.table(memory, MEMORY_CAPTION)


def bench_section(sec: Document, df: pd.DataFrame, bench_csv: Path | str = "results/bench.csv",
                  level: int = 2) -> None:
    """The report's "Efficiency sweep" section, into ``sec``; figures go to its ``figures/``."""
    combos = _combos(df)
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
