"""Every registered task: its tiny offline data set prepared and checked, its sources, its config.

Tests iterate over the registry and each task says how to make its tiny data set
(``Task.tiny_params``, tasks/base.py), so a new task file is tested without editing this file.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from attnbench.harness.core.registry import dataclass_schema
from attnbench.tasks.base import (
    SPLITS,
    TASKS,
    DataError,
    PreparedData,
    Task,
    build_task,
    data_key,
    load_prepared,
    save_prepared,
)

ENTRIES = list(TASKS)
IDS = [e.name for e in ENTRIES]


def tiny_source(entry, tmp_path: Path) -> tuple[Path, dict]:
    """The folder the task wrote its tiny source files into, and its tiny data settings."""
    folder = tmp_path / "source"
    folder.mkdir()
    params = entry.cls.tiny_params(folder)
    assert isinstance(params, dict), f"{entry.name}: tiny_params must return a dict of data settings"
    json.dumps(params)  # settings live in JSON/YAML configs and records
    return folder, params


def check_prepared(data: PreparedData, name: str) -> None:
    assert isinstance(data, PreparedData), f"{name}: prepare must return PreparedData, got {type(data).__name__}"
    assert set(data.splits) == set(SPLITS), f"{name}: splits {sorted(data.splits)}"
    assert data.num_classes >= 2
    assert data.seq_len >= 1
    assert 0 <= data.pad_id < data.vocab_size, (f"{name}: pad_id {data.pad_id} outside the vocabulary of "
                                                f"{data.vocab_size}")
    assert len(data.label_names) in (0, data.num_classes), f"{name}: {len(data.label_names)} label names"
    meta = json.loads(json.dumps(data.meta()))
    for split in SPLITS:
        tokens, labels = data.splits[split]["tokens"], data.splits[split]["labels"]
        n = labels.shape[0]
        assert n > 0, f"{name}: split {split} is empty"
        assert meta["sizes"][split] == n
        assert labels.dtype == torch.int64 and tuple(labels.shape) == (n,), \
            f"{name} {split}: labels {labels.dtype} {tuple(labels.shape)}"
        assert not (tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool), \
            f"{name} {split}: tokens are {tokens.dtype}, not integers"
        want = (n, 2, data.seq_len) if data.paired else (n, data.seq_len)
        assert tuple(tokens.shape) == want, f"{name} {split}: tokens {tuple(tokens.shape)}, expected {want}"
        assert 0 <= int(labels.min()) and int(labels.max()) < data.num_classes, \
            f"{name} {split}: labels {int(labels.min())}..{int(labels.max())} outside 0..{data.num_classes - 1}"
        assert 0 <= int(tokens.min()) and int(tokens.max()) < data.vocab_size, \
            f"{name} {split}: token ids {int(tokens.min())}..{int(tokens.max())} outside 0..{data.vocab_size - 1}"
    assert len(data.splits["train"]["labels"].unique()) >= 2, f"{name}: the tiny train split has a single class"


def assert_same(a: PreparedData, b: PreparedData, what: str) -> None:
    assert a.meta() == b.meta(), what
    for split in SPLITS:
        for key in ("tokens", "labels"):
            x, y = a.splits[split][key], b.splits[split][key]
            assert x.shape == y.shape and torch.equal(x.long(), y.long()), f"{what}: {split} {key} differ"


# ---------------------------------------------------------------- registry and configs

def test_registry_holds_tasks():
    assert ENTRIES
    assert all(issubclass(e.cls, Task) for e in ENTRIES)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_description_and_config_defaults(entry):
    assert entry.description, f"{entry.name}: the class needs a docstring (its first line is the description)"
    for f in dataclasses.fields(entry.config):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, \
            f"{entry.name}: config field {f.name} has no default"
    schema = dataclass_schema(entry.config)
    json.dumps(schema)
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(entry.config)}
    undocumented = [k for k, prop in schema["properties"].items() if not prop["description"]]
    assert not undocumented, f"{entry.name}: config fields without help: {undocumented}"
    build_task(entry.name, {})  # the defaults make a valid config


def test_tiny_params_default_says_what_to_implement(tmp_path):
    class Untested(Task):
        """A task that does not say how to make tiny data."""

    with pytest.raises(NotImplementedError, match=r"tiny_params\(folder\)") as info:
        Untested.tiny_params(tmp_path)
    assert "Untested" in str(info.value) and "Task.tiny_params" in str(info.value)


# ---------------------------------------------------------------- sources

@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_missing_sources_name_the_absent_path(entry, tmp_path, offline_hf):
    folder, params = tiny_source(entry, tmp_path)
    assert build_task(entry.name, params).missing_sources() == []
    wrote_files = any(folder.iterdir())
    shutil.rmtree(folder)  # the same settings now point at a path that does not exist
    missing = build_task(entry.name, params).missing_sources()
    if not wrote_files:
        assert missing == [], f"{entry.name}: its tiny settings read no files, yet sources are missing: {missing}"
        pytest.skip(f"{entry.name}: the tiny settings read no files")
    assert missing, f"{entry.name}: {folder} is gone, yet missing_sources() is empty"
    for message in missing:
        assert str(folder) in message, f"{entry.name}: the message does not name {folder}: {message}"
    with pytest.raises(DataError) as info:
        build_task(entry.name, params).prepare(tmp_path / "work")
    assert str(folder) in str(info.value)


# ---------------------------------------------------------------- prepared data

@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_tiny_data_prepared_deterministic_and_round_trips(entry, tmp_path, offline_hf):
    _, params = tiny_source(entry, tmp_path)
    data = build_task(entry.name, params).prepare(tmp_path / "work1")
    check_prepared(data, entry.name)

    again = build_task(entry.name, params).prepare(tmp_path / "work2")
    assert_same(data, again, f"{entry.name}: preparing twice")

    path = tmp_path / f"{entry.name}-{data_key(entry.name, params)}.pt"
    save_prepared(path, entry.name, params, data)
    loaded = load_prepared(path, entry.name, params)
    check_prepared(loaded, entry.name)
    assert_same(data, loaded, f"{entry.name}: save_prepared / load_prepared")


def test_a_data_sets_description_copies_none_of_its_tensors(tiny_listops_data, monkeypatch):
    """``PreparedData.meta()`` goes into every record: it must not deep-copy the splits on the way (Path-X's
    whole data set, once more, in host memory)."""
    def refuse(self, memo):
        raise AssertionError("a split's tensor was copied")

    monkeypatch.setattr(torch.Tensor, "__deepcopy__", refuse)
    meta = tiny_listops_data.meta()
    assert "splits" not in meta and meta["sizes"]["train"] == tiny_listops_data.splits["train"]["labels"].shape[0]
    assert meta["vocab_size"] == tiny_listops_data.vocab_size
