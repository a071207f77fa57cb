"""Running the efficiency sweep's cases: memory, FLOPs and status from a fresh process per case,
then the timing in this process through pytest-benchmark; one result row per case, failures included.

``run_case`` is what each parametrised benchmark in ``benchmarks/test_attention.py`` calls. A case
that runs out of memory, goes over its time cap, fails or cannot run here (``unavailable``) gets
a row with that status and no timing, and the sweep goes on. Whatever the timing's outcome, its
memory is released before the next case (``release_memory``): a case that ran out of GPU memory
must not leave it held, or the next case's worker finds it taken.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from attnbench.harness.bench.case import Stepper, backend_context, failure_status, unavailable
from attnbench.harness.bench.settings import BenchConfig, Case
from attnbench.harness.core import watchdog
from attnbench.harness.measure.fresh_process import run_fresh
from attnbench.harness.measure.matmul_peak import probe_in_fresh_process, share_of_peak
from attnbench.harness.measure.memory import is_out_of_memory

# seconds a case's worker may spend beyond its measured steps (starting Python, importing torch)
STARTUP_S = 60.0


@dataclass(frozen=True)
class SweepEnv:
    """Where and how the sweep runs."""

    settings: BenchConfig
    device: str
    threads: int
    workdir: Path

    @property
    def configured_cap_bytes(self) -> int | None:
        """``bench.memory_cap_mb`` in bytes, None when unset (0)."""
        return self.settings.memory_cap_mb * 2 ** 20 if self.settings.memory_cap_mb else None

    @property
    def cpu_memory_cap_bytes(self) -> int:
        """A CPU case's resident-memory cap, enforced by the parent: configured, else 80% of the RAM."""
        return self.configured_cap_bytes or int(0.8 * psutil.virtual_memory().total)

    def worker_spec(self, case: Case) -> dict:
        """What the case's worker needs. A CUDA worker gets the configured cap only and sets its own from
        the GPU memory free when it starts (``case.cap_cuda_memory``)."""
        s = self.settings
        cap = self.cpu_memory_cap_bytes if self.device == "cpu" else self.configured_cap_bytes
        return {"case": case.to_dict(), "device": self.device, "threads": self.threads, "heads": s.heads,
                "head_dim": s.head_dim, "mlp_dim": s.mlp_dim, "seed": s.seed, "prime_length": s.prime_length,
                "time_cap_s": s.time_cap_s, "memory_cap_bytes": cap}

    def worker_timeout_s(self) -> float:
        # priming, the measured step and the counted step; a slower measured step is reported by the worker
        cap = self.settings.time_cap_s
        return STARTUP_S + 3 * cap if cap > 0 else 24 * 3600.0


def base_row(case: Case, env: SweepEnv) -> dict:
    return {"impl": case.impl, "variant": case.variant, "backend": case.backend, "scope": case.scope,
            "mode": case.mode, "dtype": case.dtype, "batch": case.batch, "n": case.n, "params": case.params,
            "device": env.device, "threads": env.threads, "case_id": case.id}


def probe_case(case: Case, env: SweepEnv) -> dict:
    """The fresh-process part: status, peak memory, cold step time, FLOPs, and the memory cap it ran under."""
    why_not = unavailable(case, torch.device(env.device))
    if why_not:  # known without starting a process
        return {"status": "unavailable", "message": why_not}
    cpu_cap = env.cpu_memory_cap_bytes if env.device == "cpu" else None
    result = run_fresh("attnbench.harness.bench.case", env.worker_spec(case), env.worker_timeout_s(), env.workdir,
                       threads=env.threads, memory_cap_bytes=cpu_cap)
    if cpu_cap:
        result["memory_cap_bytes"] = cpu_cap
    failure = result.pop("failure", None)
    if failure:
        status = {"crash": "failed"}.get(failure, failure)
        result.update(status=status, message=result.pop("error"))
    return result


def probe_matmul(env: SweepEnv, dtypes) -> dict[str, dict]:
    """The machine's matmul rate (``measure.matmul_peak``) per dtype, measured once per sweep in one
    fresh process with the sweep's threads on its device. A probe that failed is ``{"gflops": None,
    "error": ...}``: the rows then have no peak share."""
    return probe_in_fresh_process(env.device, env.threads, dtypes, env.workdir, STARTUP_S)


def release_memory(device: torch.device) -> None:
    """Give back what a timed case left: its garbage (reference cycles) and, on CUDA, the caching
    allocator's free blocks, so that the next case's worker finds the GPU memory free."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timing_limit_s(settings: BenchConfig) -> float:
    """Seconds the timing of one case may take (0: no limit): ``bench.time_cap_s`` for each of its steps and for
    building it (its fresh-process probe found one step within the cap)."""
    return (settings.warmup + settings.repeats + 1) * settings.time_cap_s


def time_case(case: Case, env: SweepEnv, benchmark) -> dict:
    """Time the case in this process: ``warmup`` untimed then ``repeats`` timed steps (pytest-benchmark).
    The stepper (module, inputs, gradients) is dropped and its memory released however timing ends. Timing
    that runs past ``timing_limit_s`` is interrupted (``core.watchdog``): a ``timeout`` result, and
    pytest-benchmark keeps none of its steps."""
    s = env.settings
    device = torch.device(env.device)
    torch.set_num_threads(env.threads)
    stepper = None
    try:
        with watchdog.Deadline(timing_limit_s(s), f"timing {case.id}") as limit, backend_context(case.backend):
            stepper = Stepper(case, s.heads, s.head_dim, s.mlp_dim, device, s.seed)
            benchmark.pedantic(stepper, rounds=s.repeats, warmup_rounds=s.warmup, iterations=1)
    finally:
        del stepper
        release_memory(device)
    if limit.expired:
        benchmark.has_error = True  # its steps so far are left out of pytest-benchmark's file, as after an error
        return {"status": "timeout", "message": f"while timing: {s.warmup} warm-up and {s.repeats} timed steps took "
                f"over {timing_limit_s(s):g} s ({s.warmup + s.repeats + 1} x bench.time_cap_s); interrupted"}
    st = benchmark.stats.stats
    data = list(st.data)
    return {"median_s": st.median, "min_s": st.min, "max_s": st.max, "iqr_s": st.iqr,
            "stddev_s": st.stddev if len(data) > 1 else 0.0, "rounds": len(data), "times_s": data,
            "timing_method": (f"pytest-benchmark pedantic: {s.warmup} warm-up then {s.repeats} timed steps, "
                              f"time.perf_counter{' with torch.cuda.synchronize' if device.type == 'cuda' else ''}"
                              " around each step; median")}


def timing_failure(exc: Exception) -> dict:
    """The status and message of a case whose timing raised (out of memory, no SDPA kernel, other)."""
    message = f"{type(exc).__name__}: {exc}"
    status = failure_status(message, is_out_of_memory(exc))
    return {"status": status, "message": f"while timing: {exc if status == 'oom' else message}"[:2000]}


def run_case(case: Case, env: SweepEnv, benchmark, round_index: int = 0, probes: dict | None = None,
             matmul_peaks: dict | None = None) -> dict:
    """One case (one round of it) end to end; the row goes into the benchmark's ``extra_info`` as well.
    The fresh-process probe runs in the case's first round; later rounds reuse it from ``probes``.
    ``matmul_peaks`` (dtype -> ``probe_matmul``'s probe) gives the row its ``matmul_peak_gflops`` and
    an ok row its ``peak_share``, the achieved GFLOP/s as a fraction of that rate."""
    row = {**base_row(case, env), "round": round_index}
    matmul = (matmul_peaks or {}).get(case.dtype) or {}
    row["matmul_peak_gflops"], row["matmul_peak_method"] = matmul.get("gflops"), matmul.get("method")
    probes = {} if probes is None else probes
    if case.id not in probes:
        probes[case.id] = probe_case(case, env)
    probe = probes[case.id]
    row.update({k: probe.get(k) for k in ("status", "message", "peak_bytes", "reserved_bytes", "peak_method",
                                          "cold_step_s", "params_count", "flops_analytic", "flops_counted",
                                          "flops_counted_method", "sdpa_kernels", "attention_kernel",
                                          "attention_kernel_why", "primed_at", "memory_cap_bytes",
                                          "process_wall_s", "loadavg")})
    if row["status"] == "ok":
        try:
            row.update(time_case(case, env, benchmark))
        except Exception as exc:  # a result, not a crash of the sweep
            row.update(timing_failure(exc))
        finally:  # here the exception and its traceback, which held the step's tensors, are gone
            release_memory(torch.device(env.device))
    if row["status"] == "ok":
        row["tokens_per_s"] = case.batch * case.n / row["median_s"]
        row["gflops_per_s"] = row["flops_analytic"] / row["median_s"] / 1e9
        row["peak_share"] = share_of_peak(row["gflops_per_s"], row["matmul_peak_gflops"])
    benchmark.extra_info.update({k: v for k, v in row.items() if k != "times_s"})
    return row


def describe(row: dict) -> str:
    """One progress line for a finished case."""
    head = f"{row['impl']:>14} {row['scope']:5} {row['mode']:16} {row['dtype']:8} b={row['batch']} n={row['n']:>6}"
    if row["status"] != "ok":
        return f"{head}  {row['status'].upper()}: {row['message']}"
    spread = (max(row["times_s"]) - min(row["times_s"])) / row["median_s"] if row["times_s"] else 0.0
    share = f" ({100 * row['peak_share']:.1f}% of matmul peak)" if row.get("peak_share") is not None else ""
    return (f"{head}  {row['median_s'] * 1e3:9.2f} ms (spread {100 * spread:.0f}%)  "
            f"{row['peak_bytes'] / 2**20:8.1f} MiB  {row['tokens_per_s']:10.0f} tok/s  "
            f"{row['gflops_per_s']:.3g} GFLOP/s{share}")

