"""A task run at several lengths (``tasks.<task>.lengths``): each length a task of its own in the grid,
``task@length``, with its length setting at that length, its own data set and its own run folders."""
from __future__ import annotations

import pytest

from attnbench.harness.config import ConfigError, planned_runs, resolve_run, task_data_params, validate_config
from attnbench.harness.config.runs import split_task, task_instances
from attnbench.harness.results.records import RunKey
from conftest import tiny_config


def with_lengths(config: dict, lengths: list[int]) -> dict:
    """``config`` with ListOps at ``lengths`` (its max_length and min_length, which each length sets, no longer
    given)."""
    config["tasks"]["listops"]["lengths"] = lengths
    for key in ("max_length", "min_length"):
        config["tasks"]["listops"]["data"].pop(key)
    return config


def lengths_config(**override) -> dict:
    return validate_config(with_lengths(tiny_config(**override), [16, 32, 64]))


def test_lengths_expand_the_grid_into_one_task_per_length():
    config = lengths_config(seeds=[0, 1])
    assert task_instances(config) == ["listops@16", "listops@32", "listops@64"]
    runs = planned_runs(config)
    assert len(runs) == 3 * 2  # 3 lengths x 1 variant x 2 seeds
    assert {run.task for run in runs} == {"listops@16", "listops@32", "listops@64"}
    assert split_task("listops@32") == ("listops", 32) and split_task("listops") == ("listops", None)


def test_each_length_sets_the_tasks_length_setting_and_keeps_the_rest():
    config = lengths_config()
    data = {length: task_data_params(config, f"listops@{length}") for length in (16, 32, 64)}
    assert [d["max_length"] for d in data.values()] == [16, 32, 64]  # ListOps' length setting
    assert [d["min_length"] for d in data.values()] == [8, 16, 32]  # and its trees about that long
    assert {d["n_train"] for d in data.values()} == {200}  # the task's other data settings, shared
    run = resolve_run(config, "listops@32", "full", 0)
    assert run["task"]["name"] == "listops"  # the registered task: what builds the data
    assert (run["task"]["instance"], run["task"]["length"], run["task"]["length_param"]) == ("listops@32", 32,
                                                                                            "max_length")
    key = RunKey.of(run)
    assert key.run_id == "listops@32/full/seed0" and key.dir.as_posix().endswith("runs/listops@32/full/seed0")
    keys = {resolve_run(config, f"listops@{n}", "full", 0)["task"]["data_key"] for n in (16, 32, 64)}
    assert len(keys) == 3  # a data set per length


def test_a_task_without_lengths_keeps_its_name_and_its_run_config():
    config = validate_config(tiny_config())
    run = resolve_run(config, "listops", "full", 0)
    assert "instance" not in run["task"] and "length" not in run["task"]  # records made before lengths stay current
    assert RunKey.of(run).run_id == "listops/full/seed0"


def test_a_task_with_lengths_is_run_only_at_them():
    config = lengths_config()
    with pytest.raises(ConfigError, match="listops@16, listops@32, listops@64"):
        resolve_run(config, "listops", "full", 0)
    with pytest.raises(ConfigError, match="not in the config"):
        resolve_run(config, "listops@128", "full", 0)


@pytest.mark.parametrize("tasks, message", [
    ({"image": {"lengths": [8, 16], "data": {"source": "digits"}}}, "task 'image' has no length setting"),
    ({"listops": {"lengths": [16, 32], "data": {"max_length": 24}}},
     "'tasks.listops.data.max_length' is set and 'tasks.listops.lengths' sets it"),
    ({"listops": {"lengths": [16, 32], "data": {"min_length": 4}}},
     "'tasks.listops.data.min_length' is set and 'tasks.listops.lengths' sets it"),
    ({"listops": {"lengths": [16]}}, "tasks.listops.lengths"),
])
def test_lengths_that_cannot_be_run_are_refused(tasks, message):
    config = {**tiny_config(), "tasks": tasks}
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_a_length_the_task_cannot_generate_is_refused_naming_the_length():
    # trees of depth 2 with 3 arguments have at most 5 tokens: none is longer than 64 // 2
    config = with_lengths(tiny_config(tasks={"listops": {"data": {"max_depth": 2, "max_args": 3}}}), [8, 64])
    with pytest.raises(ConfigError, match="at its length 64"):
        validate_config(config)
