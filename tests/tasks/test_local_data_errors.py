"""Local text data that cannot be read (empty, a header only, not UTF-8, ragged rows, a missing column...):
the DataError names the file and the real cause, in one line, and suggests no unrelated download (the
data is there; it is the file that needs fixing)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from attnbench.harness.cli import main
from attnbench.tasks.base import DataError, build_task
from attnbench.tasks.lib import local_file_checks
from conftest import REPO

SHARED = REPO.parent / "shared" / "data"
AG_NEWS = SHARED / "ag_news" / "test.csv"
IMDB_SAMPLE = SHARED / "imdb_sample" / "texts.csv"

ROWS = "text,label\ngood plot,pos\nbad actor,neg\nfine scene,pos\n"


@pytest.fixture(autouse=True)
def _offline(offline_hf):
    """Offline, with empty Hugging Face caches (conftest's ``offline_hf``): nothing is downloaded."""
    return offline_hf


def _error(tmp_path, params: dict, task: str = "textcls") -> str:
    extra = {"tokenizer": "bytes"} if task == "textcls" else {}
    with pytest.raises(DataError) as info:
        build_task(task, {"seq_len": 32, **extra, **params}).prepare(tmp_path / "work")
    msg = str(info.value)
    assert "\n" not in msg  # attnbench prints it as one line
    assert "download" not in msg.lower() and "AG News" not in msg and "fancyzhx" not in msg
    assert "An error occurred while generating the dataset" not in msg
    return msg


def _file(tmp_path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


CASES = {  # file name, its bytes, words the message must hold
    "empty csv": ("d.csv", b"", ["is empty (0 bytes)", "no header and no rows"]),
    "empty tsv": ("d.tsv", b"", ["is empty (0 bytes)"]),
    "empty jsonl": ("d.jsonl", b"", ["is empty (0 bytes)", "no rows"]),
    "empty parquet": ("d.parquet", b"", ["is empty (0 bytes)"]),
    "blank lines csv": ("d.csv", b"\n  \r\n\n", ["is empty: only blank lines", "no header and no rows"]),
    "blank lines jsonl": ("d.jsonl", b"\n\n", ["is empty: only blank lines", "no rows"]),
    "header only csv": ("d.csv", b"text,label\n", ["has no rows: only a header line ('text,label')"]),
    "header only, no newline": ("d.csv", b"text,label", ["has no rows", "'text,label'"]),
    "header and blank lines csv": ("d.csv", b"text,label\r\n\r\n\n", ["has no rows", "'text,label'"]),
    "header only tsv": ("d.tsv", b"text\tlabel\n", ["has no rows", "'text\\tlabel'"]),
    "empty json array": ("d.json", b"[]", ["has no rows"]),
    "latin-1 csv": ("d.csv", "text,label\ngood,pos\ncafé,neg\n".encode("latin-1"),
                    ["is not UTF-8", "byte 0xe9 at byte offset 23 (line 3, byte 4 of the line)", "b'caf\\xe9,neg'",
                     "iconv -f latin1 -t utf-8"]),
    "latin-1 tsv": ("d.tsv", "text\tlabel\nna\xefve\tneg\n".encode("latin-1"),
                    ["is not UTF-8", "byte 0xef at byte offset 13 (line 2, byte 3 of the line)"]),
    "latin-1 jsonl": ("d.jsonl", '{"text": "ok", "label": 1}\n{"text": "caf\xe9", "label": 0}\n'.encode("latin-1"),
                      ["is not UTF-8", "byte offset 40 (line 2, byte 14 of the line)"]),
    "truncated utf-8 at the end": ("d.csv", "text,label\ngood,pos\ncafé".encode()[:-1],
                                   ["is not UTF-8", "byte 0xc3 at byte offset 23 (line 3, byte 4 of the line)",
                                    "unexpected end of data"]),
    "utf-16": ("d.csv", "text,label\ncafé,pos\n".encode("utf-16"),
               ["is not UTF-8", "byte offset 0", "UTF-16 byte-order mark", "iconv -f utf-16"]),
    "ragged csv": ("d.csv", "text,label\na,pos\nb,neg,extra,more\nc,pos\n",
                   ["cannot be parsed as CSV", "Expected 2 fields in line 3, saw 4", "ragged row"]),
    "ragged tsv": ("d.tsv", "text\tlabel\na\tpos\nb\tneg\textra\n",
                   ["cannot be parsed as TSV", "Expected 2 fields in line 3, saw 3"]),
    "broken jsonl": ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label"\n{"text": "c", "label": 0}\n',
                     ["is not valid JSON lines", "line 2, column 22: Expecting ':' delimiter"]),
    "missing text column": ("d.csv", "body,label\nx,pos\ny,neg\n",
                            ["no column(s) 'text'", "columns found: body, label"]),
    "missing label column": ("d.jsonl", '{"text": "x", "sentiment": 1}\n{"text": "y", "sentiment": 0}\n',
                             ["no column(s) 'label'", "columns found: text, sentiment"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_local_file(tmp_path, case):
    name, content, words = CASES[case]
    path = _file(tmp_path, name, content)
    msg = _error(tmp_path, {"path": str(path)})
    assert str(path) in msg
    for word in words:
        assert word in msg


def test_parquet_without_rows_or_not_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype="int64")}).to_parquet(path)
    msg = _error(tmp_path, {"path": str(path)})
    assert str(path) in msg and "has no rows" in msg
    junk = _file(tmp_path, "junk.parquet", b"not a parquet file")
    msg = _error(tmp_path, {"path": str(junk)})
    assert str(junk) in msg and "cannot be read as Parquet" in msg


@pytest.mark.parametrize("task", ["text", "textcls"])
def test_the_file_at_fault_is_named_among_several(tmp_path, task):
    """data_files with a good train file: the message names the bad file only (found before reading,
    or named by the reader's held-back error), and the text task says the same as textcls."""
    good = _file(tmp_path, "train.csv", ROWS)
    header_only = _file(tmp_path, "test.csv", "text,label\n")
    msg = _error(tmp_path, {"data_files": {"train": str(good), "test": str(header_only)}}, task)
    assert str(header_only) in msg and str(good) not in msg and "has no rows" in msg
    ragged = _file(tmp_path, "held.csv", "text,label\na,pos\nb,neg,x\n")
    msg = _error(tmp_path, {"data_files": {"train": str(good), "test": str(ragged)}}, task)
    assert str(ragged) in msg and str(good) not in msg and "Expected 2 fields in line 3, saw 3" in msg
    broken = _file(tmp_path, "held.jsonl", '{"text": "a", "label": 1}\n{"text": \n')
    fine = _file(tmp_path, "train.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    msg = _error(tmp_path, {"data_files": {"train": str(fine), "test": str(broken)}}, task)
    assert str(broken) in msg and str(fine) not in msg and "line 2" in msg


def test_bad_file_in_a_folder(tmp_path):
    """A folder source: the files datasets would read (by its split file-name rules) are checked too."""
    folder = tmp_path / "news"
    folder.mkdir()
    _file(folder, "train.csv", ROWS)
    bad = _file(folder, "test.csv", "text,label\nna\xefve,pos\n".encode("latin-1"))
    msg = _error(tmp_path, {"path": str(folder)})
    assert str(bad) in msg and "is not UTF-8" in msg and "line 2" in msg


def test_checked_in_chunks(tmp_path, monkeypatch):
    """The check streams the file: with 3-byte chunks, characters and lines cut at chunk edges are
    still read right (a good file passes, the bad byte's offset and line are exact)."""
    monkeypatch.setattr(local_file_checks, "CHECK_CHUNK", 3)
    rows = [{"text": f"{i} café ☕ naïve", "label": i % 2} for i in range(30)]
    good = tmp_path / "good.csv"
    pd.DataFrame(rows).to_csv(good, index=False)
    local_file_checks.check_local_file(good, "data")  # nothing to say
    text = good.read_text(encoding="utf-8")
    bad = _file(tmp_path, "bad.csv", text.encode() + "7 déjà,1\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        local_file_checks.check_local_file(bad, "data")
    assert f"byte offset {len(text.encode()) + 3} (line {len(rows) + 2}, byte 4 of the line)" in str(info.value)
    header_only = _file(tmp_path, "h.csv", "\n\nlabel,title,description\r\n\r\n")
    with pytest.raises(DataError, match="only a header line"):
        local_file_checks.check_local_file(header_only, "data")


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    empty = _file(tmp_path, "news.csv", b"")
    params = json.dumps({"path": str(empty), "tokenizer": "bytes"})
    assert main(["prepare", "--task", "textcls", "--data-json", params, "--out", str(tmp_path / "d.pt")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.endswith("\n")
    assert str(empty) in err and "is empty" in err and "download" not in err.lower()
    assert not (tmp_path / "d.pt").exists()


# ---------------------------------------------------------------- from the real shared samples

@pytest.mark.skipif(not IMDB_SAMPLE.exists(), reason=f"the shared IMDb sample {IMDB_SAMPLE} is absent")
def test_imdb_sample_saved_as_latin1(tmp_path):
    """fastai's IMDB_SAMPLE re-saved as Latin-1 (as a spreadsheet might): the first accented character
    is reported at its exact byte offset and line, through the text task."""
    raw = IMDB_SAMPLE.read_text(encoding="utf-8")
    first = next(i for i, ch in enumerate(raw) if ord(ch) > 127 and ord(ch) < 256)
    path = _file(tmp_path, "texts.csv", raw.encode("latin-1", errors="replace"))
    msg = _error(tmp_path, {"path": str(path), "split_column": "is_valid"}, task="text")
    offset = len(raw[:first].encode("latin-1", errors="replace"))
    line = raw[:first].count("\n") + 1
    assert f"byte 0x{ord(raw[first]):02x} at byte offset {offset} (line {line}," in msg and str(path) in msg


@pytest.mark.skipif(not AG_NEWS.exists(), reason=f"the shared AG News sample {AG_NEWS} is absent")
def test_ag_news_header_and_cut_rows(tmp_path):
    """The AG News CSV's header line alone has no rows; its first rows with one row's quoting broken
    are a parse error at that row's line."""
    lines = AG_NEWS.read_bytes().split(b"\r\n")
    params = {"text_columns": ["title", "description"], "label_offset": 1}
    header = _file(tmp_path, "header.csv", lines[0] + b"\r\n")
    msg = _error(tmp_path, {"path": str(header), **params})
    assert str(header) in msg and "has no rows: only a header line ('label,title,description')" in msg
    rows = list(lines[:40])
    rows[20] = rows[20] + b",an extra field,and another"
    cut = _file(tmp_path, "cut.csv", b"\r\n".join(rows) + b"\r\n")
    msg = _error(tmp_path, {"path": str(cut), **params})
    assert str(cut) in msg and "Expected 3 fields in line 21, saw 5" in msg
