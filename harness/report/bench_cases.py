"""The efficiency sweep's cases in the report, from the tidy ``results/bench.csv`` (one row per measured
case: impl x scope x mode x dtype x batch x sequence length n): the combinations it holds, the cases of one
of them, the order impls are shown in, and the power laws a·n^b fitted to their cost (scaling exponents).

The tables (``bench_tables``), the figures (``bench_figures``) and the report section (``bench``) are built
on these."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

BASELINE = "full"  # the impl label of variant "full" on the "default" backend
GROUP = ["impl", "scope", "mode", "dtype", "batch"]
SCOPE_ORDER = ["layer", "block"]
MODE_ORDER = ["forward", "forward_backward"]
MIN_FIT_POINTS = 3


# ---------------------------------------------------------------- fitting

def power_fit(n: pd.Series, y: pd.Series) -> tuple[float, float]:
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
            "time_exponent": power_fit(ok["n"], ok["median_s"])[1],
            "memory_exponent": power_fit(ok["n"], ok["peak_mb"])[1],
        })
    columns = [*GROUP, "points", "n_min", "n_max", "time_exponent", "memory_exponent"]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- order and combinations

def impl_order(impls: Iterable[str]) -> list[str]:
    """The baseline first, then the other impls sorted."""
    present = set(impls)
    return ([BASELINE] if BASELINE in present else []) + sorted(present - {BASELINE})


def ordered(values: Iterable[str], order: list[str]) -> list[str]:
    """The distinct ``values``, those in ``order`` first and in its order, then the others sorted."""
    present = set(values)
    return [v for v in order if v in present] + sorted(present - set(order))


def combination_cases(df: pd.DataFrame, scope: str, mode: str, dtype: str, batch: int) -> pd.DataFrame:
    """The cases of one (scope, mode, dtype, batch) combination, one row per (impl, n) (the last
    row wins where a case was measured twice)."""
    sel = df[(df["scope"] == scope) & (df["mode"] == mode) & (df["dtype"] == dtype) & (df["batch"] == batch)]
    return sel.drop_duplicates(["impl", "n"], keep="last").set_index(["impl", "n"]).sort_index()


def dtype_batches(df: pd.DataFrame) -> list[tuple[str, int]]:
    """(dtype, batch) combinations, the primary first: float32 (else the first dtype in the data)
    at its smallest batch."""
    dtypes = list(dict.fromkeys(df["dtype"]))
    if "float32" in dtypes:
        dtypes.remove("float32")
        dtypes.insert(0, "float32")
    return [(d, int(b)) for d in dtypes for b in sorted(df.loc[df["dtype"] == d, "batch"].unique())]


def scope_modes(df: pd.DataFrame) -> list[tuple[str, str]]:
    """The (scope, mode) pairs measured, in scope then mode order."""
    present = set(zip(df["scope"], df["mode"], strict=True))
    return [(s, m) for s in ordered(df["scope"], SCOPE_ORDER) for m in ordered(df["mode"], MODE_ORDER)
            if (s, m) in present]


def primary_setting(df: pd.DataFrame) -> tuple[str, str, str, int]:
    """(scope, mode, dtype, batch) the report leads with: a layer's training step (forward+backward)
    where measured, at the primary dtype and batch."""
    dtype, batch = dtype_batches(df)[0]
    pairs = scope_modes(df[(df["dtype"] == dtype) & (df["batch"] == batch)])
    scope, mode = ("layer", "forward_backward") if ("layer", "forward_backward") in pairs else pairs[0]
    return scope, mode, dtype, batch
