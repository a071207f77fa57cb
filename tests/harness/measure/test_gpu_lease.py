"""The GPU lease: real processes and real flocks on a faked device count (ATTNBENCH_GPUS)."""
from __future__ import annotations

import fcntl
import json
import os
import selectors
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnbench.harness.core.errors import UserError
from attnbench.harness.measure import gpu_lease
from conftest import REPO

ROOT = REPO


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


@pytest.mark.slow
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
            owner = json.loads(lock.read_text())  # who holds it, one JSON line (informational)
            assert owner["pid"] == g["pid"] and owner["cuda_visible_devices"] == g["CUDA_VISIBLE_DEVICES"]

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


@pytest.mark.slow
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


# --- where the lock files live, and what they may not be ------------------------------------------------

@pytest.fixture
def default_dir(tmp_path, monkeypatch, clean_lease):
    """The default lock folder, under a stand-in XDG_RUNTIME_DIR (a folder of ours) rather than /tmp."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.delenv("ATTNBENCH_LOCK_DIR", raising=False)
    assert gpu_lease.default_lock_dir() == run / "attnbench-gpu-locks"
    return run / "attnbench-gpu-locks"


def test_the_default_dir_is_created_private(default_dir):
    lease = gpu_lease.acquire("cuda", n_gpus=1, timeout=0)
    assert lease["lock_dir"] == str(default_dir) and lease["lock_file"] == str(default_dir / "gpu0.lock")
    assert default_dir.is_dir() and stat.S_IMODE(default_dir.lstat().st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(lease["lock_file"]).st_mode) == 0o600


def test_the_default_dir_without_a_usable_xdg_runtime_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("ATTNBENCH_LOCK_DIR", raising=False)
    fallback = Path(f"/tmp/attnbench-gpu-locks-{os.getuid()}")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert gpu_lease.default_lock_dir() == fallback
    (tmp_path / "file").write_text("")
    for value in (str(tmp_path / "file"), str(tmp_path / "missing"), "relative/run", ""):
        monkeypatch.setenv("XDG_RUNTIME_DIR", value)
        assert gpu_lease.default_lock_dir() == fallback, value
    if os.geteuid() == 0:  # a runtime folder that is not ours is not used either
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(theirs))
        assert gpu_lease.default_lock_dir() == fallback
    monkeypatch.setenv("ATTNBENCH_LOCK_DIR", str(tmp_path / "team"))
    assert gpu_lease.default_lock_dir() == tmp_path / "team"


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_a_default_dir_others_can_write_is_refused(default_dir, mode):
    default_dir.mkdir()
    default_dir.chmod(mode)
    with pytest.raises(gpu_lease.LockFileError) as err:
        gpu_lease.acquire("cuda", n_gpus=1, timeout=0)
    msg = str(err.value)
    assert str(default_dir) in msg and "writable by others" in msg and f"chmod 700 {default_dir}" in msg
    assert "ATTNBENCH_LOCK_DIR" in msg
    assert list(default_dir.iterdir()) == [] and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_a_default_dir_that_is_a_symlink_is_refused(default_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    default_dir.symlink_to(elsewhere)
    with pytest.raises(gpu_lease.LockFileError) as err:
        gpu_lease.acquire("cuda", n_gpus=1, timeout=0)
    assert str(default_dir) in str(err.value) and "symbolic link" in str(err.value)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("where", ["explicit", "default"])
def test_a_symlinked_lock_file_is_not_followed(tmp_path, monkeypatch, clean_lease, where):
    """Refused with a LockFileError naming the link (not skipped: that GPU would sit idle unnoticed)."""
    if where == "default":
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
        monkeypatch.delenv("ATTNBENCH_LOCK_DIR", raising=False)
        lock_dir = gpu_lease.locks.private_dir(tmp_path / "attnbench-gpu-locks")
    else:
        lock_dir = tmp_path / "locks"
        lock_dir.mkdir()
        monkeypatch.setenv("ATTNBENCH_LOCK_DIR", str(lock_dir))
    target = tmp_path / "precious.txt"
    target.write_text("do not overwrite\n")
    (lock_dir / "gpu0.lock").symlink_to(target)
    with pytest.raises(gpu_lease.LockFileError) as err:
        gpu_lease.acquire("cuda", n_gpus=2, timeout=0)
    msg = str(err.value)
    assert str(lock_dir / "gpu0.lock") in msg and "symbolic link" in msg and "remove it" in msg
    assert target.read_text() == "do not overwrite\n"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and gpu_lease.current() is None


def test_a_symlinked_lock_file_stops_the_job_stand_in_with_status_2(tmp_path):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep\n")
    (lock_dir / "gpu0.lock").symlink_to(target)
    p = _holder(_env(lock_dir, gpus="1"), hold=0)
    try:
        assert p.wait(timeout=30) == 2
        assert b"symbolic link" in p.stderr.read()
        assert target.read_text() == "keep\n"
    finally:
        _kill_all([p])


# --- how long a job waits ---------------------------------------------------------------------------

@pytest.mark.slow
def test_the_default_timeout_applies_and_names_the_holder(tmp_path, monkeypatch, clean_lease):
    monkeypatch.setattr(gpu_lease, "DEFAULT_TIMEOUT_S", 0.6)
    lock_dir = tmp_path / "locks"
    holder = _holder(_env(lock_dir, gpus="1"))
    try:
        got = _read_line(holder, 10)
        assert got is not None and got["lease"]["index"] == 0
        assert got["lease"]["timeout_s"] == 3600  # the child's default (not patched)
        t0 = time.monotonic()
        with pytest.raises(gpu_lease.GpuLeaseTimeout) as err:
            gpu_lease.acquire("cuda", n_gpus=1, lock_dir=lock_dir)
        assert 0.5 <= time.monotonic() - t0 < 5
        msg = str(err.value)
        assert "timeout of 0.6 s" in msg and "ATTNBENCH_GPU_LEASE_TIMEOUT" in msg
        assert str(lock_dir) in msg and f"gpu0.lock held by pid {holder.pid} on host " in msg
        assert isinstance(err.value, UserError) and isinstance(err.value, RuntimeError)
    finally:
        _kill_all([holder])
    assert gpu_lease.acquire("cuda", n_gpus=1, lock_dir=lock_dir)["timeout_s"] == 0.6  # free again


@pytest.mark.parametrize("value, want", [
    (None, 3600.0), ("", 3600.0), ("120", 120.0), ("2.5", 2.5), ("0", None), ("none", None), ("None", None),
])
def test_the_timeout_setting(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv("ATTNBENCH_GPU_LEASE_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("ATTNBENCH_GPU_LEASE_TIMEOUT", value)
    assert gpu_lease.lease_timeout() == want
    assert gpu_lease.lease_timeout(0) == 0  # an explicit 0: try once, do not wait
    assert gpu_lease.lease_timeout(float("inf")) is None


@pytest.mark.parametrize("value", ["soon", "-5", "nan"])
def test_a_timeout_setting_that_is_not_a_number_is_a_clear_error(tmp_path, monkeypatch, clean_lease, value):
    monkeypatch.setenv("ATTNBENCH_GPU_LEASE_TIMEOUT", value)
    with pytest.raises(gpu_lease.GpuLeaseSettingError) as err:
        gpu_lease.acquire("cuda", n_gpus=1, lock_dir=tmp_path / "locks")
    assert f"ATTNBENCH_GPU_LEASE_TIMEOUT={value!r}" in str(err.value) and "0 or none" in str(err.value)
    assert isinstance(err.value, UserError) and not (tmp_path / "locks").exists()


def test_waiting_forever_is_recorded_in_the_lease(tmp_path, monkeypatch, clean_lease):
    monkeypatch.setenv("ATTNBENCH_GPU_LEASE_TIMEOUT", "none")
    lease = gpu_lease.acquire("cuda", n_gpus=1, lock_dir=tmp_path / "locks")
    assert lease["timeout_s"] is None and json.loads(json.dumps(lease)) == lease
