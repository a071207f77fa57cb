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

import gc
import resource
import threading

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

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self.baseline_bytes
            self.reserved_bytes = torch.cuda.max_memory_reserved(self.device)
            return
        hwm = _vm_hwm_bytes() if self._hwm_ok else None
        if hwm is not None:
            self.peak_bytes, self.method = max(0, hwm - self.baseline_bytes), HWM_METHOD
            return
        sampled = self._sampler.stop() - self.baseline_bytes
        maxrss = _maxrss_bytes()
        if maxrss > self._maxrss0:  # the work set a new high for the process: ru_maxrss saw all of it
            self.peak_bytes, self.method = max(maxrss - self.baseline_bytes, sampled), MAXRSS_METHOD
        else:
            self.peak_bytes, self.method = max(0, sampled), SAMPLED_METHOD
