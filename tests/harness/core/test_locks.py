"""harness/core/locks.py: private lock folders, lock files that never follow a link, flock across processes."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnbench.harness.core import locks
from attnbench.harness.core.errors import UserError
from attnbench.harness.core.locks import LockFileError
from conftest import REPO, stop_process

ROOT = REPO

# A child that takes the lock, prints its descriptor's fate as one line and holds it until killed.
HOLD = """
import json, sys, time
from pathlib import Path
from attnbench.harness.core import locks
fd = locks.try_lock(Path(sys.argv[1]), info={"job": "child"})
print(json.dumps({"locked": fd is not None}), flush=True)
time.sleep(60)
"""


def _child(path: Path, **popen) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)
    line = proc.stdout.readline()  # the child prints at once; a broken child closes stdout (empty line)
    assert line, proc.stderr.read()
    return proc, json.loads(line)



# --- private_dir ------------------------------------------------------------------------------------

def test_private_dir_is_created_0700_with_its_parents_whatever_the_umask(tmp_path):
    path = tmp_path / "a" / "b" / "locks"
    old = os.umask(0o277)  # would make mkdir's 0700 into 0500
    try:
        assert locks.private_dir(path) == path
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.lstat().st_mode) == 0o700 and path.is_dir()
    assert locks.private_dir(path) == path  # an existing private folder is accepted as it is


def test_private_dir_accepts_an_existing_folder_of_ours_not_writable_by_others(tmp_path):
    path = tmp_path / "locks"
    path.mkdir()
    path.chmod(0o755)
    assert locks.private_dir(path) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o755  # an accepted folder's mode is left alone


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o702])
def test_private_dir_refuses_a_folder_others_can_write(tmp_path, mode):
    path = tmp_path / "locks"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(LockFileError) as err:
        locks.private_dir(path)
    msg = str(err.value)
    assert str(path) in msg and "writable by others" in msg and f"{mode:04o}" in msg and f"chmod 700 {path}" in msg
    assert isinstance(err.value, UserError)


def test_private_dir_refuses_a_symlink_even_to_a_private_folder_of_ours(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "locks"
    link.symlink_to(real)
    with pytest.raises(LockFileError, match="is a symbolic link") as err:
        locks.private_dir(link)
    assert str(link) in str(err.value) and f"rm {link}" in str(err.value)


def test_private_dir_refuses_a_file(tmp_path):
    path = tmp_path / "locks"
    path.write_text("x")
    with pytest.raises(LockFileError, match="is not a folder"):
        locks.private_dir(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_private_dir_refuses_a_folder_another_user_owns(tmp_path):
    path = tmp_path / "locks"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(LockFileError) as err:
        locks.private_dir(path)
    assert str(path) in str(err.value) and "owned by uid 65534" in str(err.value) and "not by you" in str(err.value)


# --- open_lock_file ---------------------------------------------------------------------------------

def test_open_lock_file_creates_a_0600_regular_file(tmp_path):
    path = tmp_path / "x.lock"
    fd = locks.open_lock_file(path)
    try:
        st = os.fstat(fd)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert os.get_inheritable(fd) is False  # close-on-exec
        assert os.get_blocking(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("dangling", [False, True])
def test_open_lock_file_never_follows_a_symlink(tmp_path, dangling):
    target = tmp_path / "precious.txt"
    if not dangling:
        target.write_text("keep me\n")
    link = tmp_path / "x.lock"
    link.symlink_to(target)
    with pytest.raises(LockFileError) as err:
        locks.open_lock_file(link)
    assert str(link) in str(err.value) and "symbolic link" in str(err.value) and "never followed" in str(err.value)
    assert target.exists() is not dangling  # a dangling link's target is not created
    if not dangling:
        assert target.read_text() == "keep me\n"
    with pytest.raises(LockFileError):
        locks.try_lock(link)
    assert not dangling or not target.exists()


def test_open_lock_file_refuses_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "fifo.lock"
    os.mkfifo(fifo)
    with pytest.raises(LockFileError, match="not a regular file"):
        locks.open_lock_file(fifo)  # and does not hang opening it
    folder = tmp_path / "dir.lock"
    folder.mkdir()
    with pytest.raises(LockFileError, match="is a folder"):
        locks.open_lock_file(folder)


# --- try_lock, lock_owner, release ------------------------------------------------------------------

def test_try_lock_records_the_owner_and_excludes_a_second_taker(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text("a much longer stale content from some earlier holder\n" * 5)
    fd = locks.try_lock(path, info={"job": "test"})
    assert fd is not None
    try:
        owner = locks.lock_owner(path)
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and owner["job"] == "test"
        assert abs(owner["since_unix"] - time.time()) < 60 and owner["since"][:4].isdigit()
        assert path.read_text().count("\n") == 1  # the stale content is gone: one JSON line
        # flock locks open file descriptions: a second open, even in this process, is refused.
        assert locks.try_lock(path) is None
        assert locks.describe_owner(owner).startswith(f"pid {os.getpid()} on host {socket.gethostname()} since ")
    finally:
        locks.release(fd)
    fd = locks.try_lock(path)  # free again once released
    assert fd is not None
    locks.release(fd)
    assert path.exists()  # lock files are never unlinked


def test_try_lock_across_processes_and_a_killed_holder_frees_the_lock(tmp_path):
    path = tmp_path / "x.lock"
    proc, out = _child(path)
    try:
        assert out == {"locked": True}
        assert locks.try_lock(path) is None
        owner = locks.lock_owner(path)
        assert owner["pid"] == proc.pid and owner["job"] == "child"
        assert f"pid {proc.pid} on host " in locks.describe_owner(owner)
        proc2, out2 = _child(path)  # a second process is refused too
        stop_process(proc2)
        assert out2 == {"locked": False}
        proc.kill()
        proc.wait(timeout=10)
        fd = locks.try_lock(path)  # the kernel dropped the dead holder's lock
        assert fd is not None
        assert locks.lock_owner(path)["pid"] == os.getpid()
        locks.release(fd)
    finally:
        stop_process(proc)


def test_lock_owner_reads_what_is_there_without_following_links(tmp_path):
    assert locks.lock_owner(tmp_path / "missing.lock") is None
    old = tmp_path / "old.lock"
    old.write_text("1234\n")  # the format before the JSON line
    assert locks.lock_owner(old) == {"pid": 1234}
    junk = tmp_path / "junk.lock"
    junk.write_text("not json\n")
    assert locks.lock_owner(junk) is None
    empty = tmp_path / "empty.lock"
    empty.touch()
    assert locks.lock_owner(empty) is None
    assert locks.describe_owner(None) == "an unknown process"
    target = tmp_path / "target"
    target.write_text(json.dumps({"pid": 1}) + "\n")
    link = tmp_path / "link.lock"
    link.symlink_to(target)
    assert locks.lock_owner(link) is None
    fifo = tmp_path / "fifo.lock"
    os.mkfifo(fifo)
    assert locks.lock_owner(fifo) is None  # and does not hang


def test_a_lock_file_this_user_may_not_write_is_still_locked_read_only(tmp_path, monkeypatch):
    """A folder a team shares: a member who cannot write another's lock file still locks it (flock
    needs no write access), and leaves its content alone. (Permission is refused by a stand-in for
    os.open: root may write anything.)"""
    path = tmp_path / "x.lock"
    path.write_text("123\n")
    real_open = os.open

    def no_write(file, flags, *args, **kwargs):
        if Path(file) == path and flags & os.O_ACCMODE != os.O_RDONLY:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(locks.os, "open", no_write)
    fd = locks.try_lock(path)
    assert fd is not None
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert path.read_text() == "123\n"
        assert locks.try_lock(path) is None  # the read-only descriptor's lock excludes others
        proc, out = _child(path)  # (the child process is not patched)
        stop_process(proc)
        assert out == {"locked": False}
    finally:
        locks.release(fd)
    missing = tmp_path / "missing.lock"

    def denied(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(locks.os, "open", denied)
    with pytest.raises(LockFileError, match="cannot open the lock file") as err:
        locks.try_lock(missing)  # a folder we may not create files in: a clear error, no fallback
    assert str(missing) in str(err.value)
