"""Durations as the estimate and the progress lines print them: ``duration`` (an expected time, rounded) and
``clock`` (an elapsed time or an ETA, ``2:05``: the training runs' own, ``harness.run.progress.clock``). No
torch: the progress command imports this."""
from __future__ import annotations

from attnbench.harness.run.progress import clock

__all__ = ["clock", "duration"]


def duration(seconds: float) -> str:
    """An expected time, rounded: ``~45 s``, ``~6 min``, ``~2 h 05 min``."""
    if seconds < 90:
        return f"~{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"~{minutes} min" if minutes < 90 else f"~{minutes // 60} h {minutes % 60:02d} min"
