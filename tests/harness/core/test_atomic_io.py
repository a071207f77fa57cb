"""harness/core/io.py: an atomic write's temporary file carries its host and pid, and the next write of
the same target removes the ones a dead process left (never a live process's, nor another host's)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnbench.harness.core import io as aio
from conftest import REPO, stop_process

ROOT = REPO

# A writer that is killed mid-write: it writes part of the file, says where, and sleeps in write().
SLOW_WRITER = """
import sys, time
from pathlib import Path
from attnbench.harness.core.io import _atomic

def write(tmp):
    with open(tmp, "wb") as f:
        f.write(b"x" * 4_000_000)
        f.flush()
        print(tmp, flush=True)
        time.sleep(120)

_atomic(Path(sys.argv[1]), write)
"""


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    return proc.pid


def _orphan(target: Path, pid: int, host: str | None = None, rand: str = "abcd_123") -> Path:
    tmp = target.parent / f".{target.name}.{host or aio._host_tag()}.{pid}.{rand}.tmp"
    tmp.write_bytes(b"partial")
    return tmp


def _slow_writer(target: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read()
    return proc, Path(line)



def test_the_temp_name_embeds_host_and_pid_and_is_gone_after_the_write(tmp_path):
    target = tmp_path / "data.pt"
    seen = []
    aio._atomic(target, lambda p: (seen.append(p.name), p.write_text("v1")))
    name = seen[0]
    assert name.startswith(f".data.pt.{aio._host_tag()}.{os.getpid()}.") and name.endswith(".tmp")
    assert target.read_text() == "v1" and sorted(os.listdir(tmp_path)) == ["data.pt"]


def test_a_dead_process_orphan_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "data.pt"
    dead = _orphan(target, _dead_pid())
    aio.atomic_write_text(target, "new")
    assert not dead.exists()
    assert target.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["data.pt"]


def test_live_processes_other_hosts_and_other_targets_are_left_alone(tmp_path):
    target = tmp_path / "data.pt"
    dead_pid = _dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        keep = [
            _orphan(target, os.getpid()),  # this very process (e.g. another thread's write)
            _orphan(target, sleeper.pid, rand="sleeper1"),  # a live process
            _orphan(target, dead_pid, host="elsewhere"),  # another host's: its pids mean nothing here
            _orphan(tmp_path / "data.pt.bak", dead_pid),  # another target whose name starts alike
            _orphan(tmp_path / "other.pt", dead_pid),  # another target
            _orphan(target, 0, rand="pidzero0"),  # never a process group
        ]
        not_temps = [tmp_path / f".data.pt.{aio._host_tag()}.{dead_pid}.abcd_123.tmp.keep",
                     tmp_path / f".data.pt.{aio._host_tag()}.{dead_pid}.TOOLONGXX.tmp"]
        for p in not_temps:
            p.write_text("not a temporary file of ours")
        gone = _orphan(target, dead_pid)
        aio.atomic_write_bytes(target, b"new")
        assert not gone.exists()
        assert all(p.exists() for p in keep + not_temps)
        assert target.read_bytes() == b"new"
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)


def test_untagged_orphans_of_the_older_form_are_removed_only_when_an_hour_old(tmp_path):
    target = tmp_path / "data.pt"
    old = tmp_path / ".data.pt.k3j_9xq2.tmp"
    fresh = tmp_path / ".data.pt.a8b7c6d5.tmp"
    for p in (old, fresh):
        p.write_bytes(b"partial")
    two_hours_ago = time.time() - 2 * 3600
    os.utime(old, (two_hours_ago, two_hours_ago))
    aio.atomic_write_text(target, "new")
    assert not old.exists() and fresh.exists()  # a fresh one may be an older version's write in progress


def test_a_write_killed_mid_way_leaves_an_orphan_that_the_next_write_removes(tmp_path):
    target = tmp_path / "dataset.pt"
    aio.atomic_write_text(target, "old")
    proc, tmp = _slow_writer(target)
    try:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".dataset.pt.{aio._host_tag()}.{proc.pid}.")
        assert tmp.stat().st_size == 4_000_000
        # While the writer lives, another write of the same target leaves its file alone.
        aio.atomic_write_text(target, "meanwhile")
        assert tmp.exists() and target.read_text() == "meanwhile"
        proc.kill()  # SIGKILL: no clean-up runs
        proc.wait(timeout=30)
        assert tmp.exists() and target.read_text() == "meanwhile"  # the orphan, and the target untouched
    finally:
        stop_process(proc)
    aio.atomic_write_text(target, "new")
    assert not tmp.exists()
    assert target.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["dataset.pt"]


def test_a_failed_write_still_removes_its_own_temp_file(tmp_path):
    target = tmp_path / "data.pt"

    def fail(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        aio._atomic(target, fail)
    assert os.listdir(tmp_path) == []
