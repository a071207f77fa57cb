"""A per-process GPU lease for jobs on a multi-GPU workstation.

Snakemake's ``resources: gpu=1`` caps how many GPU jobs run at once but does not say which
GPU each one gets. Each job therefore leases one itself: it takes a non-blocking exclusive
``flock`` on one of N node-local lock files, the first free one in order, and sets
``CUDA_VISIBLE_DEVICES`` to that GPU.

Why ``flock``: the kernel drops the lock when the last descriptor on it is closed, so a job
that crashes or is SIGKILLed frees its GPU without any clean-up, and a stale lock file is
harmless (the files are never unlinked; the pid written into them is informational only).

Why before CUDA: the CUDA driver reads ``CUDA_VISIBLE_DEVICES`` once, when it is
initialised; a change after that has no effect. So ``acquire`` must run before anything
touches ``torch.cuda``, and it counts GPUs with ``nvidia-smi -L`` rather than torch.

Where the lock files live (``attnbench.harness.core.locks`` makes and opens them):

- by default in a folder private to this user: ``$XDG_RUNTIME_DIR/attnbench-gpu-locks`` when
  XDG_RUNTIME_DIR is set and is a folder this user owns, else ``/tmp/attnbench-gpu-locks-<uid>``.
  Either is created with mode 0700, and an existing one is refused unless it is a real folder (not a
  symbolic link) owned by this user and writable by no one else: whoever could create or write the
  folder could hold every GPU, or plant a link that makes a job overwrite a file. Every job of one
  user on one machine must see the same choice: a job started where XDG_RUNTIME_DIR is set and one
  started where it is not (cron, some batch shells) use different folders and do not exclude each
  other; set ATTNBENCH_LOCK_DIR to make them agree.
- ``ATTNBENCH_LOCK_DIR`` (or ``acquire(lock_dir=...)``) names a folder explicitly, e.g. one a team
  shares: it is created if missing and used as it is (no ownership or mode check: who may write it is
  its owners' choice). Lock files created there get mode 0666 less the umask, so a team with umask 002
  can all record themselves in them; a member who cannot write a file still locks it (read-only;
  the file then still names its previous holder).

In every folder a lock file is opened without following a symbolic link (``O_NOFOLLOW``) and must be
a regular file: a link ``gpu0.lock -> somefile`` is refused with ``LockFileError`` naming it (the lease
stops rather than skipping that GPU, which would leave it idle unnoticed). The holder's pid, host and
start time are written into the file as one JSON line (``locks.lock_owner`` reads it back).

How long to wait: while every GPU is leased, ``acquire`` waits, at most
``$ATTNBENCH_GPU_LEASE_TIMEOUT`` seconds (default 3600; ``0`` or ``none`` waits forever) unless
``timeout`` is passed; then ``GpuLeaseTimeout`` says which jobs hold the GPUs.

``python -m attnbench.harness.measure.gpu_lease --hold SECONDS`` acquires, prints one JSON line and sleeps: a
job stand-in for tests.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

from attnbench.harness.core import locks
from attnbench.harness.core.errors import UserError
from attnbench.harness.core.locks import LockFileError

POLL_S = 0.5
#: How long ``acquire`` waits for a GPU when neither ``timeout`` nor $ATTNBENCH_GPU_LEASE_TIMEOUT says.
DEFAULT_TIMEOUT_S = 3600.0
TIMEOUT_ENV = "ATTNBENCH_GPU_LEASE_TIMEOUT"

# The open lock descriptor and the lease, kept for the life of the process: closing the
# descriptor (or the process dying) releases the GPU.
_held: dict = {}


class GpuLeaseTimeout(UserError, RuntimeError):
    """Every GPU stayed leased for longer than the timeout."""


class GpuLeaseSettingError(UserError, ValueError):
    """An environment variable of the lease that cannot be read (e.g. a timeout that is not a number)."""


def _private_default_dir() -> Path:
    """$XDG_RUNTIME_DIR/attnbench-gpu-locks if XDG_RUNTIME_DIR is a folder this user owns, else
    /tmp/attnbench-gpu-locks-<uid> (neither created nor checked here: ``private_dir`` does that)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        try:
            st = os.stat(xdg)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            return Path(xdg) / "attnbench-gpu-locks"
    return Path(f"/tmp/attnbench-gpu-locks-{os.getuid()}")


def default_lock_dir() -> Path:
    """$ATTNBENCH_LOCK_DIR if set, else this user's private default (see the module docstring)."""
    return Path(os.environ.get("ATTNBENCH_LOCK_DIR") or _private_default_dir())


def _prepare_lock_dir(lock_dir: str | Path | None) -> tuple[Path, bool]:
    """The lock folder, made ready, and whether it is private (lock files 0600) rather than explicit."""
    explicit = lock_dir if lock_dir is not None else os.environ.get("ATTNBENCH_LOCK_DIR")
    if explicit:
        path = Path(explicit)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LockFileError(f"gpu lease: cannot create the lock folder {path} ({exc.strerror or exc}); "
                                f"create it or point ATTNBENCH_LOCK_DIR elsewhere") from None
        return path, False
    try:
        return locks.private_dir(_private_default_dir()), True
    except LockFileError as exc:
        raise LockFileError(f"gpu lease: {exc} (or set ATTNBENCH_LOCK_DIR to a folder of your choice)") from None


def lease_timeout(timeout: float | None = None) -> float | None:
    """The wait limit in seconds (None: forever): ``timeout`` if given (a number; inf waits forever),
    else $ATTNBENCH_GPU_LEASE_TIMEOUT (``0`` or ``none``: forever), else ``DEFAULT_TIMEOUT_S``."""
    if timeout is None:
        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        if not raw:
            return DEFAULT_TIMEOUT_S
        if raw.lower() in ("none", "inf", "infinity"):
            return None
        try:
            timeout = float(raw)
        except ValueError:
            timeout = math.nan
        if math.isnan(timeout) or timeout < 0:
            raise GpuLeaseSettingError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds; set it to how long a "
                                       f"job may wait for a GPU (e.g. 3600), or to 0 or none to wait forever")
        return None if timeout == 0 or math.isinf(timeout) else timeout
    timeout = float(timeout)
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"gpu lease: timeout={timeout!r} must be a number of seconds >= 0")
    return None if math.isinf(timeout) else timeout


def _holders(paths: list[Path]) -> str:
    """Who holds each lock file, as recorded in it: "gpu0.lock held by pid N on host H since T; ..."."""
    return "; ".join(f"{p.name} held by {locks.describe_owner(locks.lock_owner(p))}" for p in paths)


def gpu_count() -> int:
    """$ATTNBENCH_GPUS if set, else the GPUs listed by ``nvidia-smi -L``, else 0 (never torch)."""
    env = os.environ.get("ATTNBENCH_GPUS")
    if env is not None and env.strip() != "":
        try:
            return max(0, int(env))
        except ValueError:
            raise ValueError(f"ATTNBENCH_GPUS={env!r} is not an integer") from None
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    # One "GPU i: ..." line per device (MIG instances are indented "MIG ..." lines under it).
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def _visible() -> list[str] | None:
    """The ids in an existing CUDA_VISIBLE_DEVICES ("2,5" -> ["2", "5"]), or None if unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def step_aside_reason(device: str, n_gpus: int) -> str | None:
    """Why no lease is taken for this device and count, or None if one should be."""
    if os.environ.get("SLURM_JOB_ID"):
        return "SLURM job: SLURM assigns the devices itself"
    if device not in ("cuda", "auto"):
        return f"device {device!r} needs no GPU lease"
    if n_gpus <= 0:
        return "no GPUs (ATTNBENCH_GPUS unset or 0 and nvidia-smi -L lists none)"
    return None


def acquire(device: str, *, n_gpus: int | None = None, lock_dir: str | Path | None = None,
            timeout: float | None = None) -> dict | None:
    """Lease one GPU for this process and point CUDA_VISIBLE_DEVICES at it.

    Returns a JSON-serialisable dict (index, cuda_visible_devices, lock_file, lock_dir,
    n_gpus, pid, waited_s, timeout_s), or None when stepping aside (see ``step_aside_reason``).
    Waits, polling every 0.5 s, while all N are leased; ``timeout`` (seconds; 0: do not wait;
    ``math.inf``: forever; default $ATTNBENCH_GPU_LEASE_TIMEOUT, else ``DEFAULT_TIMEOUT_S``) ends
    the wait with GpuLeaseTimeout; timeout_s is None when waiting forever. A lock file that is a
    symbolic link or not a regular file, or an unsafe default lock folder, raises LockFileError.
    Calling it again in a process that holds a lease returns that lease.
    """
    if _held:
        return dict(_held["lease"])
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # is_initialized() does not initialise
        raise RuntimeError("gpu lease: CUDA is already initialised; acquire() must run before torch.cuda")
    if step_aside_reason(device, 1):  # SLURM or a CPU run: decided before counting GPUs
        return None
    visible = _visible()
    n = gpu_count() if n_gpus is None else n_gpus
    if visible is not None:  # an existing list narrows the choice to its entries
        n = min(n, len(visible))
    if step_aside_reason(device, n):
        return None
    timeout = lease_timeout(timeout)
    lock_dir, private = _prepare_lock_dir(lock_dir)
    mode = 0o600 if private else 0o666  # a shared folder's files: what its users' umask allows
    ids = visible[:n] if visible is not None else [str(i) for i in range(n)]
    # Lock on the physical id, so jobs with different CUDA_VISIBLE_DEVICES lists (or none)
    # sharing this lock dir still never share a GPU; without a list, gpu<i>.lock.
    paths = [lock_dir / f"gpu{re.sub(r'[^A-Za-z0-9_.-]', '_', dev)}.lock" for dev in ids]
    t0 = time.monotonic()
    announced = False
    while True:
        for i, (dev, path) in enumerate(zip(ids, paths, strict=True)):
            fd = locks.try_lock(path, info={"cuda_visible_devices": dev}, mode=mode)
            if fd is not None:
                lease = {"index": i, "cuda_visible_devices": dev, "lock_file": str(path),
                         "lock_dir": str(lock_dir), "n_gpus": n, "pid": os.getpid(),
                         "waited_s": round(time.monotonic() - t0, 3), "timeout_s": timeout}
                _held.update(fd=fd, lease=lease, previous=os.environ.get("CUDA_VISIBLE_DEVICES"))
                os.environ["CUDA_VISIBLE_DEVICES"] = dev
                return dict(lease)
        waited = time.monotonic() - t0
        if timeout is not None and waited >= timeout:
            raise GpuLeaseTimeout(
                f"gpu lease: all {n} GPUs stayed leased for {waited:.1f} s, past the timeout of {timeout:g} s "
                f"(set {TIMEOUT_ENV}=SECONDS to wait longer, 0 or none to wait forever); lock files in "
                f"{lock_dir}: {_holders(paths)}. Wait for those jobs to finish or stop them, or run fewer "
                f"GPU jobs at once")
        if not announced:
            limit = "forever" if timeout is None else f"up to {timeout:g} s ({TIMEOUT_ENV})"
            print(f"gpu lease: all {n} GPUs are leased (lock dir {lock_dir}: {_holders(paths)}); "
                  f"waiting {limit} for one to free", file=sys.stderr, flush=True)
            announced = True
        time.sleep(POLL_S if timeout is None else max(0.0, min(POLL_S, timeout - waited)))


def current() -> dict | None:
    """The lease this process holds (what ``acquire`` returned), or None."""
    return dict(_held["lease"]) if _held else None


def release() -> None:
    """Give the lease back early and restore CUDA_VISIBLE_DEVICES (process exit does the same)."""
    if not _held:
        return
    locks.release(_held["fd"])
    if _held["previous"] is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = _held["previous"]
    _held.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnbench.harness.measure.gpu_lease",
                                     description="Lease a GPU, print it as JSON and hold it (a job stand-in).")
    parser.add_argument("--hold", type=float, required=True, metavar="SECONDS")
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    args = parser.parse_args(argv)
    try:
        lease = acquire(args.device, timeout=args.timeout)
    except GpuLeaseTimeout as e:
        print(e, file=sys.stderr, flush=True)
        return 3
    except UserError as e:  # an unsafe lock folder or file, an unreadable setting
        print(e, file=sys.stderr, flush=True)
        return 2
    print(json.dumps({"lease": lease, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                      "pid": os.getpid()}), flush=True)
    time.sleep(args.hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
