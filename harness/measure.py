"""Measuring honestly: wall time around work (synchronised on GPU) and peak memory.

Peak memory on GPU is the allocator's peak after a reset (reserved reported too); on CPU
it is the peak resident set size of this process, sampled by a background thread, minus
the resident size when measuring began (the job runs in a fresh process, so this is the
memory the measured work added).
"""
from __future__ import annotations

import gc
import resource
import statistics
import threading
import time
from contextlib import contextmanager

import psutil
import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulates the durations of timed sections; ``time()`` synchronises the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.durations: list[float] = []

    @contextmanager
    def time(self):
        synchronize(self.device)
        t0 = time.perf_counter()
        yield
        synchronize(self.device)
        self.durations.append(time.perf_counter() - t0)

    def median(self, skip: int = 0) -> float | None:
        kept = self.durations[skip:] or self.durations
        return statistics.median(kept) if kept else None


class PeakMemory:
    """Context manager measuring the peak memory added by the enclosed work."""

    def __init__(self, device: torch.device, interval_s: float = 0.002):
        self.device = device
        self.interval_s = interval_s
        self.peak_bytes: int | None = None
        self.reserved_bytes: int | None = None
        self.baseline_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._max_rss = 0

    @property
    def method(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated after reset_peak_memory_stats (reserved reported separately)"
        return (f"peak process RSS sampled every {self.interval_s * 1000:g} ms (psutil) during the work, "
                "minus the RSS when measuring began; fresh process per job")

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self._max_rss = max(self._max_rss, proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self.baseline_bytes = psutil.Process().memory_info().rss
            self._max_rss = self.baseline_bytes
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self.baseline_bytes
            self.reserved_bytes = torch.cuda.max_memory_reserved(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self._max_rss = max(self._max_rss, psutil.Process().memory_info().rss)
            self.peak_bytes = self._max_rss - self.baseline_bytes


MIB = 2 ** 20


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


class CpuPeak:
    """Peak RSS above the RSS at entry: exact via a reset ``VmHWM`` where Linux allows it, else the
    growth of ``ru_maxrss`` when the work set a new high-water mark, else a sampler thread."""

    def __init__(self):
        self._sampler = PeakMemory(torch.device("cpu"))
        self.peak_bytes: int | None = None
        self.method = ""

    def __enter__(self) -> "CpuPeak":
        gc.collect()
        self._maxrss0 = _maxrss_bytes()
        self._hwm_ok = _reset_hwm()
        self._sampler.__enter__()
        self.baseline = self._sampler.baseline_bytes
        return self

    def __exit__(self, *exc) -> None:
        self._sampler.__exit__(*exc)
        sampled = self._sampler.peak_bytes
        hwm, maxrss = _vm_hwm_bytes(), _maxrss_bytes()
        if self._hwm_ok and hwm is not None:
            self.peak_bytes, self.method = max(hwm - self.baseline, sampled), "VmHWM (reset at start) minus RSS at start"
        elif maxrss > self._maxrss0:
            self.peak_bytes, self.method = max(maxrss - self.baseline, sampled), "ru_maxrss minus RSS at start"
        else:
            self.peak_bytes, self.method = sampled, self._sampler.method
        self.sampled_bytes = sampled
