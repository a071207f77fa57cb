"""The data shape an estimate goes on (``harness.estimate.data_shape``): the prepared data's own description
where ``data/`` has it; before that, the sizes the settings give, which are those preparing gives; else a
guess, said as such."""
from __future__ import annotations

import pytest

from attnbench.harness.config import resolve_run, validate_config
from attnbench.harness.core import paths
from attnbench.harness.estimate.data_shape import GUESSED_SPLITS, data_shape
from attnbench.tasks import TASKS
from attnbench.tasks.base import build_task, save_prepared
from conftest import tiny_config


def task_section(config: dict, task: str) -> dict:
    return resolve_run(validate_config(config), task, next(iter(config["variants"])), 0)["task"]


def test_generated_data_has_its_configured_sizes_and_length(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shape = data_shape(task_section(tiny_config(), "listops"))
    assert (shape.source, shape.sizes, shape.seq_len, shape.paired) == (
        "configured", {"train": 200, "val": 50, "test": 50}, 24, False)


def test_prepared_data_is_read_from_its_description(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    section = task_section(tiny_config(), "listops")
    data = build_task("listops", section["data"]).prepare(tmp_path / "work")
    save_prepared(paths.dataset_file("listops", section["data_key"]), "listops", section["data"], data)
    shape = data_shape(section)
    assert shape.source == "prepared"
    assert shape.sizes == {s: int(t["labels"].shape[0]) for s, t in data.splits.items()}
    assert (shape.seq_len, shape.vocab_size, shape.num_classes) == (data.seq_len, data.vocab_size, data.num_classes)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["image", "textcls"])
def test_configured_sizes_are_what_preparing_gives(task, tmp_path, monkeypatch):
    """The digits split by their fractions; a local CSV's rows split by them (AG News' layout, tiny)."""
    monkeypatch.chdir(tmp_path)
    params = TASKS.get(task).cls.tiny_params(tmp_path) if task == "textcls" else {"source": "digits"}
    config = tiny_config(tasks={task: {"data": params}})
    del config["tasks"]["listops"]
    section = task_section(config, task)
    shape = data_shape(section)
    data = build_task(task, section["data"]).prepare(tmp_path / "work")
    assert shape.source == "configured" and shape.seq_len == data.seq_len
    for split, tensors in data.splits.items():
        assert abs(shape.sizes[split] - tensors["labels"].shape[0]) <= 1, split


def test_a_hub_source_not_prepared_has_guessed_sizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tasks={"textcls": {"data": {"path": "someone/some_texts", "seq_len": 96}}})
    del config["tasks"]["listops"]
    shape = data_shape(task_section(config, "textcls"))
    assert (shape.source, shape.sizes, shape.seq_len) == ("guessed", GUESSED_SPLITS, 96)
