"""Atomic file writes: a temporary file in the same folder, then a rename.

The temporary file is ``.{name}.{host}.{pid}.XXXXXXXX.tmp`` beside the target. A process killed
mid-write (SIGKILL, the OOM killer, a node failure) leaves it behind, so each write first removes
its target's temporary files whose process is gone: same host (and pid namespace) and no process
with that pid (``os.kill(pid, 0)``). A live process's file, or another host's (a shared file
system: its pids mean nothing here), is never touched. Files of the older ``.{name}.XXXXXXXX.tmp``
form, which carry no pid, are removed once more than an hour old.

A write that fails for a reason outside the program (a full disk or quota, a read-only file system, an
I/O error) raises a ``WriteError``: one line naming the file and the cause, and for want of space the
space left on its file system (``attnbench`` prints it and exits 2), after its temporary file is removed.
``torch.save`` writes through a Python file, whose OSError its RuntimeError keeps as the context; a
RuntimeError with no OSError behind it (torch writing to a path itself loses the errno: ``enforce fail at
inline_container.cc``, ``basic_ios::clear``) is a full disk when under ``LOW_SPACE_BYTES`` are free, and
is otherwise raised again naming the file."""
from __future__ import annotations

import errno
import functools
import io
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attnbench.harness.core.errors import PATH_ERRORS, WriteError

_UMASK = os.umask(0)
os.umask(_UMASK)

#: A temporary file of the older form (no host or pid) is an orphan once this old (seconds).
STALE_UNTAGGED_TMP_S = 3600.0
_RANDOM = re.compile(r"[a-z0-9_]{8}")  # the random part tempfile.mkstemp puts in a name
_PID = re.compile(r"[0-9]{1,10}")
#: a writer that lost the errno (torch's, given a path) failing with less than this free is taken as a full disk
LOW_SPACE_BYTES = 1 << 20
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@functools.cache
def _host_tag() -> str:
    """This host in a temporary file's name: the host name (letters, digits and dashes) and, where
    /proc tells it, the pid namespace, so that two containers sharing a host name and a folder never
    judge each other's pids."""
    tag = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"
    try:
        tag += f"-ns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        pass
    return tag


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host; True when unsure."""
    if pid <= 0:
        return True  # never signal a process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, OSError):  # PermissionError: it exists (another user's); anything else: unsure
        return True
    return True


def remove_orphan_temps(path: Path) -> list[Path]:
    """Remove the temporary files an interrupted ``_atomic`` write of ``path`` left: this host's whose
    process is gone, and untagged ones older than ``STALE_UNTAGGED_TMP_S``. Returns what it removed;
    never raises for a file it cannot inspect or remove."""
    path = Path(path)
    prefix, host = f".{path.name}.", _host_tag()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        parts = entry.name[len(prefix):-len(".tmp")].split(".")
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if len(parts) == 3:
                tag, pid, rand = parts
                if tag != host or not _PID.fullmatch(pid) or not _RANDOM.fullmatch(rand) or _pid_alive(int(pid)):
                    continue
            elif len(parts) == 1 and _RANDOM.fullmatch(parts[0]):
                if time.time() - entry.stat(follow_symlinks=False).st_mtime <= STALE_UNTAGGED_TMP_S:
                    continue
            else:
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:  # gone already (another writer cleaned it), or not ours to remove
            continue
    return removed


def _size(n: int) -> str:
    """Bytes for people: "0 bytes", "3.2 MiB"."""
    if n < 1024:
        return f"{n} byte{'s' if n != 1 else ''}"
    exponent = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024 ** exponent:.1f} {('KiB', 'MiB', 'GiB', 'TiB')[exponent - 1]}"


def free_space(folder: Path) -> tuple[int | None, str]:
    """The bytes this user may still write on ``folder``'s file system (None when that cannot be told) and
    the file system's mount point."""
    try:
        free: int | None = shutil.disk_usage(folder).free
    except OSError:
        free = None
    mount = os.path.realpath(folder)
    while not os.path.ismount(mount) and os.path.dirname(mount) != mount:
        mount = os.path.dirname(mount)
    return free, mount


def _os_error(exc: BaseException) -> OSError | None:
    """The first OS error in ``exc``'s chain (itself, then its causes and contexts): torch's writer raises a
    RuntimeError from the OSError of the Python file it writes to."""
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not s for s in seen):
        if isinstance(e, OSError):
            return e
        seen.append(e)
        e = e.__cause__ or e.__context__
    return None


def write_failure(exc: BaseException, path: Path) -> BaseException | None:
    """What to raise, from ``exc``, for a failed write of ``path``: a ``WriteError`` for an OS error (a full
    disk or quota saying the space left), also one that torch's writer raised its RuntimeError from; a
    RuntimeError of torch's with no OS error behind it is a full disk when little space is left, else raised
    again naming ``path``. None: raise ``exc`` as it is (an interrupt, a bug, or an error about a path the
    user gave, ``PATH_ERRORS``, whose message names it already)."""
    if isinstance(exc, (*PATH_ERRORS, WriteError)) or not isinstance(exc, (OSError, RuntimeError)):
        return None
    cause = _os_error(exc)
    if cause is not None:
        code = cause.errno
        if code not in _NO_SPACE:
            return WriteError(code, f"{cause.strerror or cause} while writing {path}")
    elif type(exc) is RuntimeError:  # a writer that lost the errno (torch's, writing to a path of its own)
        free, _ = free_space(path.parent)
        if free is None or free >= LOW_SPACE_BYTES:
            return RuntimeError(f"could not write {path}: {' '.join(str(exc).split())}")
        code = errno.ENOSPC
    else:
        return None  # a RuntimeError subclass (torch's OutOfMemoryError...): not the writer's
    free, mount = free_space(path.parent)
    left = f"{_size(free)} free on {mount}" if free is not None else f"on {mount}"
    return WriteError(code, f"{os.strerror(code)} while writing {path} ({left}); free some space there, or write "
                            "elsewhere, and run again")


def _temp_file(path: Path) -> str:
    """A new empty temporary file beside ``path``, named as the module docstring says."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host_tag()}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    os.close(fd)
    return tmp


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphan_temps(path)
        tmp = _temp_file(path)
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        error = write_failure(exc, path)  # first: removing the temporary file frees the space it took
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if error is None:
            raise
        raise error from exc


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda p: p.write_bytes(data))


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None: JSON has no such numbers (Python
    would write a bare ``NaN`` that other readers refuse)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Valid JSON whatever ``obj`` holds: non-finite numbers become null."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=False, default=str, allow_nan=False)
    atomic_write_text(path, text + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch  # here, not at the top: the core layer imports without torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a Python file: its OSError (the errno) is kept, and it is closed on failure
            torch.save(obj, f)

    _atomic(path, write)


def write_table(df: Any, out_csv: Path) -> None:  # df: a pandas DataFrame (pandas has no type information here)
    """A pandas table as CSV at ``out_csv`` and as Parquet beside it, each written atomically."""
    atomic_write_text(out_csv, df.to_csv(index=False))
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(out_csv.with_suffix(".parquet"), buf.getvalue())
