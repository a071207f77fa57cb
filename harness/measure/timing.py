"""Wall time around work, honest on a GPU: the device is synchronised before the clock starts
and before it stops, so queued kernels are counted where they ran."""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulates the durations of timed sections; ``time()`` synchronises the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.durations: list[float] = []

    @contextmanager
    def time(self) -> Iterator[None]:
        synchronize(self.device)
        t0 = time.perf_counter()
        yield
        synchronize(self.device)
        self.durations.append(time.perf_counter() - t0)

    def median(self, skip: int = 0) -> float | None:
        kept = self.durations[skip:] or self.durations
        return statistics.median(kept) if kept else None


class LazyStepTimer:
    """Times sections without stalling the host, for a training loop that must not synchronise.

    CPU: ``time.perf_counter`` around the section (CPU work runs as it is issued, so the clock
    is honest without any synchronisation). CUDA: a pair of CUDA events recorded in the current
    stream before and after the section; the time between them is read only when ``durations``
    is asked for (at evaluation, or at the end), on the GPU's own clock. It includes any gap
    while the GPU waited for the host to launch the section's kernels, so a host-bound step is
    counted at its real length, and excludes nothing the step queued.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._done: list[float] = []
        self._pending: list[tuple] = []

    @property
    def method(self) -> str:
        if self.device.type == "cuda":
            return ("CUDA events before and after each step, read lazily (no synchronisation in the loop): "
                    "GPU time from the step's start to its last kernel, idle gaps included")
        return "time.perf_counter around each step"

    @contextmanager
    def time(self) -> Iterator[None]:
        if self.device.type != "cuda":
            t0 = time.perf_counter()
            yield
            self._done.append(time.perf_counter() - t0)
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self._pending.append((start, end))

    @property
    def durations(self) -> list[float]:
        """Every timed section's seconds (reading them waits for the last pending one to finish)."""
        if self._pending:
            self._pending[-1][1].synchronize()
            self._done.extend(s.elapsed_time(e) / 1000.0 for s, e in self._pending)
            self._pending.clear()
        return self._done

    def median(self, skip: int = 0) -> float | None:
        kept = self.durations[skip:] or self.durations
        return statistics.median(kept) if kept else None
