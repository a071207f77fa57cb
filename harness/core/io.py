"""Atomic file writes: a temporary file in the same folder, then a rename.

The temporary file is ``.{name}.{host}.{pid}.XXXXXXXX.tmp`` beside the target. A process killed
mid-write (SIGKILL, the OOM killer, a node failure) leaves it behind, so each write first removes
its target's temporary files whose process is gone: same host (and pid namespace) and no process
with that pid (``os.kill(pid, 0)``). A live process's file, or another host's (a shared file
system: its pids mean nothing here), is never touched. Files of the older ``.{name}.XXXXXXXX.tmp``
form, which carry no pid, are removed once more than an hour old."""
from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)

#: A temporary file of the older form (no host or pid) is an orphan once this old (seconds).
STALE_UNTAGGED_TMP_S = 3600.0
_RANDOM = re.compile(r"[a-z0-9_]{8}")  # the random part tempfile.mkstemp puts in a name
_PID = re.compile(r"[0-9]{1,10}")
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
    prefix, host, removed = f".{path.name}.", _host_tag(), []
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


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host_tag()}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

    _atomic(path, lambda p: torch.save(obj, p))


def write_table(df, out_csv: Path) -> None:
    """A pandas table as CSV at ``out_csv`` and as Parquet beside it, each written atomically."""
    atomic_write_text(out_csv, df.to_csv(index=False))
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(out_csv.with_suffix(".parquet"), buf.getvalue())
