"""Numbers the report will not draw on: in the runs' table (``summary.csv``) or the sweep's
(``bench.csv``), a measurement that is not a finite number within its range (an accuracy in 0-1,
anything else non-negative: an ``inf`` tokens/s, a negative memory, a word) is treated as missing,
and a warning names the file, the column and the rows. The report then shows that cell empty or
'–', as it shows a measurement that was never taken."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

ACCURACY = (0.0, 1.0)
NON_NEGATIVE = (0.0, np.inf)
#: summary.csv column -> its range (every numeric column of ``attnbench.harness.results.aggregate``)
RUN_COLUMNS = {
    **dict.fromkeys(["best_val_acc", "test_acc", "chance_acc", "majority_test_acc", "teacher_test_acc",
                     "pretrain_masked_acc", "pretrain_mask_rate"], ACCURACY),
    **dict.fromkeys(["seed", "best_step", "steps_done", "steps_planned", "wall_s", "train_steps_per_s",
                     "train_tokens_per_s", "eval_tokens_per_s", "peak_memory_mb", "peak_memory_reserved_mb",
                     "params", "layers", "attention_flops_fwd", "seq_len", "batch_size", "torch_threads",
                     "teacher_train_tokens_per_s", "teacher_eval_tokens_per_s", "teacher_params", "teacher_layers",
                     "distill_temperature", "distill_alpha", "budget_limit", "budget_reached", "train_s",
                     "train_flops", "flops_per_step", "trial", "length", "pretrain_steps", "pretrain_train_s",
                     "pretrain_wall_s", "pretrain_tokens_seen", "pretrain_peak_memory_mb"], NON_NEGATIVE),
}
#: bench.csv column -> its range (``attnbench.harness.bench.files``)
BENCH_COLUMNS = dict.fromkeys(["n", "batch", "median_s", "min_s", "max_s", "iqr_s", "rounds", "tokens_per_s",
                               "peak_mb", "reserved_mb", "flops_analytic", "flops_counted", "gflops_per_s",
                               "threads"], NON_NEGATIVE)
SHOWN = 3  # rows named per column in a warning


def whole(x) -> str:
    """A count or length as text: '?' where it is missing."""
    return "?" if pd.isna(x) else str(int(x))


def run_name(row) -> str:
    return f"{row.get('task')}/{row.get('variant')} seed {row.get('seed')}"


def case_name(row) -> str:
    return f"{row.get('impl')} {row.get('scope')} {row.get('mode')} n={row.get('n')}"


def _shown(value) -> str:
    return f"'{value}'" if isinstance(value, str) else str(float(value))


def clean(df: pd.DataFrame, source: Path, columns: dict[str, tuple[float, float]],
          name: Callable[[pd.Series], str]) -> tuple[pd.DataFrame, list[str]]:
    """``df`` with every value of ``columns`` that is not a number in its range set to NaN, and one
    warning per column that held one, naming ``source``, the column and (some of) the rows by ``name``."""
    out, warnings = df.copy(), []
    for column, (low, high) in columns.items():
        if column not in out:
            continue
        raw = out[column]
        values = pd.to_numeric(raw, errors="coerce").astype(float)
        bad = (raw.notna() & values.isna()) | ~(values.isna() | (np.isfinite(values) & values.between(low, high)))
        if bad.any():
            out[column] = values.where(~bad)
            named = [f"{name(out.loc[i])}: {_shown(raw.loc[i])}" for i in bad[bad].index[:SHOWN]]
            more = f" and {int(bad.sum()) - SHOWN} more" if bad.sum() > SHOWN else ""
            what = "a number from 0 to 1" if (low, high) == ACCURACY else "a finite number ≥ 0"
            warnings.append(f"`{source}`: `{column}` is not {what} in {int(bad.sum())} row(s) "
                            f"({'; '.join(named)}{more}); treated as missing.")
    return out, warnings
