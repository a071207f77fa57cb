"""One side of a comparison measured (``SideResult``: ours or a peer), and what ``attnbench compare``
makes of a side's runs: rounds pooled, the live-memory run's figures, the achieved rate."""
from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping
from typing import Any

from attnbench.harness.compare.probe import LIVE_MEMORY_METHOD
from attnbench.harness.measure.matmul_peak import share_of_peak

#: the worker's figures a ``SideResult`` reads (and may replace) from its record
_READ = ("ok", "error", "label", "times_s", "median_s", "min_s", "max_s", "peak_bytes", "peak_all_bytes",
         "process_wall_s", "flops_fwd")
#: what each round of a pooled result keeps
_ROUND_KEYS = ("median_s", "min_s", "max_s", "peak_bytes", "peak_all_bytes", "loadavg")
#: a forward+backward step's FLOPs, estimated from the forward's: backward costs about twice the forward
#: (a gradient for each input and each weight of every matmul)
STEP_FLOPS_PER_FORWARD = 3


@dataclasses.dataclass(frozen=True)
class SideResult:
    """One implementation measured: a worker's result (``probe.measure_in_process``, or the failure that
    ``probe.run_worker`` returns), or its rounds pooled, with what compare derives from it.

    ``record`` is the worker's JSON as it came, written out as it is (label, parameter count, warm-up
    times, peak method, memory before, load average, traceback, ...). The fields are the figures compare
    reads; those it replaces (pooled rounds, the live-memory run's peaks) are written over the record's,
    and those it adds (``rounds`` on, ``None``/``False``: not added) after them."""

    record: Mapping[str, Any]
    ok: bool
    error: str | None = None
    label: str | None = None
    times_s: tuple[float, ...] = ()
    median_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    peak_bytes: int | None = None
    peak_all_bytes: int | None = None
    process_wall_s: float | None = None
    flops_fwd: int | None = None
    # added by compare
    rounds: tuple[dict[str, Any], ...] | None = None  # each round's figures, when rounds were pooled
    peak_bytes_default_malloc: int | None = None  # the timing runs' peaks, when a live-memory run replaced them
    peak_all_bytes_default_malloc: int | None = None
    memory_method: str | None = None
    gflops: float | None = None  # achieved, and its share of the machine's matmul rate
    peak_share: float | None = None
    shared: bool = False  # ours measured once for several cases: this case reuses it

    @classmethod
    def from_worker(cls, record: Mapping[str, Any]) -> SideResult:
        read = {k: record[k] for k in _READ if k in record}
        read["ok"] = bool(read.get("ok"))
        if "times_s" in read:
            read["times_s"] = tuple(read["times_s"])
        return cls(record=dict(record), **read)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.record)
        for key in _READ:  # over the record's, or after them where compare set one the record lacks
            value = getattr(self, key)
            if key in out or value not in (None, ()):
                out[key] = list(value) if key == "times_s" else value
        if self.rounds is not None:
            out["rounds"] = list(self.rounds)
        if self.peak_bytes_default_malloc is not None:
            out["peak_bytes_default_malloc"] = self.peak_bytes_default_malloc
            out["peak_all_bytes_default_malloc"] = self.peak_all_bytes_default_malloc
        if self.memory_method is not None:
            out["memory_method"] = self.memory_method
        if self.gflops is not None:
            out["gflops"], out["peak_share"] = self.gflops, self.peak_share
        if self.shared:
            out["shared"] = True
        return out


def _known(value: int | None, what: str) -> int:
    """A figure every successful worker result has."""
    if value is None:
        raise ValueError(f"a successful measurement without {what}")
    return value


def pool_rounds(runs: list[SideResult]) -> SideResult:
    """One result from the rounds of one implementation: all timed steps pooled (median, min, max),
    the median of the rounds' peaks; the first failure, if any round failed."""
    failed = [r for r in runs if not r.ok]
    if failed or len(runs) == 1:
        return failed[0] if failed else runs[0]
    times = [t for r in runs for t in r.times_s]
    return dataclasses.replace(
        runs[0], times_s=tuple(times), median_s=statistics.median(times), min_s=min(times), max_s=max(times),
        peak_bytes=int(statistics.median(_known(r.peak_bytes, "peak_bytes") for r in runs)),
        peak_all_bytes=int(statistics.median(_known(r.peak_all_bytes, "peak_all_bytes") for r in runs)),
        process_wall_s=sum(r.process_wall_s or 0.0 for r in runs),
        rounds=tuple({k: r.to_json().get(k) for k in _ROUND_KEYS} for r in runs))


def with_live_memory(side: SideResult, live: SideResult) -> SideResult:
    """A side with its live-memory run's memory figures (repeatable); the timing runs' figures, under
    glibc's default allocator, stay beside them as ``*_default_malloc``."""
    if not side.ok:
        return side
    kept = dataclasses.replace(side, peak_bytes_default_malloc=side.peak_bytes,
                               peak_all_bytes_default_malloc=side.peak_all_bytes)
    if not live.ok:
        return dataclasses.replace(kept, memory_method="timing runs, glibc's default allocator (the live-memory "
                                                       f"run failed: {live.error or '?'})")
    return dataclasses.replace(kept, peak_bytes=live.peak_bytes, peak_all_bytes=live.peak_all_bytes,
                               memory_method=LIVE_MEMORY_METHOD)


def with_rate(side: SideResult, flops_fwd: int | None, matmul_gflops: float | None) -> SideResult:
    """A side with its achieved GFLOP/s and their share of the machine's matmul rate: FLOPs of a fwd+bwd
    step = 3x our layer's analytic forward FLOPs (the same mechanism and settings for the peer: both are
    credited with the work the mechanism needs, whatever they spend)."""
    if not side.ok or not flops_fwd or not side.median_s:
        return side
    gflops = STEP_FLOPS_PER_FORWARD * flops_fwd / side.median_s / 1e9
    return dataclasses.replace(side, gflops=gflops, peak_share=share_of_peak(gflops, matmul_gflops))
