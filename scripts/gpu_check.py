"""The GPU check: on a machine with a CUDA GPU, in about 10 minutes, does everything GPU-only in attnbench work,
and what does it cost there? (`make gpu-check`; README, "On a GPU".)

    python scripts/gpu_check.py --dry-run     # any machine: the plan, its time budget, and the config checked
    python scripts/gpu_check.py               # a CUDA machine: runs the four stages, prints and writes the table

Stages, in order (each command's output streams through; a failed stage does not stop the later ones):

a. tests: ``pytest tests/test_cuda.py`` and the CUDA tests of the other files (``-k cuda``: FlexAttention
   against gather with gradients, no syncs in the training loop and the block-sparse forward, the sweep's
   memory cap and unavailable kernels on CUDA): every variant forward/backward on CUDA in float32 and bf16
   autocast, against its CPU float64 output, padding, xformers against SDPA, peak memory against length;
b. train: every variant of the config trains its task (``config/gpu_check.yaml``: generated ListOps at 1K
   tokens, 200 steps, bf16) with ``attnbench train``, into ``<out>/runs``; ``attnbench aggregate`` collects them;
c. bench: the efficiency sweep of every variant (1K, 4K, 16K tokens; float32 and bfloat16; full attention also
   through xformers) with ``attnbench bench``, into ``<out>/bench``; ``attnbench aggregate-bench`` collects it;
d. table: one row per variant (and per extra backend): the run's status, precision, median step time, peak
   memory and test accuracy, and the sweep's time and memory at 4K and 16K tokens per dtype; printed, and
   written to ``<out>/summary.md``.

The exit status is 0 when every stage passed. Without a CUDA device the check stops at once with a message
and status 1 (``--dry-run`` works anywhere: it imports no CUDA code and runs nothing on a GPU).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = Path("config/gpu_check.yaml")
DEFAULT_OUT = Path("results/gpu_check")
MIB = 2 ** 20
#: the sweep's lengths and dtypes the table shows at most (those the sweep has: its columns)
TABLE_LENGTHS = (4096, 16384)
TABLE_DTYPES = ("bfloat16", "float32")
STAGE_KEYS = ("tests", "train", "bench", "table")

#: the test files with CUDA tests: all of tests/test_cuda.py, and the CUDA cases of the others (``-k cuda``)
CUDA_TEST_FILES = ("tests/test_cuda.py", "tests/test_flex_blocks.py", "tests/test_train_loop.py",
                   "tests/test_bench_cuda.py", "tests/test_device_splits.py", "tests/test_linear.py",
                   "tests/test_memory_estimate.py")

# Time budget on one A100/H100-class GPU, estimated (see the estimate_* functions): what each command costs
# besides its compute. A Python process that imports torch and starts CUDA takes about 5 s.
TESTS_S = 135.0       # ~80 CUDA tests of milliseconds each; the peak-memory cases (4K-16K tokens), the sweep
#                      worker's fresh processes, pytest and CUDA start-up dominate, and each FlexAttention
#                      compilation (a new shape or layout kind: about 3 in all) adds ~15 s
DATA_S_PER_EXAMPLE = 1.2e-3  # generating the ListOps data once (1.2 ms an example at 256-1023 tokens, on a CPU)
RUN_START_S = 10.0    # a training run: start-up, model, loading the data, evaluation passes
BENCH_START_S = 8.0   # one variant's sweep: attnbench and pytest start-up, the matmul probe's fresh process
CASE_S = 5.0          # one sweep case besides its steps: its fresh process (start-up, CUDA context, priming)
FP32_FLOPS = 10e12    # float32 without tensor cores (the sweep's float32): half an A100's 19.5 TFLOP/s
TABLE_S = 5.0
#: compiling: FlexAttention's forward and backward for one shape (Triton, cold cache; window, sparse and local run
#: it on CUDA: each sweep case, each training run's first steps and evaluation), and a whole model under
#: ``train.compile: true`` (inductor, forward and backward). Estimates until a GPU run measures them
FLEX_COMPILE_S = 15.0
MODEL_COMPILE_S = 45.0
#: ``make gpu-check``'s install before this script: a venv over the node's torch and the wheelhouse's wheels with
#: no index (``make wheelhouse``); from a package index instead, a few minutes more (README, "On a GPU")
INSTALL_S = 45.0
#: what the whole check, the install included, should stay under: a 15-minute machine lease with time to rerun it
TOTAL_BUDGET_S = 8 * 60.0
#: hard limits per command (a hung command is killed; the stage then fails): generous multiples of the budget
LIMITS_S = {"tests": 600, "train": 300, "bench": 600, "aggregate": 120}


@dataclass
class Command:
    stage: str
    argv: list[str]
    limit_s: float
    what: str = ""

    def __str__(self) -> str:
        return shlex.join(self.argv)


@dataclass
class Stage:
    key: str
    title: str
    commands: list[Command] = field(default_factory=list)
    budget_s: float = 0.0
    writes: str = ""


def attnbench_cmd() -> list[str]:
    """The attnbench of this Python's environment (the venv's console script, else ``python -m``)."""
    exe = Path(sys.executable).with_name("attnbench")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "attnbench.harness.cli"]


def read_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def plan(config_path: Path, out: Path, cores: int) -> list[Stage]:
    """The four stages and their commands, from the config file as written (no validation, no torch)."""
    raw = read_yaml(config_path)
    ab, cfg = attnbench_cmd(), ["--config", str(config_path)]
    variants = list(raw.get("variants", {}))
    bench_variants = list((raw.get("bench") or {}).get("variants") or variants)
    seeds = raw.get("seeds", [0])
    runs, bench = out / "runs", out / "bench"
    tests = Stage("tests", "the variant tests on CUDA", writes="(pytest's report)")
    tests.commands.append(Command("tests", [sys.executable, "-m", "pytest", *CUDA_TEST_FILES, "-k", "cuda", "-q",
                                            "-ra", "-p", "no:cacheprovider"], LIMITS_S["tests"]))
    train = Stage("train", "every variant trains the config's task(s)", writes=f"{runs}/, {out}/summary.csv")
    for task in raw.get("tasks", {}):
        for variant in variants:
            for seed in seeds:
                train.commands.append(Command(
                    "train", ab + ["train", *cfg, "--task", task, "--variant", variant, "--seed", str(seed), "--out",
                                   str(runs / task / variant / f"seed{seed}"), "--strict", "--no-progress"],
                    LIMITS_S["train"], f"{task}/{variant}/seed{seed}"))
    train.commands.append(Command("train", ab + ["aggregate", *cfg, "--runs", str(runs),
                                                 "--out", str(out / "summary.csv")], LIMITS_S["aggregate"]))
    sweep = Stage("bench", "the efficiency sweep of every variant", writes=f"{bench}/, {out}/bench.csv")
    for variant in bench_variants:
        sweep.commands.append(Command("bench", ab + ["bench", *cfg, "--variant", variant, "--cores", str(cores),
                                                     "--out", str(bench / f"{variant}.json")],
                                      LIMITS_S["bench"], variant))
    sweep.commands.append(Command("bench", ab + ["aggregate-bench", "--inputs",
                                                 *[str(bench / f"{v}.json") for v in bench_variants],
                                                 "--out", str(out / "bench.csv")], LIMITS_S["aggregate"]))
    table = Stage("table", "one table: variant, step time, peak memory, accuracy, the sweep's 4K/16K cells",
                  writes=f"{out}/summary.md", budget_s=TABLE_S)
    return [tests, train, sweep, table]


# ---------------------------------------------------------------- the time budget

def lra_cost():
    """scripts/lra_cost.py, the analytic cost model (a sibling script, not a package)."""
    spec = importlib.util.spec_from_file_location("lra_cost", Path(__file__).resolve().parent / "lra_cost.py")
    module = sys.modules.setdefault("lra_cost", importlib.util.module_from_spec(spec))
    if not hasattr(module, "Rate"):
        spec.loader.exec_module(module)
    return module


def estimate_budget(stages: list[Stage], config: dict) -> None:
    """Fill in each stage's expected seconds on one A100/H100-class GPU: fixed start-up costs (above) plus the
    compute of the analytic FLOPs (scripts/lra_cost.py: its rate for training in bf16 and for the sweep's
    bfloat16, FP32_FLOPS for its float32)."""
    from attnbench.harness.bench.settings import bench_settings
    from attnbench.variants import build_attention

    cost = lra_cost()
    by = {s.key: s for s in stages}
    by["tests"].budget_s = TESTS_S
    runs = [c.what.split("/") for c in by["train"].commands if c.what]
    by["train"].budget_s = data_s(config) + sum(RUN_START_S + cost.run_cost(config, task, variant).hours * 3600
                                        + run_compile_s(config, task, variant) for task, variant, _ in runs)
    s, rate = bench_settings(config), cost.Rate()
    steps = s.warmup + s.repeats * s.rounds + 3  # timed, and the probe's priming, measured and counted steps
    seconds = 0.0
    for variant in (c.what for c in by["bench"].commands if c.what):
        seconds += BENCH_START_S
        backends = [b for b in s.backends.get(variant, ["default"]) if b != "xformers" or xformers_installed()]
        cases = len(backends) * len(s.scopes)  # a block's MLP is not counted; xformers without it costs nothing
        for n in s.cuda_lengths:
            layer = build_attention(variant, s.heads * s.head_dim, s.heads, s.variant_params.get(variant, {}),
                                    max_len=n)
            for batch in s.batch_sizes:
                for mode in s.modes:
                    flops = layer.flops(batch, n) * (3 if mode == "forward_backward" else 1)
                    for dtype in s.cuda_dtypes:
                        step_s = flops / (FP32_FLOPS if dtype == "float32" else rate.core)
                        seconds += cases * (CASE_S + steps * step_s + (FLEX_COMPILE_S if runs_flex(layer) else 0))
    by["bench"].budget_s = seconds


def xformers_installed() -> bool:
    """Whether xformers is installed here (not imported: without it the sweep's xformers cases are
    ``unavailable`` before any process starts)."""
    return importlib.util.find_spec("xformers") is not None


def data_s(config: dict) -> float:
    """Seconds to generate the tasks' data once (ListOps' generator, the only one the check uses)."""
    return sum(DATA_S_PER_EXAMPLE * sum(task.get("data", {}).get(k, 0) for k in ("n_train", "n_val", "n_test"))
               for task in config["tasks"].values())


def runs_flex(layer) -> bool:
    """Whether a layer runs FlexAttention on a CUDA device (compiled, so each new shape compiles)."""
    from attnbench.variants.lib.flex_blocks import BlockKernelChoice

    return isinstance(layer, BlockKernelChoice) and layer.cfg.kernel in ("auto", "flex")


def run_compile_s(config: dict, task: str, variant: str) -> float:
    """Seconds a training run spends compiling: its model under ``train.compile``, its FlexAttention layers."""
    from attnbench.harness.config import resolve_run
    from attnbench.variants import build_attention

    run = resolve_run(config, task, variant, 0)
    layer = build_attention(variant, run["model"]["dim"], run["model"]["heads"], run["variant"]["params"], max_len=64)
    if run["train"].get("compile"):  # the model's compilation includes its FlexAttention
        return MODEL_COMPILE_S
    return FLEX_COMPILE_S if runs_flex(layer) else 0.0


def fmt_s(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def print_plan(stages: list[Stage], out: Path, budget_known: bool) -> None:
    for stage in stages:
        letter = "abcd"[STAGE_KEYS.index(stage.key)]
        budget = f" (about {fmt_s(stage.budget_s)})" if budget_known else ""
        print(f"\nstage {letter}. {stage.key}: {stage.title}{budget}")
        for c in stage.commands:
            print(f"  $ {c}")
        if stage.key == "table":
            print(f"  (in this script: reads {out}/runs/**/record.json and {out}/bench/*.json)")
        print(f"  writes {stage.writes}")
    if budget_known:
        total = sum(s.budget_s for s in stages)
        print(f"\nexpected time: about {fmt_s(total)} on one A100/H100-class GPU, about {fmt_s(total + INSTALL_S)} "
              f"with `make gpu-check`'s install from a wheelhouse (about {fmt_s(INSTALL_S)}); "
              f"{'within' if total + INSTALL_S <= TOTAL_BUDGET_S else 'OVER'} the {fmt_s(TOTAL_BUDGET_S)} it is "
              "meant to fit (estimated from start-up, compile and analytic FLOP costs, not measured; a slower GPU "
              "takes longer); each command is stopped after " + ", ".join(f"{k} {v} s" for k, v in LIMITS_S.items()))


# ---------------------------------------------------------------- the table

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


# ---------------------------------------------------------------- running

def run_command(c: Command, env: dict) -> tuple[int, float]:
    """Run one command, its output streaming through; past its limit it is killed with the processes it
    started (its own process group: a sweep's pytest and the fresh process of each case)."""
    print(f"\n$ {c}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(c.argv, cwd=REPO, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=c.limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"gpu_check: stopped after {c.limit_s:.0f} s: {c}", file=sys.stderr, flush=True)
        rc = 124
    return rc, time.perf_counter() - t0


def measured_install() -> dict | None:
    """What `make install-offline` measured of this venv's install (``<venv>/.install.json``), if it made it."""
    path = Path(sys.prefix) / ".install.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info.get("install_s"), int | float) else None


def check_config(config_path: Path) -> tuple[int, str]:
    cmd = [*attnbench_cmd(), "check-config", "--config", str(config_path)]
    print(f"\nconfig check: does the config validate?\n  $ {shlex.join(cmd)}", flush=True)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    text = (done.stdout + done.stderr).strip()
    print("  " + text.replace("\n", "\n  "), flush=True)
    return done.returncode, text


def relative_to_repo(path: Path) -> Path:
    path = Path(path).resolve()
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="print the plan and its time budget and check the config; "
                   "run nothing (works without a GPU)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"the check's config (default {DEFAULT_CONFIG})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where results go (default {DEFAULT_OUT})")
    p.add_argument("--stages", nargs="+", choices=STAGE_KEYS, default=list(STAGE_KEYS),
                   help="run only these stages (default: all four)")
    p.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)),
                   help="cores the sweep may use (default: this process's)")
    args = p.parse_args(argv)
    # the commands run in the checkout, with the config and results given relative to it where they are inside it
    args.config, args.out = (relative_to_repo(path) for path in (args.config, args.out))
    os.chdir(REPO)
    if not args.config.exists():
        print(f"gpu_check: config {args.config} does not exist", file=sys.stderr)
        return 2
    every_stage = plan(args.config, args.out, args.cores)
    stages = [s for s in every_stage if s.key in args.stages]

    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print(f"gpu_check: no CUDA device: torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}) sees no "
                  "GPU, and this check runs on one. `python scripts/gpu_check.py --dry-run` shows what it would run.",
                  file=sys.stderr)
            return 1

    print(f"GPU check: config {args.config}, results under {args.out}/", flush=True)
    rc, _ = check_config(args.config)
    if rc == 0:
        from attnbench.harness.config import load_config

        estimate_budget(every_stage, load_config(args.config))
    print_plan(stages, args.out, budget_known=rc == 0)
    if rc:
        print(f"\ngpu_check: {args.config} does not validate (above)", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\ndry run: nothing was run")
        return 0

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    results = []
    for stage in stages:
        t0 = time.perf_counter()
        if stage.key == "table":
            try:
                print("\n" + write_table(args.out, args.config), flush=True)
                ok = True
            except Exception as exc:  # the table's failure is reported with the other stages'
                print(f"gpu_check: the table failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                ok = False
        else:
            if stage.key in ("train", "bench"):  # no stale results of an earlier check in the table
                shutil.rmtree(args.out / ("runs" if stage.key == "train" else "bench"), ignore_errors=True)
            codes = [run_command(c, env)[0] for c in stage.commands]
            ok = not any(codes)
        results.append((stage, ok, time.perf_counter() - t0))
    print("\nGPU check:")
    install = measured_install()
    if install:
        print(f"  install {fmt_s(install['install_s'])} ({install.get('mode', '?')}; budget {fmt_s(INSTALL_S)})")
    for stage, ok, seconds in results:
        print(f"  {stage.key:6} {'ok' if ok else 'FAILED'}  {fmt_s(seconds)} (budget {fmt_s(stage.budget_s)})")
    total = sum(seconds for _, _, seconds in results) + (install["install_s"] if install else 0)
    print(f"  total  {fmt_s(total)}{' with the install' if install else ''} (meant to fit {fmt_s(TOTAL_BUDGET_S)})")
    print(f"table: {args.out / 'summary.md'}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
