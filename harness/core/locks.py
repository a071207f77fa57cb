"""Lock files that cannot be turned against their user: private lock folders and ``flock`` locks.

A lock folder in a shared place (``/tmp``) under a predictable name can be created first by someone
else, who then owns the locks in it, or can plant a symbolic link ``x.lock -> somefile`` there so that
the next job overwrites ``somefile``. So:

- ``private_dir`` creates a folder 0700, or accepts an existing one only if it is a real folder (not a
  symbolic link) owned by this user and writable by no one else;
- ``open_lock_file`` never follows a symbolic link (``O_NOFOLLOW``) and accepts only a regular file;
- ``try_lock`` takes a non-blocking exclusive ``flock`` (the kernel drops it when the process dies, so
  a crashed holder needs no clean-up and the files are never unlinked) and writes who holds it (pid,
  host, since when: one JSON line) through the descriptor it locked;
- ``lock_owner`` reads that back, for messages ("held by pid N on host H since T").

Standard library only (the core layer).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

from attnbench.harness.core.errors import UserError

#: The most of a lock file ``lock_owner`` reads: the owner line is far shorter.
_OWNER_MAX_BYTES = 4096


class LockFileError(UserError):
    """A lock folder or lock file that is unsafe or unusable; the message names the path, what is wrong
    and how to fix it."""


def _describe_uid(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def private_dir(path: Path) -> Path:
    """``path`` as a folder only this user can write to: created with mode 0700 (parents as needed)
    if missing; an existing one is refused (``LockFileError``) if it is a symbolic link, not a folder,
    owned by another user or writable by group or others. Returns ``path``."""
    path = Path(path)
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise LockFileError(f"{path}: cannot create the lock folder ({exc.strerror or exc}); "
                            f"create it yourself with mode 0700 or use another folder") from None
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise LockFileError(f"{path}: cannot inspect the lock folder ({exc.strerror or exc})") from None
    if stat.S_ISLNK(st.st_mode):
        raise LockFileError(f"{path} is a symbolic link, not a folder of your own: lock folders are never "
                            f"followed through links (someone else may control the target); remove it "
                            f"(rm {path}) or use another folder")
    if not stat.S_ISDIR(st.st_mode):
        raise LockFileError(f"{path} is not a folder; remove it (rm {path}) or use another folder")
    uid = os.geteuid()
    if st.st_uid != uid:
        raise LockFileError(f"{path} is owned by {_describe_uid(st.st_uid)}, not by you ({_describe_uid(uid)}): "
                            f"its owner controls the locks in it; remove it (its owner or root can) or use "
                            f"another folder")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LockFileError(f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): anyone could "
                            f"plant or hold its lock files; make it private (chmod 700 {path}) or remove it")
    if created and stat.S_IMODE(st.st_mode) != 0o700:  # the umask narrowed mkdir's mode
        os.chmod(path, 0o700)
    return path


def open_lock_file(path: Path, *, mode: int = 0o600) -> int:
    """An open descriptor on the regular file ``path``, created with ``mode`` (less the umask) if missing.

    Never follows a symbolic link (``O_NOFOLLOW``): a link is a ``LockFileError``, as is anything that
    is not a regular file. Opened read-write; where the file exists but this user may not write it (a
    lock folder shared by a team, a file another member created), read-only, which ``flock`` accepts
    just as well (``try_lock`` then cannot record the owner). Close-on-exec."""
    path = Path(path)
    flags = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a FIFO never hangs open()
    try:
        try:
            fd = os.open(path, os.O_RDWR | flags, mode)
        except PermissionError:
            if not os.path.lexists(path):
                raise
            fd = os.open(path, os.O_RDONLY | flags, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise LockFileError(f"{path} is a symbolic link; lock files are never followed (a link could make "
                                f"the lock overwrite its target); remove it (rm {path})") from None
        if exc.errno == errno.EISDIR:
            raise LockFileError(f"{path} is a folder, not a lock file; remove it") from None
        raise LockFileError(f"{path}: cannot open the lock file ({exc.strerror or exc}); check the lock "
                            f"folder's permissions or remove the file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LockFileError(f"{path} is not a regular file (mode {stat.filemode(st.st_mode)}); lock files "
                                f"must be plain files; remove it")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def owner_info(**extra: Any) -> dict[str, Any]:
    """What ``try_lock`` records about the process taking a lock: pid, host, since (ISO 8601) and
    since_unix, plus ``extra``."""
    now = time.time()
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)), "since_unix": round(now, 3),
            **extra}


def try_lock(path: Path, *, info: dict[str, Any] | None = None, mode: int = 0o600) -> int | None:
    """Take an exclusive ``flock`` on the lock file ``path`` without waiting.

    Returns the open descriptor (the lock lasts until it is closed, see ``release``, or the process
    ends), or None when another open file description holds the lock. On success the owner (see
    ``owner_info``; ``info`` adds fields) is written into the file as one JSON line, through the
    descriptor, which ``open_lock_file`` checked is a regular file reached without following a link.
    Raises ``LockFileError`` for a link, a non-regular file or a file that cannot be opened."""
    fd = open_lock_file(path, mode=mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        raise LockFileError(f"{path}: cannot lock the file ({exc.strerror or exc}); the file system may not "
                            f"support flock: put the lock folder on a local disk") from None
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
        line = (json.dumps(owner_info(**(info or {})), default=str) + "\n").encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, line, 0)
        except OSError:  # the record is informational; the lock is what counts
            pass
    return fd


def lock_owner(path: Path) -> dict[str, Any] | None:
    """The owner recorded in the lock file ``path`` by ``try_lock`` (pid, host, since, ...), or None if
    there is none or it cannot be read. A file holding just a pid (the older format) gives {"pid": N}.
    Never follows a symbolic link. What it says is informational: the process may have died since."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.pread(fd, _OWNER_MAX_BYTES, 0).decode("utf-8", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    if not text:
        return None
    first = text.splitlines()[0]
    if first.isdigit():
        return {"pid": int(first)}
    try:
        owner = json.loads(first)
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


def describe_owner(owner: dict[str, Any] | None) -> str:
    """``lock_owner``'s answer in words: "pid N on host H since T", or "an unknown process"."""
    if not owner or "pid" not in owner:
        return "an unknown process"
    text = f"pid {owner['pid']}"
    if owner.get("host"):
        text += f" on host {owner['host']}"
    if owner.get("since"):
        text += f" since {owner['since']}"
    return text


def release(fd: int) -> None:
    """Release a lock ``try_lock`` took: close its descriptor (the lock file stays; it is never unlinked)."""
    os.close(fd)
