"""Local data files checked before ``datasets`` reads them, and its read errors said plainly.

``datasets``' own errors on a bad local file say little ("An error occurred while generating the
dataset"); here an empty file, a header without rows, text that is not UTF-8, a ragged CSV row or
invalid JSON is a ``DataError`` that names the file, the place and the cause. Used by
``hf_source.load_source``.
"""
from __future__ import annotations

import codecs
import json
import logging
import re
from collections import Counter
from pathlib import Path

from attnbench.tasks.base import DataError

#: local file suffix -> the ``datasets`` builder that reads it
BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
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


def folder_files(folder: Path) -> dict[str, list[Path]]:
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


class HeldErrors(logging.Filter):
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

    def __enter__(self) -> HeldErrors:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
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


def local_error(exc: BaseException, what: str, origin: str, files: dict[str, list[Path]], held: list[str],
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
