"""Wall time around work, honest on a GPU: the device is synchronised before the clock starts
and before it stops, so queued kernels are counted where they ran."""
from __future__ import annotations

import statistics
import time
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
    def time(self):
        synchronize(self.device)
        t0 = time.perf_counter()
        yield
        synchronize(self.device)
        self.durations.append(time.perf_counter() - t0)

    def median(self, skip: int = 0) -> float | None:
        kept = self.durations[skip:] or self.durations
        return statistics.median(kept) if kept else None
