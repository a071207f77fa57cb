"""The machine's matmul rate: a short probe that every achieved rate of the efficiency sweep (and of
``attnbench compare``) reads against, as a share of it.

``matmul_rate(device, dtype, threads)`` times square ``size x size`` matmuls (``torch.mm`` into a
preallocated ``out=``) on ``device`` with ``threads`` torch threads (restored afterwards): a warm-up,
then timed samples until ``min_seconds`` have passed (at least ``MIN_REPEATS``), each sample
``inner`` matmuls (as many as make it about a tenth of ``min_seconds``: one on a CPU, several on a
GPU, whose single matmul is too short to time alone), timed by ``time.perf_counter`` on a CPU and by
CUDA events on a GPU. A matmul is ``2 * size**3`` FLOPs; the result holds the median and the best
sample's GFLOP/s. ``share_of_peak(gflops, peak)`` is an achieved rate as a fraction of it.

``python -m attnbench.harness.measure.matmul_peak --threads 2 --dtype float32`` prints the probe as
JSON. Given a spec as JSON and an out path instead, it is the worker that ``fresh_process.run_fresh``
starts: the sweep measures its probe in a fresh process (``worker_probes``).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

MIN_REPEATS = 3
MAX_REPEATS = 1000
WARMUP = 2


def _timed_sample(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, inner: int) -> float:
    """Seconds for ``inner`` matmuls: CUDA events around them on a GPU, ``perf_counter`` on a CPU."""
    if a.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(a.device)
        start.record()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    for _ in range(inner):
        torch.mm(a, b, out=out)
    return time.perf_counter() - t0


def _method(device: torch.device, dtype: torch.dtype, size: int, min_seconds: float) -> str:
    timer = "CUDA events" if device.type == "cuda" else "time.perf_counter"
    precision = (f", float32 matmul precision '{torch.get_float32_matmul_precision()}'"
                 if dtype == torch.float32 and device.type == "cuda" else "")
    return (f"torch.mm of two {size}x{size} matrices into a preallocated out= ({WARMUP} warm-up matmuls, then "
            f"timed samples for at least {min_seconds:g} s, each of as many matmuls as last about "
            f"{min_seconds / 10:g} s, {timer} around each{precision}); 2*size^3 FLOPs per matmul; "
            "median GFLOP/s of the samples")


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, threads: int | None = None,
                size: int = 1024, min_seconds: float = 0.3) -> dict:
    """The matmul rate of ``device`` at ``dtype`` with ``threads`` torch threads (None: torch's current
    count); see the module doc. torch's thread count is restored however the probe ends."""
    device = torch.device(device)
    previous = torch.get_num_threads()
    threads = int(threads) if threads else previous
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a, b = (torch.randn(size, size, generator=gen).to(device, dtype) for _ in range(2))
        out = torch.empty(size, size, device=device, dtype=dtype)
        for _ in range(WARMUP - 1):
            _timed_sample(a, b, out, 1)
        one = max(_timed_sample(a, b, out, 1), 1e-7)  # the last warm-up matmul, timed: sizes the samples
        inner = max(1, min(10_000, math.ceil(min_seconds / 10 / one)))
        times: list[float] = []
        t0 = time.perf_counter()
        while len(times) < MIN_REPEATS or (time.perf_counter() - t0 < min_seconds and len(times) < MAX_REPEATS):
            times.append(_timed_sample(a, b, out, inner))
    finally:
        torch.set_num_threads(previous)
    flops = 2.0 * size ** 3 * inner
    rates = [flops / t / 1e9 for t in times if t > 0]
    return {"gflops": statistics.median(rates), "gflops_max": max(rates), "size": size,
            "dtype": str(dtype).removeprefix("torch."), "threads": threads, "device": str(device),
            "method": _method(device, dtype, size, min_seconds), "repeats": len(times),
            "matmuls_per_repeat": inner}


def share_of_peak(gflops: float | None, peak: float | None) -> float | None:
    """An achieved rate as a fraction of the matmul peak; None when either is missing (None or NaN) or
    the peak is not positive."""
    if gflops is None or peak is None:
        return None
    gflops, peak = float(gflops), float(peak)
    if math.isnan(gflops) or math.isnan(peak) or peak <= 0:
        return None
    return gflops / peak


def measure_probes(spec: dict) -> dict:
    """The worker's measurement: one probe per dtype of ``spec`` (device, threads, dtypes, size, min_seconds)."""
    device = torch.device(spec["device"])
    probes = {d: matmul_rate(device, getattr(torch, d), int(spec["threads"]), int(spec.get("size", 1024)),
                             float(spec.get("min_seconds", 0.3))) for d in spec["dtypes"]}
    return {"status": "ok", "probes": probes}


#: the probe's square size per device type: a 1024 matmul is too small to fill a GPU
PROBE_SIZE = {"cpu": 1024, "cuda": 4096}
#: timed seconds of the probe per dtype
PROBE_SECONDS = 0.3


def probe_in_fresh_process(device: str, threads: int, dtypes: Iterable[str], workdir: Path,
                           timeout_s: float = 120.0) -> dict[str, dict[str, Any]]:
    """The matmul rate per dtype of ``dtypes`` on ``device`` with ``threads``, measured in one fresh process
    (as the work it is compared with is): ``{dtype: matmul_rate(...)}``. A probe that failed is
    ``{"gflops": None, "error": ...}``, so that what reads it has no share rather than a wrong one."""
    from attnbench.harness.measure.fresh_process import run_fresh

    dtypes = sorted(set(dtypes))
    if not dtypes:
        return {}
    spec = {"device": device, "threads": threads, "dtypes": dtypes,
            "size": PROBE_SIZE.get(torch.device(device).type, 1024), "min_seconds": PROBE_SECONDS}
    result = run_fresh("attnbench.harness.measure.matmul_peak", spec, timeout_s + 30.0 * len(dtypes), Path(workdir),
                       threads=threads)
    probes = result.get("probes") or {}
    error = result.get("error") or result.get("message") or "no result"
    return {d: probes.get(d) or {"gflops": None, "dtype": d, "threads": threads, "device": device,
                                 "error": f"matmul probe failed: {error}"[:2000]} for d in dtypes}


def probe_error(message: str, out_of_memory: bool) -> dict:
    return {"status": "oom" if out_of_memory else "failed", "message": message}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0].lstrip().startswith("{"):  # run_fresh's worker: SPEC_JSON OUT_PATH
        from attnbench.harness.measure.fresh_process import worker_main

        return worker_main(argv, measure_probes, probe_error)
    parser = argparse.ArgumentParser(prog="python -m attnbench.harness.measure.matmul_peak",
                                     description="Measure this machine's matmul rate (GFLOP/s) and print it as JSON.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own count)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--min-seconds", type=float, default=0.3)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype, None)
    if not isinstance(dtype, torch.dtype):
        parser.error(f"--dtype {args.dtype!r} is not a torch dtype")
    print(json.dumps(matmul_rate(torch.device(args.device), dtype, args.threads, args.size, args.min_seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
