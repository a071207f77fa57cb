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

``python -m attnbench.harness.measure.gpu_lease --hold SECONDS`` acquires, prints one JSON line and sleeps: a
job stand-in for tests.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5

# The open lock descriptor and the lease, kept for the life of the process: closing the
# descriptor (or the process dying) releases the GPU.
_held: dict = {}


class GpuLeaseTimeout(RuntimeError):
    """Every GPU stayed leased for longer than the timeout."""


def default_lock_dir() -> Path:
    return Path(os.environ.get("ATTNBENCH_LOCK_DIR") or f"/tmp/attnbench-gpu-locks-{os.getuid()}")


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


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # O_CLOEXEC by default (PEP 446)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def acquire(device: str, *, n_gpus: int | None = None, lock_dir: str | Path | None = None,
            timeout: float | None = None) -> dict | None:
    """Lease one GPU for this process and point CUDA_VISIBLE_DEVICES at it.

    Returns a JSON-serialisable dict (index, cuda_visible_devices, lock_file, lock_dir,
    n_gpus, waited_s), or None when stepping aside (see ``step_aside_reason``). Waits,
    polling every 0.5 s, while all N are leased; ``timeout`` (seconds, default
    $ATTNBENCH_GPU_LEASE_TIMEOUT or unlimited) ends the wait with GpuLeaseTimeout.
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
    if timeout is None and os.environ.get("ATTNBENCH_GPU_LEASE_TIMEOUT"):
        timeout = float(os.environ["ATTNBENCH_GPU_LEASE_TIMEOUT"])
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    ids = visible[:n] if visible is not None else [str(i) for i in range(n)]
    t0 = time.monotonic()
    announced = False
    while True:
        for i, dev in enumerate(ids):
            # Lock on the physical id, so jobs with different CUDA_VISIBLE_DEVICES lists (or
            # none) sharing this lock dir still never share a GPU; without a list, gpu<i>.lock.
            path = lock_dir / f"gpu{re.sub(r'[^A-Za-z0-9_.-]', '_', dev)}.lock"
            fd = _try_lock(path)
            if fd is not None:
                lease = {"index": i, "cuda_visible_devices": dev, "lock_file": str(path),
                         "lock_dir": str(lock_dir), "n_gpus": n, "pid": os.getpid(),
                         "waited_s": round(time.monotonic() - t0, 3)}
                _held.update(fd=fd, lease=lease, previous=os.environ.get("CUDA_VISIBLE_DEVICES"))
                os.environ["CUDA_VISIBLE_DEVICES"] = dev
                return dict(lease)
        waited = time.monotonic() - t0
        if timeout is not None and waited >= timeout:
            raise GpuLeaseTimeout(f"gpu lease: all {n} GPUs stayed leased for {waited:.1f} s "
                                  f"(timeout {timeout} s; lock files gpu*.lock in {lock_dir})")
        if not announced:
            print(f"gpu lease: all {n} GPUs are leased (lock dir {lock_dir}); waiting for one to free",
                  file=sys.stderr, flush=True)
            announced = True
        time.sleep(POLL_S if timeout is None else max(0.0, min(POLL_S, timeout - waited)))


def current() -> dict | None:
    """The lease this process holds (what ``acquire`` returned), or None."""
    return dict(_held["lease"]) if _held else None


def release() -> None:
    """Give the lease back early and restore CUDA_VISIBLE_DEVICES (process exit does the same)."""
    if not _held:
        return
    os.close(_held["fd"])
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
    print(json.dumps({"lease": lease, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                      "pid": os.getpid()}), flush=True)
    time.sleep(args.hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
