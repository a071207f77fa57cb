"""One attention layer measured in a fresh process: the forward+backward time and peak memory
of our variant or of a peer, for ``attnbench compare`` and the memory-scaling tests.

``run_worker(spec)`` starts ``python -m attnbench.harness.compare.probe`` with a JSON spec and returns its
result; ``measure_in_process(spec)`` is what that process runs:
- torch threads fixed (``spec["threads"]``; OMP/MKL threads set to match);
- training mode (dropout 0): random hashes/blocks/features are drawn as in training;
- every token real: ours and the peers get ``key_padding_mask=None``, as the pipeline's model
  passes for a batch without padding (a peer builds its library's all-real mask where it needs one);
- peak memory: the peak of the first forward+backward step above the memory just before it, and
  the peak over all steps above the same start (``attnbench.harness.measure.memory.PeakMemory``);
- time: after warm-up, ``repeats`` timed steps (perf_counter, the device synchronised).
With ``"live_memory": true`` in the spec the process runs with glibc's mmap threshold fixed at
128 KiB (``LIVE_MEMORY_ENV``): every large block is mapped on allocation and returned to the
system when freed, so the resident size follows the live tensors and the peaks repeat to about
0.1 MiB run to run. Under glibc's default (a threshold that grows as large blocks are freed) freed
memory stays in the heap in an order-dependent way: the same step's peak varies by 10-20 % between
fresh processes. The fixed threshold costs page faults on every step, so such a run is for
memory only; its times are not comparable.
A failure (error, out of memory, timeout) comes back as ``{"ok": False, "error": ...}``.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from attnbench.harness.compare.registry import PEERS, Shape
from attnbench.harness.measure.fresh_process import run_fresh, worker_main
from attnbench.harness.measure.memory import PeakMemory
from attnbench.harness.measure.timing import Stopwatch
from attnbench.variants import build_attention
from attnbench.variants.base import Attention

#: the environment of a live-memory run (glibc's M_MMAP_THRESHOLD; ignored by other allocators)
LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
LIVE_MEMORY_METHOD = ("fresh process, glibc mmap threshold fixed at 128 KiB: freed blocks go back to the system, "
                      "so the peak is that of live memory, repeatable to ~0.1 MiB")


def build_impl(spec: dict[str, Any]) -> tuple[nn.Module, str]:
    """The module a worker spec names: ours (``build_attention``) or a peer, with its label."""
    shape = Shape(spec["n"], spec["batch"], spec["heads"], spec["head_dim"])
    if spec["impl"] == "ours":
        return build_attention(spec["variant"], shape.dim, shape.heads, spec["params"], max_len=shape.n), \
            f"attnbench {spec['variant']}"
    peer = PEERS[spec["peer"]]
    built = peer.build(shape, spec["params"])
    if isinstance(built, tuple):
        return built
    return built, peer.title


def measure_in_process(spec: dict[str, Any]) -> dict[str, Any]:
    """Build one implementation and measure it in this (fresh) process.

    1. memory, two figures: the peak of the first forward+backward step above the memory just before it,
       after the layer and its inputs were built (``peak_bytes``): what one step needs (plus any lazy
       set-up inside torch that every implementation pays alike), reproducible to ~0.1 MiB run to run;
       and the peak over every step, warm-up and timed, above that same start (``peak_all_bytes``): on
       a CPU the allocator keeps freed memory, so a training loop's repeated steps can hold more than
       one step needs (fragmentation, buffers kept between steps), which this figure shows;
    2. time: the first step and ``warmup - 1`` more are warm-up; then ``repeats`` timed steps.

    Options: ``sdpa_backend`` ("math", "flash", ...) restricts torch's SDPA to that backend for
    every step; ``prime_n`` runs one untimed step at that (small) length before the measured
    one, so torch's one-time set-up is paid before the peak is taken.
    """
    backend: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if spec.get("sdpa_backend"):
        backend = sdpa_kernel([getattr(SDPBackend, spec["sdpa_backend"].upper())])
    with backend:
        return _measure(spec)


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    device = torch.device(spec["device"])
    for mod in spec.get("peer_modules", ()):
        importlib.import_module(mod)
    torch.manual_seed(spec["seed"])
    module, label = build_impl(spec)
    module = module.to(device=device, dtype=torch.float32).train()
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    b, n, dim = spec["batch"], spec["n"], spec["heads"] * spec["head_dim"]
    x = torch.randn(b, n, dim, generator=gen).to(device).requires_grad_(True)
    grad_out = torch.randn(b, n, dim, generator=gen).to(device)
    mask = None  # every token real
    n_params = sum(p.numel() for p in module.parameters())
    flops_fwd = None
    if spec["impl"] == "ours" and isinstance(module, Attention):
        try:
            flops_fwd = int(module.flops(b, n))  # analytic, of the layer as built
        except NotImplementedError:
            pass

    def clear() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None

    def step() -> None:
        clear()
        y = module(x, mask)
        if tuple(y.shape) != tuple(x.shape):
            raise RuntimeError(f"output shape {tuple(y.shape)} != input shape {tuple(x.shape)}")
        y.backward(grad_out)

    def peak_of_step() -> tuple[int, str, int]:
        """(peak bytes above the start, method, bytes at the start) of one step."""
        clear()
        with PeakMemory(device) as mem:
            step()
        assert mem.peak_bytes is not None and mem.baseline_bytes is not None  # set on leaving the block
        return mem.peak_bytes, mem.method, mem.baseline_bytes

    if spec.get("prime_n"):
        xs = torch.randn(b, int(spec["prime_n"]), dim, device=device, requires_grad=True)
        module(xs, torch.ones(b, xs.shape[1], dtype=torch.bool, device=device)).sum().backward()
        del xs
        clear()
    watch = Stopwatch(device)
    t0 = time.perf_counter()
    cold_peak, cold_method, cold_base = peak_of_step()
    watch.durations.append(time.perf_counter() - t0)  # the first warm-up step (not timed for the result)
    warmup = max(1, int(spec["warmup"]))
    with PeakMemory(device) as later:  # the steps after the first: what a training loop's repeats add
        for _ in range(warmup - 1):
            with watch.time():
                step()
        for _ in range(int(spec["repeats"])):
            with watch.time():
                step()
    times = watch.durations[warmup:]
    # the peak over every step, above the memory before the first one
    assert later.peak_bytes is not None and later.baseline_bytes is not None  # set on leaving the block
    all_peak = max(cold_peak, later.peak_bytes + later.baseline_bytes - cold_base)
    result = {
        "ok": True, "label": label, "params": n_params, "threads": torch.get_num_threads(),
        "times_s": times, "warmup_times_s": watch.durations[:warmup],
        "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
        "peak_bytes": cold_peak, "peak_method": "first step in a fresh process: " + cold_method,
        "peak_all_bytes": all_peak, "flops_fwd": flops_fwd,
        "memory_before_bytes": cold_base,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }
    if spec.get("profile_dir"):
        result["profile"] = _profile(step, spec, label)  # after the timed steps: does not affect them
    return result


def _profile(step: Callable[[], None], spec: dict[str, Any], label: str) -> str:
    """One more step under torch.profiler; the op table is written next to the JSON."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if spec["device"].startswith("cuda") else [])
    with profile(activities=acts, profile_memory=True, record_shapes=False) as prof:
        step()
    sort = "self_cuda_time_total" if spec["device"].startswith("cuda") else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=25)
    out = Path(spec["profile_dir"])
    out.mkdir(parents=True, exist_ok=True)
    name = f"{spec['variant']}-{spec.get('peer') or 'none'}-{spec['impl']}-n{spec['n']}-{spec['device']}.txt"
    (out / name).write_text(f"{label}\n{json.dumps(spec['params'])}\n\n{table}\n")
    return str(out / name)


def _worker(argv: list[str]) -> int:
    return worker_main(argv, measure_in_process, lambda message, oom: {"ok": False, "error": message, "oom": oom})


def run_worker(spec: dict[str, Any], timeout_s: float, workdir: Path) -> dict[str, Any]:
    """``measure_in_process(spec)`` in a fresh Python process; failures become ``{"ok": False, ...}``."""
    result = run_fresh("attnbench.harness.compare.probe", spec, timeout_s, workdir, threads=int(spec["threads"]),
                       extra_env=LIVE_MEMORY_ENV if spec.get("live_memory") else None)
    failure = result.pop("failure", None)
    if failure:
        result.update(ok=False, oom=failure == "oom")
    return result


if __name__ == "__main__":
    # run the imported module, not this __main__ copy: peers registered by --peer-module
    # must land in the registry that build_impl reads
    from attnbench.harness.compare.probe import _worker as _run

    sys.exit(_run(sys.argv[1:]))
