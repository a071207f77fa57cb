"""Damaged files are set aside, not left to block the pipeline.

A truncated, non-UTF-8 or schema-breaking ``record.json`` would otherwise stop every aggregation
(and Snakemake, which sees the file and never re-trains its run); a truncated prepared dataset, teacher
checkpoint or sweep JSON would fail every job that reads it. Setting a file aside moves it into a
``set_aside`` folder, at the same relative place, with ``<name>.<UTC time>.reason.txt`` saying why::

    results/runs/TASK/LABEL/seedS/record.json  ->  results/set_aside/TASK/LABEL/seedS/record.<UTC time>.json
    data/TASK/KEY/dataset.pt                   ->  data/set_aside/TASK/KEY/dataset.<UTC time>.pt
    results/bench/VARIANT.json                 ->  results/set_aside/bench/VARIANT.<UTC time>.json

The file is then missing, so the next ``snakemake`` makes it again; nothing is deleted. (A file kept
in place for Snakemake to replace is linked there instead, see ``move_aside``.)

A prepared dataset made again has a new time even when its bytes are the same, which would make every
run built on it out of date. So ``note_prepared`` records a digest of its content (``content_digest``) and
its time beside it, and gives a dataset prepared again with the recorded content its recorded time back;
``keep_prepared_time`` gives it back again after Snakemake touched the file (planning calls it).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from pathlib import Path

from attnbench.harness.core import paths
from attnbench.harness.core.io import atomic_write_json
from attnbench.harness.results.records import RecordError, read_record

FOLDER = "set_aside"


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def aside_path(path: Path, stamp: str, root: Path, into: Path) -> Path:
    """Where ``path`` (inside the folder ``root``) goes: the same relative folder under ``into``,
    named ``<stem>.<stamp><suffix>``."""
    path = Path(path)
    return Path(into) / path.parent.relative_to(root) / f"{path.stem}.{stamp}{path.suffix}"


def destination(record: Path, stamp: str) -> Path:
    """Where ``record`` goes: under ``set_aside/`` beside the ``runs`` folder that holds it, at the same
    relative place; a record outside any ``runs`` folder goes to ``set_aside/`` in its own folder."""
    record = Path(record)
    runs = next((p for p in record.parents if p.name == "runs"), None)
    if runs is None:
        return aside_path(record, stamp, record.parent, record.parent / FOLDER)
    return aside_path(record, stamp, runs, runs.parent / FOLDER)


def _already_aside(path: Path, target: Path) -> Path | None:
    """A link to ``path`` set aside before, in ``target``'s folder (so a file kept in place is linked once)."""
    stem = target.name.split(".", 1)[0]
    for old in sorted(target.parent.glob(f"{stem}.*{path.suffix}")):
        if os.path.samefile(old, path):
            return old
    return None


def move_aside(path: Path, reason: str, target: Path, *, keep: bool = False) -> Path:
    """Set ``path`` aside at ``target`` (see ``aside_path``) with ``<target stem>.reason.txt`` holding the
    path and ``reason``; returns where it went. ``keep``: leave ``path`` in place and link it there (a
    copy where a link cannot be made), for a file Snakemake must find to replace it (a hard link survives
    the replacement); a file already linked there is not linked again."""
    path, target = Path(path), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if keep:
        old = _already_aside(path, target)
        if old is not None:
            return old
    target.with_suffix(".reason.txt").write_text(f"{path}\n{reason}\n", encoding="utf-8")
    if not keep:
        os.replace(path, target)
    else:
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    return target


def set_aside(record: Path, reason: str) -> Path:
    """Move ``record`` out of its run folder (see the module docstring) with a reason file; returns
    where it went."""
    return move_aside(record, reason, destination(record, _stamp()))


def move_aside_under(path: Path, reason: str, root: Path, into: Path, *, keep: bool = False) -> Path:
    """``move_aside`` of ``path`` (inside ``root``) into the same relative folder under ``into``."""
    return move_aside(path, reason, aside_path(path, _stamp(), root, into), keep=keep)


def readable(records: list[Path]) -> tuple[list[tuple[Path, dict]], list[dict]]:
    """The records that read and validate, as (path, record), and those set aside, each as
    ``{"record": original path, "moved_to": path, "reason": message}``."""
    good, aside = [], []
    for path in records:
        try:
            good.append((Path(path), read_record(path)))
        except RecordError as exc:
            aside.append({"record": str(path), "moved_to": str(set_aside(path, str(exc))), "reason": str(exc)})
    return good, aside


# ---------------------------------------------------------------- torch files: readable, and made again


def torch_file_problem(path: Path, **want: object) -> str | None:
    """Why the torch file ``path`` (a prepared dataset, a checkpoint) cannot be used, or None: missing,
    truncated or not a torch file, or a top-level entry not as ``want`` says (``key="..."``). Cheap:
    the file is memory-mapped, its tensors are not read."""
    import torch  # here: planning imports this module for records too

    path = Path(path)
    if not path.exists():
        return f"{path} is missing"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated, not a zip archive, not a torch file
        return f"{path} cannot be read ({type(exc).__name__}: {exc}): truncated or not a torch file"
    if not isinstance(payload, dict):
        return f"{path} holds a {type(payload).__name__}, not the dict attnbench writes"
    wrong = [f"{k} {payload.get(k)!r}, expected {v!r}" for k, v in want.items() if payload.get(k) != v]
    return f"{path} was made with other settings ({'; '.join(wrong)})" if wrong else None


def content_digest(path: Path) -> str:
    """sha256 of a torch file's bytes: two saves of the same objects through ``atomic_torch_save`` (torch
    writing to an open file, so its archive is always named ``archive``) are byte-identical."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def note_prepared(dataset: Path) -> str:
    """After ``dataset`` was (re)written, compare its content digest with the one recorded beside it
    (``paths.dataset_digest_file``): "same" (it gets the recorded time back, and the record keeps it),
    "changed" or "new" (nothing recorded); the latter two record the digest and its time now. The
    record also names the file (inode, size) that was compared: see ``keep_prepared_time``."""
    dataset = Path(dataset)
    sidecar = paths.dataset_digest_file(dataset)
    digest = content_digest(dataset)
    try:
        noted = json.loads(sidecar.read_text(encoding="utf-8"))
        status = "same" if noted["sha256"] == digest else "changed"
        mtime_ns = int(noted["mtime_ns"])
    except (OSError, ValueError, KeyError, TypeError):
        status, mtime_ns = "new", 0
    stat = dataset.stat()
    if status == "same":
        os.utime(dataset, ns=(stat.st_atime_ns, mtime_ns))
    else:
        mtime_ns = stat.st_mtime_ns
    atomic_write_json(sidecar, {"sha256": digest, "mtime_ns": mtime_ns, "inode": stat.st_ino, "bytes": stat.st_size})
    return status


def keep_prepared_time(dataset: Path) -> bool:
    """Give ``dataset`` back the time recorded by ``note_prepared`` if it is still the very file compared
    then (same inode and size) and its time has moved (Snakemake touches every output of a job after it
    ends); returns whether it did. A file written by anything else is left alone."""
    dataset = Path(dataset)
    try:
        noted = json.loads(paths.dataset_digest_file(dataset).read_text(encoding="utf-8"))
        stat = dataset.stat()
        same_file = (int(noted["inode"]), int(noted["bytes"])) == (stat.st_ino, stat.st_size)
        mtime_ns = int(noted["mtime_ns"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not same_file or stat.st_mtime_ns == mtime_ns:
        return False
    os.utime(dataset, ns=(stat.st_atime_ns, mtime_ns))
    return True
