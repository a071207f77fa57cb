"""Peak memory of a piece of work, one method per device, used by training, the efficiency
sweep and ``attnbench compare`` alike.

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
  allocated at the start; the peak reserved by the caching allocator is reported beside it.
- CPU: the peak resident set size of the process above its size at the start. Exact where
  Linux lets the high-water mark ``VmHWM`` be reset (``/proc/self/clear_refs``); elsewhere a
  thread samples the resident size every 2 ms (and ``ru_maxrss`` counts when the work set a new
  high for the process). The work is meant to run in a fresh process, so that the number is
  what it added, not what an earlier job left behind.
"""
from __future__ import annotations

import contextlib
import gc
import resource
import threading
from collections.abc import Iterator

import psutil
import torch

from attnbench.harness.measure.timing import synchronize

MIB = 2 ** 20
SAMPLE_S = 0.002

CUDA_METHOD = ("torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus allocated at start "
               "(max_memory_reserved reported beside it)")
HWM_METHOD = "peak RSS: VmHWM (reset at start) minus RSS at start"
MAXRSS_METHOD = "peak RSS: ru_maxrss minus RSS at start"
SAMPLED_METHOD = f"peak RSS sampled every {SAMPLE_S * 1000:g} ms (psutil) minus RSS at start"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception says the device (or the host) ran out of memory."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _vm_hwm_bytes() -> int | None:
    """The process's peak resident set size (``VmHWM``), or None where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _vm_hwm_bytes(), _rss_bytes()
    return hwm is not None and hwm <= rss + 4 * MIB


class _RssSampler:
    """A daemon thread keeping the largest resident size it sees."""

    def __init__(self) -> None:
        self.max_rss = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.max_rss = max(self.max_rss, proc.memory_info().rss)
            self._stop.wait(SAMPLE_S)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.max_rss, _rss_bytes())


class PeakMemory:
    """``with PeakMemory(device) as pm: work()`` then ``pm.peak_bytes`` (added by the work),
    ``pm.reserved_bytes`` (CUDA only, else None), ``pm.baseline_bytes`` and ``pm.method``."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self.reserved_bytes: int | None = None
        self.baseline_bytes: int | None = None
        self.method = CUDA_METHOD if self.device.type == "cuda" else HWM_METHOD
        self._sampler: _RssSampler | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
            return self
        gc.collect()
        self._maxrss0 = _maxrss_bytes()
        self._hwm_ok = _reset_hwm()
        self.baseline_bytes = _rss_bytes()
        if not self._hwm_ok:
            self._sampler = _RssSampler()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.baseline_bytes is not None  # set by __enter__
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self.baseline_bytes
            self.reserved_bytes = torch.cuda.max_memory_reserved(self.device)
            return
        hwm = _vm_hwm_bytes() if self._hwm_ok else None
        if hwm is not None:
            self.peak_bytes, self.method = max(0, hwm - self.baseline_bytes), HWM_METHOD
            return
        # VmHWM was readable at the start (_reset_hwm), so the sampler runs: /proc does not go away
        assert self._sampler is not None
        sampled = self._sampler.stop() - self.baseline_bytes
        maxrss = _maxrss_bytes()
        if maxrss > self._maxrss0:  # the work set a new high for the process: ru_maxrss saw all of it
            self.peak_bytes, self.method = max(maxrss - self.baseline_bytes, sampled), MAXRSS_METHOD
        else:
            self.peak_bytes, self.method = max(0, sampled), SAMPLED_METHOD


def cuda_memory_cap(configured: int | None, total: int, free: int) -> int:
    """The bytes a process (a sweep case's worker, a training job) may allocate on its GPU: the configured
    cap (``bench.memory_cap_mb``, ``train.memory_cap_mb``) if set, else 80% of the GPU's memory, and
    never more than was free when the process started (what another process holds,
    the sweep's own timing process included, is not there to use: a cap above it would turn a real
    out-of-memory into a crash at an unrecorded size)."""
    return max(0, min(configured or int(0.8 * total), free))


def memory_fraction_args(device: torch.device, current_index: int, cap: int, total: int) -> tuple[float, int]:
    """The arguments of ``torch.cuda.set_per_process_memory_fraction`` that cap ``device`` at ``cap``
    bytes: the fraction of its total memory, and its index (torch 2.13 refuses a ``torch.device`` without
    one: "Expected a torch.device with a specified index"); an unindexed ``cuda`` is the current device."""
    index = device.index if device.index is not None else current_index
    return min(1.0, cap / total), index


def cap_cuda_memory(device: torch.device, configured: int | None) -> int:
    """Cap this process's CUDA allocations on ``device`` (see ``cuda_memory_cap``); the cap in bytes."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    cap = cuda_memory_cap(configured, total, free)
    torch.cuda.set_per_process_memory_fraction(*memory_fraction_args(device, index, cap, total))
    return cap


CPU_CAP_METHOD = ("address space the process may add (RLIMIT_AS set to its size at the start plus the cap "
                  "minus its resident size): an allocation beyond it fails, and the run becomes an oom record")
CUDA_CAP_METHOD = "torch.cuda.set_per_process_memory_fraction (device memory; host memory is not capped)"


def cpu_address_limit(cap: int, vms: int, rss: int, current_soft: int) -> int:
    """The soft RLIMIT_AS that lets a process of address space ``vms`` and resident size ``rss`` grow its
    resident memory to at most ``cap`` bytes: every new resident byte is new address space first, so
    ``vms + (cap - rss)`` (never below ``vms``: the process must be able to go on as it is). A lower
    limit already in force (``ulimit -v``) stays."""
    limit = vms + max(0, cap - rss)
    return limit if current_soft == resource.RLIM_INFINITY else min(limit, current_soft)


@contextlib.contextmanager
def memory_cap(device: torch.device, cap_mb: int) -> Iterator[dict]:
    """Cap what the work inside may allocate: ``cap_mb`` MiB, or with 0 80% of the machine's RAM (CPU) or
    of the GPU's memory (CUDA, never more than is free). An allocation past the cap raises torch's (or
    Python's) out-of-memory error, which ``is_out_of_memory`` recognises, instead of taking the machine
    down. Yields ``{"bytes": cap, "method": how}``; the previous limit is restored on exit."""
    configured = cap_mb * MIB if cap_mb else None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        cap = cap_cuda_memory(device, configured)
        try:
            yield {"bytes": cap, "method": CUDA_CAP_METHOD}
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, index)
        return
    cap = configured or int(0.8 * psutil.virtual_memory().total)
    info = psutil.Process().memory_info()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = cpu_address_limit(cap, info.vms, info.rss, soft)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield {"bytes": cap, "method": CPU_CAP_METHOD}
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
