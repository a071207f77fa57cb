"""Stopping on a signal: every process the harness starts stops with it.

``stop_on_signals()`` is what every ``attnbench`` command runs under (``cli.main``). A SIGTERM, SIGINT
(Ctrl-C) or SIGHUP is passed on as SIGTERM to every process this one started (and those they started),
then raised here as ``Stopped``, a ``KeyboardInterrupt``: ``finally`` blocks and context managers run (a
child process being waited for is killed and reaped, a temporary folder removed, a lock released), and
``except Exception`` does not catch it, so a run it stops writes no record (its resume checkpoint stays).
``cli.main`` prints one line and exits with 128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM. A
process inside one long native call (a torch operation) stops when that call returns.

``python -m attnbench.harness.core.signals CMD ARG...`` (``make run``, ``make test``, ``make gpu-check``) runs
CMD in a process group of its own and turns a SIGTERM, SIGINT or SIGHUP to itself into a SIGINT to that whole
group, what Ctrl-C in a terminal sends: snakemake then cancels its jobs, and each job (``attnbench train``)
stops on it. Snakemake takes a SIGTERM as "finish the running jobs first", which can take hours, so it never
gets one from here.
Whatever of the group still runs ``STOP_GRACE_S`` later, or once CMD has ended, is killed (SIGKILL).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from types import FrameType

import psutil

#: the signals that stop a command
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: seconds ``run_in_own_group`` gives its command's group to stop after a SIGINT, before killing it
STOP_GRACE_S = 10.0


class Stopped(KeyboardInterrupt):
    """The command was stopped by signal ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(exc: KeyboardInterrupt) -> int:
    """The exit status of a command stopped by ``exc``: 128 + the signal's number (a bare
    KeyboardInterrupt is Ctrl-C: 130)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def describe(exc: KeyboardInterrupt) -> str:
    """What stopped the command, in a word or two: ``interrupted`` (Ctrl-C) or ``stopped by SIGTERM``."""
    signum = getattr(exc, "signum", signal.SIGINT)
    return "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def descendants() -> set[psutil.Process]:
    """Every process this one started, and those they started, running now (a process is its id and start
    time: an id given again to a new process is another process)."""
    return set(_descendants())


def stop_descendants(sig: int = signal.SIGTERM, keep: AbstractSet[psutil.Process] = frozenset()) -> None:
    """Send ``sig`` to every process this one started, and to those they started, but those in ``keep``
    (``descendants()`` taken before some work: what that work started is stopped)."""
    for child in _descendants():
        if child not in keep:
            with contextlib.suppress(psutil.Error):
                child.send_signal(sig)


def _stop(signum: int, frame: FrameType | None) -> None:
    stop_descendants()
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, a stop signal stops this process's descendants and raises ``Stopped`` here.
    A signal ignored when the block starts (``nohup``, a background job's SIGINT) stays ignored; the
    previous handlers come back at its end. Outside the main thread (where Python runs no signal handler)
    it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        for sig, handler in previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(sig, _stop)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_in_own_group(cmd: list[str], grace_s: float = STOP_GRACE_S, poll_s: float = 0.1) -> int:
    """Run ``cmd`` in a new session (its own process group) and return its exit status (128 + the signal's
    number when a signal ended it); a stop signal to this process becomes a SIGINT to the group, and what is
    left of the group ``grace_s`` later, or when ``cmd`` ends, is killed."""
    received: list[int] = []
    for sig in STOP_SIGNALS:  # before the command starts: a signal in between is passed on all the same
        signal.signal(sig, lambda signum, frame: received.append(signum))
    proc = subprocess.Popen(cmd, start_new_session=True)
    stopped_at = None
    # waited for without reaping: until it is reaped, its pid (the group's id) cannot be given to another process
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if received and stopped_at is None:
            stopped_at = time.monotonic()
            print(f"{os.path.basename(cmd[0])}: {signal.Signals(received[0]).name} received; stopping it and what "
                  f"it started as Ctrl-C does, killing what is left in {grace_s:g} s", file=sys.stderr, flush=True)
            _kill_group(proc.pid, signal.SIGINT)
        elif stopped_at is not None and time.monotonic() - stopped_at > grace_s:
            _kill_group(proc.pid, signal.SIGKILL)
        time.sleep(poll_s)
    _kill_group(proc.pid, signal.SIGKILL)  # what it left behind: nothing waits for it any more
    rc = proc.wait()
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m attnbench.harness.core.signals CMD [ARG...]")
    sys.exit(run_in_own_group(sys.argv[1:]))
