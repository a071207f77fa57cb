"""Named task instances: ``tasks: {NAME: {task: KIND, ...}}``: two instances of one registered task in one
config, each with its own data, its own runs and folders; the old form (the key is the task) keeps its hashes."""
from __future__ import annotations

import copy

import pytest

from attnbench.harness.config import ConfigError, planned_runs, resolve_run, validate_config
from attnbench.harness.config.runs import task_instances, task_kind
from attnbench.harness.core.hashing import config_hash
from attnbench.harness.results.records import RunKey
from conftest import TINY_CONFIG

LISTOPS_DATA = TINY_CONFIG["tasks"]["listops"]["data"]


def config_with(tasks: dict) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["tasks"] = copy.deepcopy(tasks)
    return config


def test_two_instances_of_one_task_each_with_its_own_data_runs_and_folders():
    config = validate_config(config_with({
        "short": {"task": "listops", "data": {**LISTOPS_DATA, "max_length": 16}},
        "long": {"task": "listops", "data": {**LISTOPS_DATA, "max_length": 24}},
    }))
    assert task_instances(config) == ["short", "long"]
    assert [task_kind(config, t) for t in task_instances(config)] == ["listops", "listops"]
    assert [key.task for key in planned_runs(config)] == ["short", "long"]
    short, long = (resolve_run(config, t, "full", 0)["task"] for t in ("short", "long"))
    assert (short["name"], short["instance"]) == ("listops", "short")
    assert short["data"]["max_length"] == 16 and long["data"]["max_length"] == 24
    assert short["data_key"] != long["data_key"]  # two data sets, prepared apart
    run = resolve_run(config, "short", "full", 0)
    assert RunKey.of(run).task == "short"
    assert RunKey.of(run).dir.parts[-3:] == ("short", "full", "seed0")


def test_the_key_named_as_its_task_keeps_the_hash_it_had():
    plain = validate_config(copy.deepcopy(TINY_CONFIG))
    spelled = validate_config(config_with({"listops": {"task": "listops", "data": LISTOPS_DATA}}))
    assert plain["tasks"]["listops"]["task"] == "listops"  # filled in once valid
    run = resolve_run(plain, "listops", "full", 0)
    assert "instance" not in run["task"]
    assert config_hash(run) == config_hash(resolve_run(spelled, "listops", "full", 0))
    renamed = validate_config(config_with({"lo": {"task": "listops", "data": LISTOPS_DATA}}))
    other = resolve_run(renamed, "lo", "full", 0)
    assert other["task"]["data_key"] == run["task"]["data_key"]  # the same data set serves both
    assert config_hash(other) != config_hash(run)  # but it is another run, named apart


def test_a_named_instance_has_its_task_lengths():
    config = validate_config(config_with({"lo": {"task": "listops", "lengths": [16, 24],
                                                 "data": {k: v for k, v in LISTOPS_DATA.items()
                                                          if k not in ("min_length", "max_length")}}}))
    assert task_instances(config) == ["lo@16", "lo@24"]
    section = resolve_run(config, "lo@24", "full", 0)["task"]
    assert section["name"] == "listops" and section["instance"] == "lo@24" and section["length"] == 24
    assert section["data"]["max_length"] == 24


@pytest.mark.parametrize("tasks, says", [
    ({"ng20": {"data": {}}}, "'tasks.ng20': 'ng20' is not a registered task; known tasks: "),
    ({"ng20": {"data": {}}}, "say which: `ng20: {task: textcls, data: {...}}`"),
    ({"mine": {"task": "listopz"}}, "'tasks.mine.task' is 'listopz', not a registered task; known tasks: "),
    ({"image": {"task": "listops"}}, "'tasks.image.task' is 'listops', but 'image' is itself a registered task"),
    ({"lo@2": {"task": "listops"}}, "'tasks.lo@2': a task name is a letter followed by"),
    ({"lo": {"task": "listops", "data": {"max_depht": 2}}}, "unknown key 'tasks.lo.data.max_depht'"),
    ({"lo": {"task": "listops", "data": {**LISTOPS_DATA, "min_length": 30}}}, "'tasks.lo.data.min_length'"),
])
def test_a_wrong_name_or_kind_is_refused_naming_the_key(tasks, says):
    with pytest.raises(ConfigError) as info:
        validate_config(config_with(tasks))
    assert says in str(info.value)
