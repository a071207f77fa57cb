"""The GPU check: on a machine with a CUDA GPU, in about 10 minutes, does everything GPU-only in attnbench work,
and what does it cost there? (`make gpu-check`; docs/gpu.md.)

    python scripts/gpu_check.py --dry-run     # any machine: the plan, its time budget, and the config checked
    python scripts/gpu_check.py               # a CUDA machine: runs the four stages, prints and writes the table

Stages, in order (each command's output streams through; a failed stage does not stop the later ones):

a. tests: ``pytest tests/harness/run/test_cuda.py`` and the CUDA tests of the other files (``-k cuda``: FlexAttention
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

This file parses the arguments and runs the stages; the plan and its time budget are in
scripts/gpu_check_plan.py, the table in scripts/gpu_check_table.py (sibling modules, imported as Python
imports a script's neighbours: run it as ``python scripts/gpu_check.py``).

The exit status is 0 when every stage passed. Without a CUDA device the check stops at once with a message
and status 1 (``--dry-run`` works anywhere: it imports no CUDA code and runs nothing on a GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from gpu_check_plan import (
    INSTALL_S,
    STAGE_KEYS,
    TOTAL_BUDGET_S,
    Command,
    attnbench_cmd,
    estimate_budget,
    fmt_s,
    plan,
    print_plan,
)
from gpu_check_table import write_table

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = Path("config/gpu_check.yaml")
DEFAULT_OUT = Path("results/gpu_check")


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
