"""Stage d of the GPU check (scripts/gpu_check.py): one table of what stages b and c left, one row per variant
(and per extra sweep backend): the run's status, precision, kernel, median step time, peak memory and test
accuracy, and the sweep's time and memory at 4K and 16K tokens per dtype; printed, and written to summary.md."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

MIB = 2 ** 20
#: the sweep's lengths and dtypes the table shows at most (those the sweep has: its columns)
TABLE_LENGTHS = (4096, 16384)
TABLE_DTYPES = ("bfloat16", "float32")


def load_records(runs: Path) -> list[dict]:
    from attnbench.harness.results.records import find_records, read_record

    return [read_record(p) for p in find_records(runs)] if runs.exists() else []


def load_sweep(bench: Path) -> list[dict]:
    from attnbench.harness.bench.files import load_rows

    return [row for p in sorted(bench.glob("*.json")) for row in load_rows(p)] if bench.exists() else []


def _sweep_cell(row: dict | None) -> str:
    if row is None:
        return ""
    if row.get("status") != "ok":
        return str(row.get("status", "?")).upper()
    return f"{row['median_s'] * 1e3:.1f} ms / {row['peak_mb']:.0f} MiB"


def build_table(records: list[dict], sweep_rows: list[dict], lengths=TABLE_LENGTHS,
                dtypes=TABLE_DTYPES) -> list[dict]:
    """One row per run label (its seeds merged: median step time, largest peak, mean accuracy) and per extra
    sweep implementation (``full [xformers]``), with the sweep's cells at ``lengths`` x ``dtypes`` (the layer
    scope and forward+backward mode where the sweep has them)."""
    by_label: dict[str, list[dict]] = {}
    for r in records:
        by_label.setdefault(r["label"], []).append(r)
    scope = "layer" if any(r.get("scope") == "layer" for r in sweep_rows) else None
    modes = {r.get("mode") for r in sweep_rows}
    mode = "forward_backward" if "forward_backward" in modes else next(iter(sorted(modes)), None)
    cells = {(r["impl"], r["dtype"], r["n"]): r for r in sweep_rows
             if r.get("mode") == mode and (scope is None or r.get("scope") == scope)}
    impls = list(dict.fromkeys([*by_label, *(r["impl"] for r in sweep_rows)]))
    table = []
    for impl in impls:
        runs = by_label.get(impl, [])
        row: dict = {"variant": impl, "status": "", "precision": "", "kernel": "", "step_ms": None, "peak_mib": None,
                     "test_acc": None}
        if runs:
            statuses = sorted({r["status"] for r in runs})
            row["status"] = "ok" if statuses == ["ok"] else ", ".join(s for s in statuses if s != "ok")
            row["precision"] = ", ".join(sorted({r["training"].get("precision") or "" for r in runs} - {""}))
            row["kernel"] = ", ".join(sorted({r["training"].get("attention_kernel") or "" for r in runs} - {""}))
            steps = [r["efficiency"]["step_time_median_s"] for r in runs if r["efficiency"]["step_time_median_s"]]
            peaks = [r["efficiency"]["peak_memory_bytes"] for r in runs if r["efficiency"]["peak_memory_bytes"]]
            accs = [r["accuracy"]["test"] for r in runs if r["accuracy"]["test"] is not None]
            row["step_ms"] = statistics.median(steps) * 1e3 if steps else None
            row["peak_mib"] = max(peaks) / MIB if peaks else None
            row["test_acc"] = statistics.fmean(accs) if accs else None
        for dtype in dtypes:
            for n in lengths:
                row[f"{dtype}@{n}"] = _sweep_cell(cells.get((impl, dtype, n)))
        table.append(row)
    return table


def _short(dtype: str) -> str:
    return {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16", "float64": "fp64"}.get(dtype, dtype)


def _kilo(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def markdown(table: list[dict], lengths=TABLE_LENGTHS, dtypes=TABLE_DTYPES) -> str:
    head = ["variant", "status", "precision", "kernel", "step time", "peak memory", "test acc"]
    head += [f"sweep {_short(d)} {_kilo(n)}" for d in dtypes for n in lengths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [row["variant"], row["status"], row["precision"], row["kernel"],
                 "" if row["step_ms"] is None else f"{row['step_ms']:.1f} ms",
                 "" if row["peak_mib"] is None else f"{row['peak_mib']:.0f} MiB",
                 "" if row["test_acc"] is None else f"{row['test_acc']:.3f}"]
        cells += [row[f"{d}@{n}"] for d in dtypes for n in lengths]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def swept_columns(rows: list[dict]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The table's sweep columns: the lengths and dtypes of TABLE_LENGTHS x TABLE_DTYPES the sweep has."""
    lengths = tuple(n for n in TABLE_LENGTHS if any(r.get("n") == n for r in rows))
    dtypes = tuple(d for d in TABLE_DTYPES if any(r.get("dtype") == d for r in rows))
    return lengths, dtypes


def write_table(out: Path, config_path: Path) -> str:
    """Stage d: the table of what stages b and c left under ``out``; printed and written to summary.md."""
    records, rows = load_records(out / "runs"), load_sweep(out / "bench")
    lengths, dtypes = swept_columns(rows)
    table = build_table(records, rows, lengths, dtypes)
    env = records[0]["environment"] if records else {}
    device = env.get("device_name") or next((r.get("device_name") for r in rows if r.get("device_name")), "?")
    torch_version = env.get("torch") or next((r.get("torch") for r in rows if r.get("torch")), "?")
    text = (f"# GPU check\n\n{device}, torch {torch_version}, config `{config_path}`, "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime())}.\n\n"
            "Training: the attention kernel its first step ran (the record says why), median step time after "
            "warm-up, peak memory of the run, test accuracy of the best-validation checkpoint. Sweep: one attention "
            "layer, forward+backward, median time / peak memory of one step (`attnbench bench`).\n\n"
            + markdown(table, lengths, dtypes) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text)
    return text
