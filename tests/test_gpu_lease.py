"""The GPU lease: real processes and real flocks on a faked device count (ATTNBENCH_GPUS)."""
from __future__ import annotations

import fcntl
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnbench.harness.measure import gpu_lease

ROOT = Path(__file__).resolve().parents[1]


def _env(lock_dir, gpus="2", **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env.update(ATTNBENCH_GPUS=gpus, ATTNBENCH_LOCK_DIR=str(lock_dir), PYTHONUNBUFFERED="1", **extra)
    return env


def _holder(env, hold=30):
    return subprocess.Popen([sys.executable, "-m", "attnbench.harness.measure.gpu_lease", "--hold", str(hold)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _read_line(proc, timeout):
    """The child's first stdout line as JSON, or None if none came within timeout seconds."""
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return None
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:  # the child exited without a line
                return None
            buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


def _kill_all(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        for f in (p.stdout, p.stderr):
            f.close()


@pytest.fixture
def clean_lease(monkeypatch):
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "ATTNBENCH_GPUS", "ATTNBENCH_GPU_LEASE_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    yield
    gpu_lease.release()


def test_two_jobs_get_different_gpus_and_a_killed_holder_frees_its_gpu(tmp_path):
    env = _env(tmp_path / "locks")
    procs = []
    try:
        procs += [_holder(env), _holder(env)]
        got = [_read_line(p, 10) for p in procs]
        assert None not in got, [p.stderr.read1() if p.poll() is not None else "" for p in procs]
        assert {g["lease"]["index"] for g in got} == {0, 1}
        assert sorted(g["CUDA_VISIBLE_DEVICES"] for g in got) == ["0", "1"]
        for g in got:
            lock = Path(g["lease"]["lock_file"])
            assert lock.parent == tmp_path / "locks" and lock.name == f"gpu{g['lease']['index']}.lock"
            assert lock.read_text().strip() == str(g["pid"])

        # Both GPUs leased: a third job waits (and says so on stderr) ...
        procs.append(_holder(env))
        assert _read_line(procs[2], 1.5) is None and procs[2].poll() is None
        # ... until a holder dies without cleaning up: the kernel drops its flock.
        victim = got[1]
        os.kill(victim["pid"], signal.SIGKILL)
        third = _read_line(procs[2], 5)
        assert third is not None
        assert third["lease"]["index"] == victim["lease"]["index"]
        assert third["CUDA_VISIBLE_DEVICES"] == victim["CUDA_VISIBLE_DEVICES"]
        assert Path(victim["lease"]["lock_file"]).exists()  # lock files are never unlinked
        procs[2].kill()
        procs[2].wait(timeout=10)
        assert b"waiting" in procs[2].stderr.read()
    finally:
        _kill_all(procs)


@pytest.mark.parametrize("device, env, why", [
    ("cpu", {"ATTNBENCH_GPUS": "2"}, "cpu run"),
    ("cuda", {"ATTNBENCH_GPUS": "2", "SLURM_JOB_ID": "1234"}, "SLURM"),
    ("auto", {"ATTNBENCH_GPUS": "0"}, "no GPUs"),
    ("cuda", {"ATTNBENCH_GPUS": "4", "CUDA_VISIBLE_DEVICES": ""}, "empty CUDA_VISIBLE_DEVICES"),
])
def test_steps_aside(tmp_path, monkeypatch, clean_lease, device, env, why):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    assert gpu_lease.acquire(device, lock_dir=tmp_path / "locks") is None, why
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before
    assert not (tmp_path / "locks").exists()


def test_steps_aside_in_a_child_process(tmp_path):
    p = _holder(_env(tmp_path / "locks", gpus="0"), hold=0)
    try:
        out = _read_line(p, 10)
        assert out is not None and out["lease"] is None and out["CUDA_VISIBLE_DEVICES"] is None
    finally:
        _kill_all([p])


def test_existing_visible_list_keeps_the_physical_id(tmp_path, monkeypatch, clean_lease):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,7")
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    with open(lock_dir / "gpu3.lock", "w") as held:  # another job holds the first listed GPU
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lease = gpu_lease.acquire("cuda", n_gpus=8, lock_dir=lock_dir, timeout=0)
    assert lease["index"] == 1 and lease["cuda_visible_devices"] == "7" and lease["n_gpus"] == 2
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    assert json.loads(json.dumps(lease)) == lease
    assert gpu_lease.acquire("cuda", n_gpus=8, lock_dir=lock_dir) == lease  # idempotent in one process
    assert gpu_lease.current() == lease  # what a CUDA run's record environment carries
    gpu_lease.release()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,7" and gpu_lease.current() is None


def test_timeout_names_the_lock_dir_and_count(tmp_path, monkeypatch, clean_lease):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    files = [open(lock_dir / f"gpu{i}.lock", "w") for i in range(2)]
    try:
        for f in files:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        t0 = time.monotonic()
        with pytest.raises(gpu_lease.GpuLeaseTimeout) as err:
            gpu_lease.acquire("cuda", n_gpus=2, lock_dir=lock_dir, timeout=0.6)
        assert 0.5 <= time.monotonic() - t0 < 3
        assert str(lock_dir) in str(err.value) and "all 2 GPUs" in str(err.value)
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    finally:
        for f in files:
            f.close()
