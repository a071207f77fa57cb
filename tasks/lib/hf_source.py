"""Hugging Face ``datasets`` data from a hub id or local files, one loader (``load_source``).

Used by the text tasks (through ``labelled_texts``) and by ``image``.

A source is one of

- a hub id (``stanfordnlp/imdb``, ``fancyzhx/ag_news``, ``stanfordnlp/sst2``): read from
  the Hugging Face cache, downloaded first unless offline mode is on;
- a local folder: ``datasets`` finds its splits from the file names (``train*.csv``,
  ``test*.parquet``, ``validation*.jsonl``, ...);
- one local file (.csv, .tsv, .json, .jsonl, .parquet): one pool of rows, from which
  validation and test are carved (or a ``split_column`` assigns the rows);
- ``data_files``: local files per split, e.g. ``{train: a.csv, test: b.csv}``.

``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1`` are read when a source is loaded (not only
when ``datasets`` is imported), so nothing is downloaded when either is set. Local files are
checked before ``datasets`` reads them, and its read errors are said plainly
(``local_file_checks``).

``datasets`` is imported inside the functions that use it: it takes seconds, and the tasks that
generate their data (and the pipeline's planning) never need it.
"""
from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from attnbench.tasks.base import DataError
from attnbench.tasks.lib.local_file_checks import BUILDERS, HeldErrors, check_local_file, folder_files, local_error

_TRUE = {"1", "ON", "YES", "TRUE"}
#: local files per split (``data_files``): split -> one file or a list of files
DataFiles = Mapping[str, str | Sequence[str]]
#: ``datasets``' DatasetDict (split -> Dataset) and Dataset (one split): ``datasets`` ships no type
#: information, so to a type checker its names are Any
DatasetDict = Any
Dataset = Any


# ---------------------------------------------------------------- hub or local, offline honoured

def offline_mode() -> bool:
    """Whether offline mode is on now (the environment, or ``datasets``' own setting)."""
    env = any(os.environ.get(k, "").upper() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    try:
        import datasets

        return env or bool(datasets.config.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return env


@contextlib.contextmanager
def _offline_honoured() -> Iterator[None]:
    """``datasets`` and ``huggingface_hub`` read the offline variables at import time; a variable
    set later (a test's monkeypatch, a caller's os.environ) is applied for this load."""
    import datasets
    import huggingface_hub.constants as hub_constants

    if not offline_mode():
        yield
        return
    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def is_local(path: str) -> bool:
    """A local path (existing, absolute, ./-relative, or a data file name) rather than a hub id."""
    p = Path(path).expanduser()
    return (p.exists() or str(path).startswith(("/", ".", "~")) or p.suffix.lower() in BUILDERS
            or str(path).count("/") > 1)


def download_command(hub_id: str, subset: str = "") -> str:
    args = f"'{hub_id}'" + (f", '{subset}'" if subset else "")
    return f"python -c \"import datasets; datasets.load_dataset({args})\""


def _builder(files: list[Path], where: str) -> tuple[str, dict[str, Any]]:
    """The ``datasets`` builder (csv, json, parquet) that reads all of ``files``, and its options."""
    kinds = {BUILDERS.get(f.suffix.lower()) for f in files}
    if None in kinds or len(kinds) != 1:
        suffixes = sorted({f.suffix or "(none)" for f in files})
        raise DataError(f"{where}: cannot read files ending in {', '.join(suffixes)} together; "
                        f"use one of {', '.join(BUILDERS)} for all of them")
    extra = {"delimiter": "\t"} if all(f.suffix.lower() == ".tsv" for f in files) else {}
    kind = kinds.pop()
    assert kind is not None  # a file of no known suffix was refused above
    return kind, extra


# ---------------------------------------------------------------- one loader, and what it would not find

def load_source(path: str, *, what: str, config_key: str, expected: str, default_hub_id: str = "",
                subset: str = "", data_files: DataFiles | None = None, local_form: str = "") -> tuple[DatasetDict, str]:
    """(a ``datasets.DatasetDict``, a description of where it came from) for a hub id, a local
    folder, one local file, or ``data_files`` (split -> file or files).

    ``what`` names the data in messages, ``config_key`` is the config entry to point at local
    files, ``expected`` describes the columns the files must have, ``local_form`` the local
    files that would do (default: a folder of split files or one file, with ``expected``).
    Every failure is a ``DataError`` that says what is missing and how to get it; local files are
    checked first (``check_local_file``) and their read errors name the file and the cause."""
    import datasets

    local_form = local_form or ("a local folder with train/test files or one .csv/.tsv/.jsonl/.parquet file, "
                                f"with {expected}")
    local_hint = f"or set {config_key} to {local_form}"
    local: dict[str, list[Path]] | None = None  # split -> the local files read, None for a hub id
    if data_files:
        files = {split: [Path(f).expanduser() for f in ([v] if isinstance(v, str) else v)]
                 for split, v in data_files.items()}
        missing = [str(f) for fs in files.values() for f in fs if not f.is_file()]
        if missing:
            raise DataError(f"{what}: data file(s) {', '.join(missing)} do not exist; expected files with {expected}")
        kind, extra = _builder([f for fs in files.values() for f in fs], what)
        args: tuple[str, ...] = (kind,)
        kwargs: dict[str, Any] = {"data_files": {s: [str(f) for f in fs] for s, fs in files.items()}, **extra}
        origin = "local files " + ", ".join(f"{s}: {', '.join(map(str, fs))}" for s, fs in files.items())
        local = files
    elif is_local(path):
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"{what}: {p} does not exist; expected {local_form}"
                            + (f". Or use the Hugging Face copy: download it once with "
                               f"`{download_command(default_hub_id)}` and set {config_key} to '{default_hub_id}'"
                               if default_hub_id else ""))
        if p.is_file():
            kind, extra = _builder([p], what)
            args, kwargs = (kind,), {"data_files": {"train": str(p)}, **extra}
            origin = f"local file {p}"
            local = {"train": [p]}
        else:
            args, kwargs = (str(p),), {}
            origin = f"local folder {p}"
            local = folder_files(p)
    else:
        args, kwargs = (str(path),), ({"name": subset} if subset else {})
        origin = f"Hugging Face dataset {path}" + (f" ({subset})" if subset else "")
    for f in [f for fs in (local or {}).values() for f in fs]:
        check_local_file(f, what)
    held = HeldErrors()
    try:
        with _offline_honoured(), held if local is not None else contextlib.nullcontext():
            ds = datasets.load_dataset(*args, **kwargs)
    except Exception as exc:  # every loading failure becomes a DataError with the way out
        if local is not None:  # the files are there: say what is wrong with them, suggest no download
            raise local_error(exc, what, origin, local, held.messages, expected) from exc
        hub_id = str(path)
        how = (f"download it once with `{download_command(hub_id, subset)}` on a machine with network "
               "access (it lands in the Hugging Face cache, HF_HOME), ")
        raise DataError(
            f"could not load {what} from {origin} ({type(exc).__name__}: {exc}). "
            + ("Offline mode is on (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE), so only the local Hugging Face "
               "cache is read: " if offline_mode() else "")
            + how + local_hint) from exc
    if not isinstance(ds, datasets.DatasetDict):  # pragma: no cover -- load_dataset without split gives a dict
        ds = datasets.DatasetDict({"train": ds})
    return ds, origin


def write_csv(path: Path, header: list[str], rows: Iterable[Sequence[object]]) -> Path:
    """A small CSV file (header, then ``rows``), e.g. the tiny source of ``Task.tiny_params``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def hub_cached(hub_id: str) -> bool:
    """Whether the Hugging Face caches hold something of dataset ``hub_id`` (the hub download
    or ``datasets``' prepared copy): a cheap check made when a run is planned."""
    import datasets
    import huggingface_hub.constants as hub_constants

    hub = Path(hub_constants.HF_HUB_CACHE) / ("datasets--" + hub_id.replace("/", "--"))
    prepared = Path(datasets.config.HF_DATASETS_CACHE) / hub_id.replace("/", "___")
    return hub.is_dir() or prepared.is_dir()


def missing_source(path: str, *, what: str, config_key: str, default_hub_id: str = "", subset: str = "",
                   data_files: DataFiles | None = None) -> list[str]:
    """What ``load_source`` would not find, said with how to get it (empty when all is there):
    local files or folders that do not exist, or a hub dataset absent from the local cache."""
    if data_files:
        missing = [str(Path(f).expanduser()) for v in data_files.values() for f in ([v] if isinstance(v, str) else v)
                   if not Path(f).expanduser().is_file()]
        return [f"{what}: data file(s) {', '.join(missing)} do not exist ({config_key}.data_files)"] if missing else []
    if is_local(path):
        if Path(path).expanduser().exists():
            return []
        hub = (f"; or download the Hugging Face copy with `{download_command(default_hub_id)}` and set "
               f"{config_key}.path to '{default_hub_id}'" if default_hub_id else "")
        return [f"{what}: {Path(path).expanduser()} does not exist ({config_key}.path){hub}"]
    if hub_cached(path):
        return []
    when = ("offline mode is on, so it will not be downloaded" if offline_mode()
            else "it will be downloaded when its data is prepared")
    return [f"{what}: Hugging Face dataset {path!r} is not in the local cache ({when}); fetch it beforehand with "
            f"`{download_command(path, subset)}` on a machine with network access (HF_HOME must point at the same "
            f"cache), or set {config_key}.path to local files"]
