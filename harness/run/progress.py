"""What a training run prints while it trains: a progress bar on a terminal, plain lines otherwise.

The plain lines (a pipeline job's log) are the trainer's own (one per evaluation, ``Log.line``) and a progress
line each time another tenth of the planned steps is done, at most one per ``MIN_INTERVAL_S`` seconds:
``step 120/300 (40%)  elapsed 0:42  ETA 1:03``. Elapsed is the time since the ``Log`` was made (the run's
start); the ETA is the steps left at the rate of the steps so far, evaluations included, counted from the
first step (a resumed run's: from its first step in this process). Under a seconds budget the planned steps
are its upper bound, and the ETA an upper bound with them."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import NoReturn

from tqdm import tqdm

#: a progress line each time another this share of the planned steps is done
EVERY = 0.1
#: and never more often than this
MIN_INTERVAL_S = 3.0


def clock(seconds: float) -> str:
    """An elapsed time or an ETA: ``2:05``, ``1:02:05``."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Log:
    """A progress bar on a terminal, plain lines otherwise. ``now``: the clock (seconds), for tests."""

    def __init__(self, total: int, desc: str, bar: bool | None = None,
                 now: Callable[[], float] = time.perf_counter) -> None:
        self.bar: tqdm[NoReturn] | None = None
        if bar if bar is not None else sys.stderr.isatty():
            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True)
        self.steps, self.done, self.now = total, 0, now
        self.started = now()
        self.first: tuple[float, int] | None = None  # (time, steps done) at the first step: where the rate counts from
        self.next_mark = self.mark_after(0)
        self.last_line = -MIN_INTERVAL_S

    def mark_after(self, done: int) -> int:
        """The next step count at which a progress line is due: the next whole tenth of the steps above ``done``."""
        tenth = max(1, round(self.steps * EVERY))
        return (done // tenth + 1) * tenth

    def step(self, n: int = 1, **postfix: str) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            return
        if n <= 0:
            return
        self.done += n
        t = self.now()
        if self.first is None:
            self.first = (t, self.done)
            self.next_mark = self.mark_after(self.done)
            return
        if self.done >= self.next_mark and t - self.last_line >= MIN_INTERVAL_S:
            self.next_mark, self.last_line = self.mark_after(self.done), t
            print(self.progress(t), flush=True)

    def progress(self, t: float) -> str:
        """``step 120/300 (40%)  elapsed 0:42  ETA 1:03``."""
        assert self.first is not None  # set by the first step, before any line
        rate = (t - self.first[0]) / max(1, self.done - self.first[1])
        left = max(0, self.steps - self.done)
        return (f"step {self.done}/{self.steps} ({100 * self.done / max(1, self.steps):.0f}%)  "
                f"elapsed {clock(t - self.started)}  ETA {clock(rate * left)}")

    def total(self, steps: int) -> None:
        """The steps the run plans, known once its budget is (a FLOPs budget's after the count)."""
        self.steps = steps
        self.next_mark = self.mark_after(self.done)
        if self.bar is not None:
            self.bar.total = steps
            self.bar.refresh()

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
