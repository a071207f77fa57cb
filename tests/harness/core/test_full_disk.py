"""A full disk is one line naming the file and the space left (harness/core/io.py), from every write: text,
JSON, tables, torch files; ``attnbench prepare`` and ``attnbench train`` exit 2 with it, no traceback.

The disk is full for real where it counts: a write's temporary file is redirected to /dev/full, whose every
write fails with ENOSPC from the kernel. Only a writer that loses the errno (torch writing to a path itself)
needs the free space faked, since the disk this test runs on has room."""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from attnbench.harness import cli
from attnbench.harness.core import io as aio
from attnbench.harness.core.errors import UserError, WriteError
from attnbench.tasks.base import save_prepared
from conftest import tiny_run

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(name, ...)``: from then on, writes of files so named go to /dev/full (their temporary file
    is a link to it, made where the real one would be, so that its removal is seen)."""
    names: set[str] = set()
    real = aio._temp_file

    def temp_file(path: Path) -> str:
        tmp = real(path)
        if path.name in names:
            os.unlink(tmp)
            os.symlink("/dev/full", tmp)
        return tmp

    monkeypatch.setattr(aio, "_temp_file", temp_file)
    return names.update


def _zero_free(monkeypatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 0))


def _assert_no_space(exc: BaseException, path: Path) -> None:
    assert isinstance(exc, WriteError) and isinstance(exc, UserError) and isinstance(exc, OSError)
    assert exc.errno == errno.ENOSPC
    text = str(exc)
    assert text.startswith(f"No space left on device while writing {path} (") and "free on /" in text
    assert "\n" not in text and "inline_container" not in text and "basic_ios" not in text


@pytest.mark.parametrize("kind", ["text", "json", "table", "torch"])
def test_every_write_on_a_full_disk_says_so_naming_the_file(tmp_path, full_disk, kind):
    target = tmp_path / {"text": "a.txt", "json": "a.json", "table": "a.csv", "torch": "a.pt"}[kind]
    write = {"text": lambda: aio.atomic_write_text(target, "x" * 100_000),
             "json": lambda: aio.atomic_write_json(target, {"a": list(range(1000))}),
             "table": lambda: aio.write_table(pd.DataFrame({"a": range(1000)}), target),
             "torch": lambda: aio.atomic_torch_save({"w": torch.zeros(100_000)}, target)}[kind]
    write()
    before = target.read_bytes()
    full_disk({target.name})
    with pytest.raises(WriteError) as info:
        write()
    _assert_no_space(info.value, target)
    assert target.read_bytes() == before  # the previous file is untouched
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # the temporary file is removed


def test_torch_writing_to_a_path_loses_the_errno_and_the_free_space_tells(tmp_path, full_disk, monkeypatch):
    """torch.save given a path writes with its own C++ file: ENOSPC becomes "enforce fail at inline_container.cc"
    or "basic_ios::clear". With (next to) no space left, that is a full disk; with room, another failure,
    raised again naming the file."""
    target = tmp_path / "a.pt"
    full_disk({target.name})

    def save() -> None:
        aio._atomic(target, lambda p: torch.save({"w": torch.zeros(100_000)}, str(p)))

    with pytest.raises(RuntimeError, match=rf"^could not write {target}: ") as info:
        save()
    assert not isinstance(info.value, UserError)  # cause unknown: a traceback, naming the file
    _zero_free(monkeypatch)
    with pytest.raises(WriteError) as info:
        save()
    _assert_no_space(info.value, target)
    assert "(0 bytes free on /" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_other_os_errors_name_the_file_and_path_errors_stay_as_they_are(tmp_path):
    target = tmp_path / "a.txt"

    def fail(p: Path) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    with pytest.raises(WriteError, match=rf"^Read-only file system while writing {target}$") as info:
        aio._atomic(target, fail)
    assert info.value.errno == errno.EROFS
    with pytest.raises(PermissionError):  # already one line naming its path (PATH_ERRORS)
        aio._atomic(target, lambda p: (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied", p)))
    with pytest.raises(ValueError, match="not a write"):  # a bug keeps its traceback
        aio._atomic(target, lambda p: (_ for _ in ()).throw(ValueError("not a write")))
    assert os.listdir(tmp_path) == []


def _train(run: dict, data: Path, out: Path) -> list:
    return ["train", "--task", "listops", "--variant", "full", "--seed", str(run["seed"]), "--data", str(data),
            "--run-config", json.dumps(run), "--out", str(out), "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("full", ["best.pt", "record.json", "checkpoint/last.pt"])
def test_attnbench_train_on_a_full_disk_is_one_line_and_exit_2(tmp_path, tiny_listops_data, full_disk, capsys, full):
    """Whichever of its files a run cannot write (the resume checkpoint mid-way too), it ends with the one line and
    no record, never a `failed` record that would keep it from being trained again."""
    run = tiny_run(train={"checkpoint_every": 1})
    data = tmp_path / "dataset.pt"
    save_prepared(data, "listops", run["task"]["data"], tiny_listops_data)
    out = tmp_path / "run"
    full_disk({Path(full).name})
    rc = cli.main(_train(run, data, out))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"attnbench: error: No space left on device while writing {out / full} (")
    assert err.count("\n") == 1
    assert not (out / "record.json").exists()  # no record: the run is trained again once there is room


def test_attnbench_prepare_on_a_full_disk_is_one_line_and_exit_2(tmp_path, full_disk, capsys):
    out = tmp_path / "data" / "dataset.pt"
    full_disk({out.name})
    params = {"n_train": 100, "n_val": 20, "n_test": 20, "min_length": 0, "max_length": 24, "max_depth": 3}
    rc = cli.main(["prepare", "--task", "listops", "--data-json", json.dumps(params), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"attnbench: error: No space left on device while writing {out} (")
    assert not out.exists()
