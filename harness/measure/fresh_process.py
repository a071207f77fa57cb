"""Run one measurement in a fresh Python process, with a time limit and a memory cap.

``run_fresh(module, spec, ...)`` starts ``python -m MODULE SPEC_JSON OUT_PATH`` (the module
writes its result as JSON to OUT_PATH) and returns that result. When the process does not
produce one, the returned dict has ``failure`` set to:
- ``"timeout"``: it ran past ``timeout_s`` and was killed;
- ``"oom"``: its resident memory went over ``memory_cap_bytes`` (polled every few ms) and it was
  killed, or the kernel killed it with SIGKILL (the out-of-memory killer's signal);
- ``"crash"``: it exited without a result (the last lines of its output are in ``error``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import psutil

POLL_S = 0.005


def worker_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1",
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


def run_fresh(module: str, spec: dict, timeout_s: float, workdir: Path, threads: int = 1,
              memory_cap_bytes: int | None = None, extra_env: dict | None = None) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"case-{os.getpid()}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", module, json.dumps(spec), str(out)]
    load0 = os.getloadavg()[0]
    failure, error, peak_rss = None, "", 0
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        env = {**worker_env(threads), **(extra_env or {})}
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            ps = psutil.Process(proc.pid)
            while proc.poll() is None:
                elapsed = time.perf_counter() - t0
                rss = _rss(ps) if memory_cap_bytes else 0
                peak_rss = max(peak_rss, rss)
                if elapsed > timeout_s:
                    failure, error = "timeout", f"timed out after {timeout_s:g} s"
                elif memory_cap_bytes and rss > memory_cap_bytes:
                    failure = "oom"
                    error = (f"resident memory {rss / 2**20:.0f} MiB went over the cap of "
                             f"{memory_cap_bytes / 2**20:.0f} MiB; killed")
                if failure:
                    break
                time.sleep(POLL_S)
        finally:  # a timeout, a cap, or this process interrupted (Ctrl-C, SIGTERM, a watchdog): the worker goes too
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.perf_counter() - t0
        log.seek(0)
        tail = log.read().strip().splitlines()[-8:]
    if failure is None and out.exists():
        result = json.loads(out.read_text())
    elif failure is None:
        how = f"exit status {proc.returncode}"
        if proc.returncode < 0:
            how = f"killed by signal {-proc.returncode}" + (" (out of memory?)" if proc.returncode == -9 else "")
        failure = "oom" if proc.returncode == -9 else "crash"
        result = {"failure": failure, "error": f"worker {how}: " + " | ".join(tail)}
    else:
        result = {"failure": failure, "error": error}
    out.unlink(missing_ok=True)
    result["process_wall_s"] = wall
    result["loadavg"] = [load0, os.getloadavg()[0]]  # 1-minute load average before and after: interference
    return result


def worker_main(argv: list[str], measure: Callable[[dict], dict], on_error: Callable[[str, bool], dict]) -> int:
    """The child's side: ``measure(spec)`` written as JSON to the out path. An exception is recorded,
    never raised, so the parent goes on with the next case (an interruption is not a result: it ends the
    worker): ``on_error(message, out_of_memory)``
    gives the result, to which the traceback is added."""
    from attnbench.harness.measure.memory import is_out_of_memory  # torch: only in the worker process

    spec_json, out_path = argv
    try:
        result = measure(json.loads(spec_json))
    except Exception as exc:  # not an interruption (Ctrl-C, a stop signal): the worker then ends without a result
        oom = is_out_of_memory(exc)
        result = {**on_error(f"{type(exc).__name__}: {exc}".strip()[:2000], oom),
                  "traceback": traceback.format_exc(limit=12)}
    Path(out_path).write_text(json.dumps(result))
    return 0
