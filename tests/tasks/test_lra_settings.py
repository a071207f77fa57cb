"""Which runs used LRA's own data and length (tasks/lib/lra_settings.py): config/lra.yaml's every task
does, the default config's none does, and a change of source or length makes a run not comparable."""
from __future__ import annotations

import pytest

from attnbench.harness.config import load_config, resolve_run
from attnbench.tasks.lib.lra_settings import LRA_DATA, ran_lra_settings
from conftest import REPO

CONFIG = REPO / "config"



def prepared_length(task: str, data: dict) -> int:
    """The sequence length the task prepares from these data settings (what a record's data.seq_len says)."""
    if task == "listops":
        return data["max_length"]
    if task == "image":
        return 1024 if data["source"] == "cifar10" else 64
    if task in ("pathfinder", "pathx"):
        return data["resolution"] ** 2
    return data["seq_len"]


def runs(name: str) -> dict[str, dict]:
    config = load_config(CONFIG / name)
    variant = next(iter(config["variants"]))
    return {t: resolve_run(config, t, variant, 0)["task"]["data"] for t in config["tasks"]}


def test_every_task_of_config_lra_yaml_runs_lras_settings():
    data = runs("lra.yaml")
    assert set(data) == set(LRA_DATA)
    for task, d in data.items():
        assert ran_lra_settings(task, d, prepared_length(task, d)), task


@pytest.mark.parametrize("name", ["config.yaml", "pathfinder.yaml", "zoo.yaml"])
def test_the_cpu_configs_do_not(name):
    for task, d in runs(name).items():
        if task in LRA_DATA:
            assert not ran_lra_settings(task, d, prepared_length(task, d)), (name, task)


def test_a_changed_length_or_source_is_not_lras():
    data = runs("lra.yaml")
    assert not ran_lra_settings("listops", data["listops"], 1000)
    assert not ran_lra_settings("image", {**data["image"], "source": "digits"}, 1024)
    assert not ran_lra_settings("pathfinder", {**data["pathfinder"], "difficulty": "curv_baseline"}, 1024)
    assert not ran_lra_settings("textcls", {}, 1000)  # not an LRA task
