"""The efficiency sweep's files: running one variant's sweep through pytest-benchmark
(``results/bench/VARIANT.json``) and collecting them into one tidy table (``results/bench.csv``).

Each row's ``peak_share`` is its achieved GFLOP/s as a fraction of ``matmul_peak_gflops``, the
machine's matmul rate at the case's dtype and the sweep's threads, measured once per sweep
(``sweep.probe_matmul``; ``matmul_peak_method`` says how).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from attnbench.harness.bench.settings import (
    BenchConfig,
    bench_settings,
    expand_cases,
    resolve_device,
    sweep_threads,
    variant_params,
)
from attnbench.harness.core import shipped_files
from attnbench.harness.core.errors import UserError
from attnbench.harness.core.io import atomic_write_text, write_table
from attnbench.harness.core.json_values import UnreadableJSON, read_json
from attnbench.harness.core.registry import build_dataclass
from attnbench.harness.measure.matmul_peak import share_of_peak
from attnbench.variants import VARIANTS

MIB = 2 ** 20

COLUMNS = [
    "impl", "variant", "backend", "scope", "mode", "dtype", "batch", "n", "status", "message",
    "median_s", "min_s", "max_s", "iqr_s", "rounds", "sweep_rounds", "round_medians_s", "tokens_per_s", "peak_mb",
    "reserved_mb", "peak_method",
    "flops_analytic", "flops_counted", "flops_counted_method", "gflops_per_s", "matmul_peak_gflops", "peak_share",
    "matmul_peak_method", "attention_kernel", "attention_kernel_why", "sdpa_kernels", "cold_step_s", "primed_at",
    "params_count", "memory_cap_mb", "device", "device_name", "threads", "torch", "timing_method", "params", "source",
]


def sweep_plan(config: dict, variant: str, workdir: Path) -> dict:
    """One variant's sweep as planned, the same on any machine: the configured device (``auto`` stays
    ``auto``), the ``bench:`` settings and the variant's parameters. The job that runs it expands it into
    cases (``expand_sweep``) where it runs, so a plan made on a GPU-less login node still sweeps the GPU."""
    settings = bench_settings(config)
    plan = {"variant": variant, "device": config.get("device", "cpu"),
            "settings": json.loads(json.dumps(dataclasses.asdict(settings))),
            "params": variant_params(settings, variant), "workdir": str(workdir)}
    source = VARIANTS.source(variant)
    return {**plan, "source": source} if source else plan  # a variant from outside: where the job loads it


def sweep_param(config: dict, variant: str, workdir: Path) -> str:
    """The bench rule's param (``rules/common.smk``): the plan as JSON, so a change to ``bench:`` (or
    ``device``) re-runs the sweep, and torch's view of the planning machine cannot change it."""
    return json.dumps(sweep_plan(config, variant, workdir), sort_keys=True)


def expand_sweep(plan: dict, cores: int) -> dict:
    """What ``benchmarks/conftest.py`` reads: the plan with its device resolved in this process (call it
    after the GPU lease), the torch threads of a job holding ``cores`` cores, and every case. A sweep that
    already lists its cases keeps them (its device still resolved)."""
    if plan.get("source"):  # exported: the sweep's pytest process and each case's worker load it too
        VARIANTS.register_source(plan["variant"], plan["source"], export=True)
    settings = build_dataclass(BenchConfig, plan["settings"], "bench")
    device = resolve_device(plan["device"])
    sweep = {**plan, "configured_device": plan.get("configured_device", plan["device"]), "device": device,
             "threads": sweep_threads(settings, cores)}
    if "cases" not in plan:
        params = plan["params"] if "params" in plan else variant_params(settings, plan["variant"])
        sweep["cases"] = [c.to_dict() for c in expand_cases(settings, plan["variant"], params, device)]
    return sweep


def sweep_file(config: dict, variant: str, cores: int, workdir: Path) -> dict:
    """The expanded sweep of one variant of ``config`` on this machine (plan and expansion in one)."""
    return expand_sweep(sweep_plan(config, variant, workdir), cores)


def run_sweep(sweep: dict, out_json: Path, extra_args: Sequence[str] = ()) -> int:
    """Run the sweep's benchmarks in a pytest process; its JSON replaces ``out_json`` only when complete.
    That is pytest-benchmark's file; when no case could be timed (every one oom, timeout or
    unavailable) pytest-benchmark saves none, and the rows file in the same layout stands in."""
    out_json.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_json.parent, prefix=".bench-") as tmp:
        sweep_path, raw, rows = Path(tmp) / "sweep.json", Path(tmp) / "benchmark.json", Path(tmp) / "rows.json"
        sweep_path.write_text(json.dumps(sweep))
        benchmarks = shipped_files.benchmarks_dir()
        # importlib mode: pytest leaves sys.path alone (the benchmarks import attnbench like any user code)
        cmd = [sys.executable, "-m", "pytest", str(benchmarks / "test_attention.py"), "-p", "no:cacheprovider",
               "--rootdir", str(benchmarks), "--import-mode=importlib", "-o", "addopts=",
               "-q", "-s", "--benchmark-enable", "--benchmark-json", str(raw), "--benchmark-columns",
               "min,median,max,rounds", "--attnbench-sweep", str(sweep_path), "--attnbench-rows", str(rows),
               *extra_args]
        rc = subprocess.call(cmd)
        if rc == 0 and (raw.exists() or rows.exists()):
            atomic_write_text(out_json, (raw if raw.exists() else rows).read_text())
    return rc


def merge_rounds_per_case(rows: list[dict]) -> list[dict]:
    """One row per case from the rows of its rounds: the median of the rounds' medians, the
    extremes over all timed steps; a round that failed (say, out of memory while timing) makes
    the case that status."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["case_id"], []).append(r)
    out = []
    for group in groups.values():
        bad = [r for r in group if r["status"] != "ok"]
        row = dict(bad[0] if bad else group[0])
        row["sweep_rounds"] = len(group)
        if not bad:
            medians = [r["median_s"] for r in group]
            row.update(median_s=statistics.median(medians), round_medians_s=medians,
                       min_s=min(r["min_s"] for r in group), max_s=max(r["max_s"] for r in group),
                       rounds=sum(r["rounds"] for r in group),
                       times_s=[t for r in group for t in r.get("times_s", [])])
            row["tokens_per_s"] = row["batch"] * row["n"] / row["median_s"]
            row["gflops_per_s"] = row["flops_analytic"] / row["median_s"] / 1e9
            row["peak_share"] = share_of_peak(row["gflops_per_s"], row.get("matmul_peak_gflops"))
            if len(group) > 1:
                row["iqr_s"] = None  # per-round statistic; not pooled
        out.append(row)
    return out


class SweepFileError(UserError, ValueError):
    """A sweep JSON that cannot be read or is no attnbench sweep; the message names the file."""


def read_sweep(path: Path) -> dict:
    """One sweep JSON (``results/bench/VARIANT.json``), checked to be an attnbench sweep with its rows;
    else a one-line ``SweepFileError`` naming the file (planning sets such a file aside)."""
    redo = "delete it and run `attnbench bench` again (snakemake sets it aside and does)"
    try:
        data = read_json(path)
    except UnreadableJSON as exc:
        raise SweepFileError(f"sweep {path} cannot be read ({exc}); {redo}") from None
    if not isinstance(data, dict) or not isinstance(data.get("attnbench"), dict):
        raise SweepFileError(f"{path} is not an attnbench sweep (no 'attnbench' section); {redo}")
    if not isinstance(data["attnbench"].get("rows"), list):
        raise SweepFileError(f"sweep {path} has no list of rows in its 'attnbench' section; {redo}")
    return data


def load_rows(path: Path) -> list[dict]:
    """The result rows of one sweep JSON, machine facts attached."""
    data = read_sweep(path)
    machine = data.get("machine_info", {}).get("attnbench", {})
    rows = []
    for r in merge_rounds_per_case(data["attnbench"]["rows"]):
        ok = r.get("status") == "ok"
        rows.append({
            **{k: r.get(k) for k in COLUMNS if k in r},
            "peak_mb": r["peak_bytes"] / MIB if ok and r.get("peak_bytes") is not None else None,
            "reserved_mb": r["reserved_bytes"] / MIB if ok and r.get("reserved_bytes") else None,
            "memory_cap_mb": r["memory_cap_bytes"] / MIB if r.get("memory_cap_bytes") else None,
            "device_name": machine.get("device_name"), "torch": machine.get("torch"),
            "params": json.dumps(r.get("params"), sort_keys=True), "source": str(path),
            "round_medians_s": json.dumps(r["round_medians_s"]) if r.get("round_medians_s") else None,
        })
    return rows


def collect(paths: list[Path]) -> pd.DataFrame:
    rows = [row for p in paths for row in load_rows(p)]
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["impl", "scope", "mode", "dtype", "batch", "n"], kind="stable").reset_index(drop=True)


def aggregate_bench(paths: list[Path], out_csv: Path) -> pd.DataFrame:
    """Write the tidy table of every case (``.csv`` and ``.parquet``)."""
    df = collect([Path(p) for p in paths])
    write_table(df, out_csv)
    return df
