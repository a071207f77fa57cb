"""A time limit enforced inside a piece of work, not only between its steps.

``with Deadline(seconds, what) as limit: work()``, then ``limit.expired``. A watchdog thread ends the
work in two stages:

1. at the limit it raises ``Expired`` in the main thread, through a SIGALRM sent to that thread: Python
   code that loops or sleeps (an attention whose forward never returns) is interrupted at once, a
   torch operation when it returns. ``Expired`` is a ``BaseException``, so ``except Exception`` in the
   work does not swallow it; the block's end catches it and sets ``expired``. Whatever the work was
   doing is abandoned part-way (its ``finally`` blocks run): the caller treats that part as not done.
   Work that must not be left half done runs in ``uninterrupted()``, which ``interruptible()`` opens again
   for the parts that may be dropped: a limit reached where the work is not interruptible interrupts
   nothing, and the work checks ``fired`` itself once it can stop cleanly. The training loop holds each
   step uninterrupted but its forward and backward passes, so that a step is either whole (weights
   updated, loss noted) or not done at all.
2. ``grace_s`` later, if the block still has not ended (one native call that never returns, or code
   that catches every exception), the thread calls ``on_stuck()`` (what can be said or written without
   the main thread), prints one line on stderr and ends the process with ``os._exit(STUCK_EXIT)``.
   A native call that holds the GIL cannot be ended from inside the process at all.

Used by the training loop (``train.time_limit_min``), each check of ``attnbench check-variant`` and the
timing of each case of the efficiency sweep (``bench.time_cap_s``). Stage 1 needs the main thread (the
only one Python runs signal handlers in); elsewhere only stage 2 applies.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType

#: the exit status of a process ended by stage 2
STUCK_EXIT = 3
#: seconds between the limit and stage 2, unless a caller gives its own
GRACE_S = 60.0


class Expired(BaseException):
    """The time limit of a ``Deadline`` ran out while its block was running."""


_held = 0  # how deep the main thread is in uninterrupted() (0 within interruptible())


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Within the block, stage 1 of a deadline interrupts nothing (stage 2 still applies) but inside an
    ``interruptible()`` block; the work looks at the deadline's ``fired`` when it can stop."""
    global _held
    _held += 1
    try:
        yield
    finally:
        _held -= 1


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, stage 1 interrupts the work again, even inside ``uninterrupted()``."""
    global _held
    held, _held = _held, 0
    try:
        yield
    finally:
        _held = held


class Deadline:
    """A time limit of ``seconds`` (None or 0: none) on the ``with`` block; see the module docstring.
    ``what`` names the work in stage 2's line; ``exit_code``: the status stage 2 exits with."""

    def __init__(self, seconds: float | None, what: str, *, grace_s: float = GRACE_S,
                 on_stuck: Callable[[], None] | None = None, exit_code: int = STUCK_EXIT) -> None:
        self.seconds, self.what, self.grace_s = seconds, what, grace_s
        self.on_stuck, self.exit_code = on_stuck, exit_code
        self.expired = False
        self._armed = False  # from the block's start to its end: only then is the work interrupted
        self._fired = False  # stage 1 happened
        self._raised: Expired | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: signal.Handlers | Callable[[int, FrameType | None], object] | int | None = None
        self._main = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> Deadline:
        if not self.seconds or self.seconds <= 0:
            return self
        if self._main:
            self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
        self._armed = True
        self._thread = threading.Thread(target=self._watch, name=f"deadline: {self.what}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if self._thread is None:
            return False
        self._armed = False  # first: an alarm handled from here on raises nothing
        self._done.set()
        self._thread.join()
        if self._main:
            signal.signal(signal.SIGALRM, self._previous if self._previous is not None else signal.SIG_DFL)
        if exc is not None and exc is self._raised:
            self.expired = True
            return True
        return False

    @property
    def fired(self) -> bool:
        """Whether the limit has been reached (stage 1 happened, whether or not it interrupted the work)."""
        return self._fired

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        # an alarm handled as the block ends (in __exit__, before it disarms) is too late to stop anything
        if self._armed and self._fired and self._raised is None and not _held:
            assert frame is not None  # a Python handler runs between two bytecodes of the main thread's frame
            if frame.f_code is not _EXIT_CODE:
                self._raised = Expired(f"{self.what}: time limit of {self.seconds:g} s")
                raise self._raised

    def _watch(self) -> None:
        if self._done.wait(self.seconds) or not self._armed:
            return
        self._fired = True
        if self._main:
            main_id = threading.main_thread().ident
            assert main_id is not None  # the main thread is running: it started this one
            signal.pthread_kill(main_id, signal.SIGALRM)
        if self._done.wait(self.grace_s) or not self._armed:
            return
        try:
            if self.on_stuck is not None:
                self.on_stuck()
        finally:
            print(f"attnbench: {self.what} did not stop within {self.grace_s:g} s of its time limit of "
                  f"{self.seconds:g} s (stuck in one call that cannot be interrupted); ended the process",
                  file=sys.stderr, flush=True)
            os._exit(self.exit_code)


_EXIT_CODE = Deadline.__exit__.__code__
