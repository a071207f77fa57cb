"""Labelled text data through Hugging Face ``datasets``: a hub id or local files, one loader.

Shared by the text tasks (``text``, ``textcls``) and by ``image`` (``load_source``).

A source is one of

- a hub id (``stanfordnlp/imdb``, ``fancyzhx/ag_news``, ``stanfordnlp/sst2``): read from
  the Hugging Face cache, downloaded first unless offline mode is on;
- a local folder: ``datasets`` finds its splits from the file names (``train*.csv``,
  ``test*.parquet``, ``validation*.jsonl``, ...);
- one local file (.csv, .tsv, .json, .jsonl, .parquet): one pool of rows, from which
  validation and test are carved (or a ``split_column`` assigns the rows);
- ``data_files``: local files per split, e.g. ``{train: a.csv, test: b.csv}``.

``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1`` are read when a source is loaded (not only
when ``datasets`` is imported), so nothing is downloaded when either is set.

Split rules: a source's own validation split (``validation``/``valid``/``val``/``dev``) is
used when it has one, else validation is carved from train with a seeded permutation;
test is the source's test split, carved from train only when the source has none (or its
labels are hidden, as SST-2's are). Nothing is ever selected on the test split.

``datasets`` is imported inside the functions that use it: it takes seconds, and the tasks that
generate their data (and the pipeline's planning) never need it.
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnbench.harness.core.registry import param
from attnbench.tasks.base import DataError

#: local file suffix -> the ``datasets`` builder that reads it
BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
#: a source's split names -> ours; other splits (IMDb's ``unsupervised``) are left out
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}
#: values of a ``split_column`` -> our split; a boolean column is fastai's ``is_valid``
SPLIT_VALUES = {**SPLIT_NAMES, "true": "val", "false": "train"}
_TRUE = {"1", "ON", "YES", "TRUE"}


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
    return kinds.pop(), extra


# ---------------------------------------------------------------- local files: checked first, errors said plainly

#: bytes read at a time when a local file is checked: a file is streamed, never held whole
CHECK_CHUNK = 1 << 20
_BLANK = b" \t\r\n\f\v"


def _not_utf8(path: Path, what: str, exc: UnicodeDecodeError, base: int, newlines: int, line_start: int) -> str:
    """The message for the first byte of ``path`` that is not UTF-8: ``exc`` from decoding bytes that
    start at file offset ``base``, after ``newlines`` newlines; ``line_start``: where the line began."""
    data, at = exc.object, exc.start
    before = data[:at]
    nl = before.rfind(b"\n")
    start = base + nl + 1 if nl >= 0 else line_start
    line, offset = newlines + before.count(b"\n") + 1, base + at
    end = data.find(b"\n", at)
    near = data[max(nl + 1, at - 24): min(at + 24, end if end >= 0 else at + 24)]
    utf16 = offset == 0 and data[:2] in (b"\xff\xfe", b"\xfe\xff")
    return (f"{what}: {path} is not UTF-8 text: byte 0x{data[at]:02x} at byte offset {offset} (line {line}, byte "
            f"{offset - start + 1} of the line) cannot be decoded as UTF-8 ({exc.reason}), near {near!r}"
            + ("; it starts with a UTF-16 byte-order mark" if utf16 else "")
            + f"; save the file as UTF-8, e.g. `iconv -f {'utf-16' if utf16 else 'latin1'} -t utf-8 old{path.suffix} "
            f"> new{path.suffix}`" + ("" if utf16 else " for a Latin-1/Windows-1252 file"))


def check_local_file(path: Path, what: str) -> None:
    """A DataError naming ``path`` when it cannot hold rows, raised before ``datasets`` reads it (whose
    own errors say only "An error occurred while generating the dataset"): an empty file (0 bytes or
    blank lines only), a CSV/TSV with a header line and no rows, a CSV/TSV/JSON file that is not UTF-8
    (the offset and line of the first bad byte), a Parquet file without rows or not Parquet at all.
    Reads a text file once, CHECK_CHUNK bytes at a time; of a Parquet file only its footer."""
    path = Path(path)
    kind = BUILDERS.get(path.suffix.lower())
    nothing = "no header and no rows" if kind == "csv" else "no rows"
    if path.stat().st_size == 0:
        raise DataError(f"{what}: {path} is empty (0 bytes): {nothing}")
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except Exception as exc:  # pyarrow's errors vary (ArrowInvalid, OSError): each says what is wrong
            raise DataError(f"{what}: {path} cannot be read as Parquet ({type(exc).__name__}: {exc})") from exc
        if not rows:
            raise DataError(f"{what}: {path} has no rows (a Parquet file of 0 rows)")
    if kind not in ("csv", "json"):
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = line_start = 0  # bytes and newlines before this chunk; where the current line starts
    filled, current, header = 0, False, b""  # non-blank lines seen (2 are enough), the current one, the first
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHECK_CHUNK)
            pending = decoder.getstate()[0]  # the start of a character cut by the previous chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                raise DataError(_not_utf8(path, what, exc, offset - len(pending), newlines, line_start)) from None
            if not chunk:
                break
            # \r ends lines too: a file with old Mac line ends is not a header alone
            for i, part in enumerate(chunk.replace(b"\r", b"\n").split(b"\n") if filled < 2 else ()):
                if i:  # the line before this part has ended
                    filled, current = filled + current, False
                    if filled == 2:
                        break
                if not current and part.strip(_BLANK):
                    current, header = True, header or part[:80]
            newlines += chunk.count(b"\n")
            end = chunk.rfind(b"\n")
            line_start = offset + end + 1 if end >= 0 else line_start
            offset += len(chunk)
    filled += current
    if not filled:
        raise DataError(f"{what}: {path} is empty: only blank lines, {nothing}")
    if kind == "csv" and filled < 2:
        raise DataError(f"{what}: {path} has no rows: only a header line "
                        f"({header.decode('utf-8', 'replace').strip()!r})")


def _folder_files(folder: Path) -> dict[str, list[Path]]:
    """The data files that ``datasets`` reads from ``folder``, per split, by its own file-name rules
    (those of the most common kind); empty when it finds none (``load_dataset`` then says so)."""
    try:
        from datasets.data_files import DataFilesDict, get_data_patterns

        found = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    except Exception:  # no data files at all, or a layout it cannot resolve: load_dataset's error says which
        return {}
    kinds = Counter(BUILDERS.get(Path(f).suffix.lower()) for fs in found.values() for f in fs)
    kinds.pop(None, None)
    if not kinds:
        return {}
    kind = kinds.most_common(1)[0][0]
    return {str(s): [Path(f) for f in fs if BUILDERS.get(Path(f).suffix.lower()) == kind] for s, fs in found.items()}


class _HeldErrors(logging.Filter):
    """Holds back the errors that ``datasets``' file readers log ("Failed to read file '...'"): the
    DataError raised instead names the file and the cause in one line."""

    LOGGERS = tuple(f"datasets.packaged_modules.{m}.{m}" for m in ("csv", "json", "parquet"))

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        self.messages.append(record.getMessage())
        return False

    def __enter__(self) -> _HeldErrors:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc_info) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)


def _bad_json_line(path: Path) -> str:
    """Where a JSON lines file first fails to parse ("line 7 ..."), read line by line; empty when every line
    parses, or when the file is one JSON document (a .json whose first line is not a value of its own)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = True
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                return ("" if first and path.suffix.lower() == ".json"
                        else f"line {n}, column {exc.pos + 1}: {exc.msg}")
            first = False
    return ""


def _local_error(exc: BaseException, what: str, origin: str, files: dict[str, list[Path]], held: list[str],
                 expected: str) -> DataError:
    """``datasets``' failure to read local files as a DataError that names the file and the cause found in
    the exception's chain (a CSV parse error with its line, invalid JSON, no rows, not UTF-8); never a
    download: the data is there, it is the file that needs fixing."""
    import pandas as pd

    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    every = [f for fs in files.values() for f in fs]
    # the file: the one that a held-back reader error names, else the only one
    named = {Path(m).resolve() for msg in held for m in re.findall(r"'([^']+)'", msg)}
    culprit = next((f for f in every if f.resolve() in named), every[0] if len(every) == 1 else None)
    where = str(culprit) if culprit else origin
    for e in chain:
        text = " ".join(str(e).split())  # one line
        if isinstance(e, UnicodeDecodeError):
            return DataError(f"{what}: {where} is not UTF-8 text ({text}); save the file as UTF-8")
        if isinstance(e, pd.errors.EmptyDataError):
            return DataError(f"{what}: {where} is empty: no header and no rows ({text})")
        if isinstance(e, pd.errors.ParserError):
            detail = text.removeprefix("Error tokenizing data. C error: ").strip()
            form = "TSV" if culprit and culprit.suffix.lower() == ".tsv" else "CSV"
            why = ("a ragged row: every row needs as many fields as the header line; quote fields that contain the "
                   "delimiter" if re.search(r"Expected \d+ fields", detail) else
                   "a quote opened and never closed" if "EOF inside string" in detail else "")
            return DataError(f"{what}: {where} cannot be parsed as {form}: {detail}" + (f" ({why})" if why else ""))
        empty_split = re.search(r'Instruction "([^"]+)" corresponds to no data', text)
        if empty_split:
            split = empty_split.group(1)
            names = ", ".join(map(str, files.get(split, []))) or f"the {split!r} split of {origin}"
            return DataError(f"{what}: {names} has no rows")
        if "JSON parse error" in text or isinstance(e, json.JSONDecodeError):
            line = _bad_json_line(culprit) if culprit else ""
            form = "JSON lines" if line or (culprit and culprit.suffix.lower() == ".jsonl") else "JSON"
            return DataError(f"{what}: {where} is not valid {form}: {line or text}")
    cause = next((c for c in reversed(chain) if str(c).strip()), exc)
    return DataError(f"could not load {what} from {origin} ({type(cause).__name__}: {' '.join(str(cause).split())}); "
                     f"expected {expected}")


def load_source(path: str, *, what: str, config_key: str, expected: str, default_hub_id: str = "",
                subset: str = "", data_files: dict | None = None, local_form: str = ""):
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
        args: tuple = (kind,)
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
            local = _folder_files(p)
    else:
        args, kwargs = (str(path),), ({"name": subset} if subset else {})
        origin = f"Hugging Face dataset {path}" + (f" ({subset})" if subset else "")
    for f in [f for fs in (local or {}).values() for f in fs]:
        check_local_file(f, what)
    held = _HeldErrors()
    try:
        with _offline_honoured(), held if local is not None else contextlib.nullcontext():
            ds = datasets.load_dataset(*args, **kwargs)
    except Exception as exc:  # every loading failure becomes a DataError with the way out
        if local is not None:  # the files are there: say what is wrong with them, suggest no download
            raise _local_error(exc, what, origin, local, held.messages, expected) from exc
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


def write_csv(path: Path, header: list[str], rows: list[tuple]) -> Path:
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
                   data_files: dict | None = None) -> list[str]:
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


# ---------------------------------------------------------------- labelled texts

PATH_HELP = ("a Hugging Face dataset id, a local folder (splits from file names), or one local "
             ".csv/.tsv/.json/.jsonl/.parquet file (one pool: validation and test are carved from it)")


@dataclass(frozen=True)
class TextSourceConfig:
    """Where labelled texts come from and how they are split (shared by the text tasks)."""

    path: str = param("stanfordnlp/imdb", PATH_HELP)
    subset: str = param("", "hub sources: the dataset's configuration name (e.g. 'sst2' for 'nyu-mll/glue')")
    data_files: dict = param({}, "local files per split, e.g. {train: a.csv, test: b.csv} (a file or a list); "
                             "when set, `path` is ignored; one split must be train unless split_column assigns the "
                             "rows")
    text_columns: tuple[str, ...] = param(("text",), "column(s) holding the text, at least one; several are joined "
                                          "with text_separator (AG News CSV: [title, description])")
    text_separator: str = param(" ", "string put between the text columns")
    label_column: str = param("label", "column holding the label (integers, booleans or strings)")
    label_names: tuple[str, ...] = param((), "class names in id order, each once; string labels map to their "
                                         "position here (empty: string labels in sorted order, integer labels keep "
                                         "their values)")
    label_offset: int = param(0, "subtracted from integer labels, e.g. 1 for AG News CSV labels 1..4")
    split_column: str = param("", "a column assigning each row to a split (values train/validation/valid/val/dev/test, "
                              "or booleans as fastai's is_valid: True = validation); empty: the source's own splits")
    val_fraction: float = param(0.1, "share of the training rows held out for validation when the source has no "
                                "validation split; with test_fraction below 1 in all (the rest is for training)",
                                exclusiveMinimum=0.0, maximum=0.5)
    test_fraction: float = param(0.1, "share of the training rows held out for testing, only when the source has no "
                                 "(labelled) test split; with val_fraction below 1 in all (the rest is for training)",
                                 exclusiveMinimum=0.0, maximum=0.5)
    max_train: int = param(0, "use at most this many training rows, a seeded random subset (0 = all)", minimum=0)
    data_seed: int = param(0, "seed of the carved splits and of the max_train subset")
    seq_len: int = param(4096, "tokens per example: longer texts are cut, shorter ones padded", minimum=1)

    def problems(self, key=repr) -> list[str]:
        """Settings that cannot give labelled train, val and test splits, one line each; ``key`` (a
        function of a field name) names a field in the message: the config check passes one giving
        its full key, e.g. 'tasks.text.data.val_fraction'."""
        problems = []
        if self.val_fraction + self.test_fraction >= 1:
            problems.append(f"{key('val_fraction')} is {self.val_fraction:g} and {key('test_fraction')} is "
                            f"{self.test_fraction:g}; carved from the training rows together they leave none for "
                            "training, so they must sum below 1")
        if not self.text_columns:
            problems.append(f"{key('text_columns')} is []; name at least one column holding the text")
        repeated = sorted({name for name in self.label_names if self.label_names.count(name) > 1})
        if repeated:
            problems.append(f"{key('label_names')} is {list(self.label_names)}: {', '.join(map(repr, repeated))} "
                            "more than once; each class name once (its position is the label id)")
        for split, files in self.data_files.items():
            listed = [files] if isinstance(files, str) else files
            if not isinstance(listed, (list, tuple)) or not listed or not all(
                    isinstance(f, str) and f for f in listed):
                problems.append(f"{key(f'data_files.{split}')} is {files!r}; give a file path or a list of them")
        if self.data_files and not self.split_column and "train" not in map(SPLIT_NAMES.get, self.data_files):
            problems.append(f"{key('data_files')} has the splits {', '.join(map(str, self.data_files))} but no train; "
                            "name the training file(s) `train:` (or set split_column to assign each row a split)")
        return problems


@dataclass
class LabelledTexts:
    """Texts and integer labels per split (train, val, test), with where they came from."""

    texts: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    label_names: list[str]
    origin: str
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def describe(self) -> str:
        sizes = ", ".join(f"{s} {len(self.texts[s])}" for s in ("train", "val", "test"))
        return f"{self.origin} ({sizes}" + "".join(f"; {n}" for n in self.notes) + ")"


def _columns_of(part, cfg: TextSourceConfig, split: str, origin: str, config_key: str) -> None:
    wanted = [*cfg.text_columns, cfg.label_column] + ([cfg.split_column] if cfg.split_column else [])
    missing = [c for c in wanted if c not in part.column_names]
    if missing:
        raise DataError(f"{origin}, split {split!r}: no column(s) {', '.join(map(repr, missing))}; "
                        f"columns found: {', '.join(part.column_names)}. Set {config_key}.text_columns / "
                        "label_column / split_column to the right names")


def _column(part, name: str) -> list:
    """A column as a Python list (through Arrow: iterating a ``datasets`` column is ~100x slower)."""
    return part.with_format("arrow")[name].to_pylist()


def _join(part, columns: tuple[str, ...], sep: str) -> list[str]:
    cols = [_column(part, c) for c in columns]
    if len(cols) == 1:
        return ["" if v is None else str(v) for v in cols[0]]
    return [sep.join("" if v is None else str(v) for v in row) for row in zip(*cols, strict=True)]


def _label_ids(raw: dict[str, list], cfg: TextSourceConfig, class_names: list[str] | None,
               where: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Labels as int64 ids 0..k-1 per split, and the class names."""
    values = [v for vs in raw.values() for v in vs]
    if any(v is None for v in values):
        raise DataError(f"{where}: some rows have no label in column {cfg.label_column!r}")
    if values and all(isinstance(v, str) for v in values):
        names = list(cfg.label_names) or sorted(set(values))
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise DataError(f"{where}: label(s) {', '.join(map(repr, unknown[:10]))} are not in label_names "
                            f"{names}")
        return {s: np.array([index[v] for v in vs], dtype=np.int64) for s, vs in raw.items()}, names
    if not all(isinstance(v, (bool, int, np.integer)) or (isinstance(v, float) and v.is_integer()) for v in values):
        kinds = sorted({type(v).__name__ for v in values})
        raise DataError(f"{where}: labels in column {cfg.label_column!r} must be all integers or all strings, "
                        f"found {', '.join(kinds)}")
    ids = {s: np.array([int(v) for v in vs], dtype=np.int64) - cfg.label_offset for s, vs in raw.items()}
    # a split whose labels are all negative is unlabelled (SST-2's test: -1); the caller drops it
    labelled = [v for s, v in ids.items() if len(v) and not (v < 0).all()]
    top = max((int(v.max()) for v in labelled), default=-1)
    names = list(cfg.label_names) or class_names or [str(i) for i in range(top + 1)]
    bad = sorted({int(x) for v in labelled for x in v if not 0 <= x < len(names)})
    if bad:
        raise DataError(f"{where}: label ids {bad[:10]} (after label_offset {cfg.label_offset}) are outside "
                        f"0..{len(names) - 1} for {len(names)} classes; set label_offset or label_names")
    return ids, names


def load_labelled_texts(cfg: TextSourceConfig, task: str, default_hub_id: str = "") -> LabelledTexts:
    """The train/val/test texts and label ids of ``cfg``'s source, split by the rules above;
    ``task`` names the config entry in messages, ``default_hub_id`` the hub copy to suggest."""
    config_key = f"tasks.{task}.data"
    expected = (f"text column(s) {', '.join(map(repr, cfg.text_columns))} and label column {cfg.label_column!r}"
                + (f" and split column {cfg.split_column!r}" if cfg.split_column else ""))
    ds, origin = load_source(cfg.path, what=f"the {task} data", config_key=f"{config_key}.path", expected=expected,
                             default_hub_id=default_hub_id,
                             subset=cfg.subset, data_files=cfg.data_files or None)
    notes: list[str] = []
    texts: dict[str, list[str]] = {}
    raw: dict[str, list] = {}
    class_names = None
    if cfg.split_column:
        for name in ds:
            _columns_of(ds[name], cfg, name, origin, config_key)
        for name in ds:
            part = ds[name]
            for text, label, value in zip(_join(part, cfg.text_columns, cfg.text_separator),
                                          _column(part, cfg.label_column), _column(part, cfg.split_column),
                                          strict=True):
                key = str(value).strip().lower()
                if key not in SPLIT_VALUES:
                    raise DataError(f"{origin}: split column {cfg.split_column!r} has the value {value!r}; "
                                    f"allowed: {', '.join(sorted(SPLIT_VALUES))}")
                split = SPLIT_VALUES[key]
                texts.setdefault(split, []).append(text)
                raw.setdefault(split, []).append(label)
        notes.append(f"splits from column {cfg.split_column!r}")
    else:
        for name in ds:
            split = SPLIT_NAMES.get(name)
            if split is None or split in texts:
                notes.append(f"split {name!r} not used")
                continue
            part = ds[name]
            _columns_of(part, cfg, name, origin, config_key)
            texts[split], raw[split] = (_join(part, cfg.text_columns, cfg.text_separator),
                                        _column(part, cfg.label_column))
            feature = part.features.get(cfg.label_column)
            if class_names is None and getattr(feature, "names", None):
                class_names = list(feature.names)
    if "train" not in texts:
        found = ", ".join(ds) if not cfg.split_column else ", ".join(texts)
        raise DataError(f"{origin} has no training split (found: {found}); point {config_key}.path at a "
                        f"single file to carve every split from it, or name the files in {config_key}.data_files")
    labels, names = _label_ids(raw, cfg, class_names, origin)
    for split in ("val", "test"):
        if split in labels and len(labels[split]) and (labels[split] < 0).all():
            notes.append(f"its {split} split has no labels (all {labels[split][0] + cfg.label_offset}): not used")
            del texts[split], labels[split]
    for split, ids in labels.items():
        if len(ids) and (ids < 0).any():
            raise DataError(f"{origin}: split {split!r} has negative label ids after label_offset {cfg.label_offset}")

    # carve what is missing from train: test first (only if absent), then validation
    rng = np.random.default_rng(cfg.data_seed)
    n = len(texts["train"])
    order = rng.permutation(n)
    cut = {}
    start = 0
    for split, fraction in (("test", cfg.test_fraction), ("val", cfg.val_fraction)):
        if split not in texts:
            k = round(n * fraction)
            cut[split] = np.sort(order[start:start + k])
            start += k
            notes.append(f"{split} carved from train ({fraction:g}, seed {cfg.data_seed})")
    rest = order[start:]
    if cfg.max_train and cfg.max_train < len(rest):
        rest = rest[: cfg.max_train]
        notes.append(f"train capped at {cfg.max_train} (seed {cfg.data_seed})")
    cut["train"] = np.sort(rest)
    pool_texts, pool_labels = texts["train"], labels["train"]
    for split, idx in cut.items():
        texts[split] = [pool_texts[i] for i in idx]
        labels[split] = pool_labels[idx]
    empty = [s for s in ("train", "val", "test") if not len(texts[s])]
    if empty:
        raise DataError(f"{origin}: split(s) {', '.join(empty)} would be empty ({n} training rows, val_fraction "
                        f"{cfg.val_fraction}, test_fraction {cfg.test_fraction}); use more data or larger fractions")
    return LabelledTexts(texts={s: texts[s] for s in ("train", "val", "test")},
                         labels={s: labels[s] for s in ("train", "val", "test")},
                         label_names=names, origin=origin, notes=notes)
