"""Config validation (messages naming key, value and what is allowed), defaults, resolution, hashing."""
from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from attnbench.harness import cli
from attnbench.harness.config import (
    DEFAULT_CONFIG,
    ConfigError,
    build_schema,
    load_config,
    resolve_run,
    validate_config,
)
from attnbench.harness.core import shipped_files
from attnbench.harness.core.hashing import config_hash
from attnbench.harness.core.registry import as_dict
from attnbench.harness.run.model import ModelConfig
from attnbench.harness.run.train_config import TrainConfig
from attnbench.tasks import TASKS
from attnbench.variants import VARIANTS
from conftest import REPO

ATTNBENCH = Path(sys.executable).parent / "attnbench"


def minimal() -> dict:
    return {"variants": {"full": {}}, "tasks": {"listops": {"data": {"n_train": 10}}}}


def with_(**sections) -> dict:
    cfg = minimal()
    cfg.update(copy.deepcopy(sections))
    return cfg


def error_of(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    return str(info.value)


def test_repository_config_is_valid():
    if not DEFAULT_CONFIG.exists():
        pytest.skip(f"{DEFAULT_CONFIG} does not exist yet")
    config = load_config(DEFAULT_CONFIG)
    assert config["variants"] and config["tasks"]
    for task in config["tasks"]:
        for variant in config["variants"]:
            run = resolve_run(config, task, variant, config["seeds"][0])
            assert run["task"]["name"] == task and run["variant"]["name"] == variant


def test_minimal_config_is_valid_and_defaults_are_filled():
    config = validate_config(minimal())
    schema_top = yaml.safe_load(shipped_files.config_schema().read_text())["properties"]
    for key in ("seeds", "device", "threads", "deterministic"):
        assert config[key] == schema_top[key]["default"], key
    assert config["train"] == as_dict(TrainConfig())  # every default (a mapping's from its default_factory)
    assert config["model"] == {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    data_defaults = {f.name: f.default for f in dataclasses.fields(TASKS.get("listops").config)}
    assert config["tasks"]["listops"]["data"] == {**data_defaults, "n_train": 10}
    # per-task model/train overrides stay absent: they must not shadow the top level with defaults
    assert "train" not in config["tasks"]["listops"] and "model" not in config["tasks"]["listops"]


def test_validation_updates_the_callers_dict():
    config = minimal()
    returned = validate_config(config)
    assert returned is config and "train" in config


def test_only_configured_tasks_and_variants_are_kept():
    config = validate_config(minimal())
    assert set(config["variants"]) == {"full"}
    assert set(config["tasks"]) == {"listops"}, (
        "validate_config added tasks that the config does not name: "
        + ", ".join(sorted(set(config["tasks"]) - {"listops"})))


def test_dim_heads_check_uses_per_task_model_override():
    # top level 64/3 is not divisible, but the only configured task overrides heads to 4
    error = None
    try:
        validate_config(with_(model={"dim": 64, "heads": 3}, tasks={"listops": {"model": {"heads": 4}}}))
    except ConfigError as exc:
        error = str(exc)
    assert error is None, f"a valid config was rejected (the only configured task, listops, uses heads 4): {error}"
    msg = error_of(with_(model={"dim": 64, "heads": 4}, tasks={"listops": {"model": {"heads": 3}}}))
    assert "tasks.listops" in msg and "64" in msg and "3" in msg and "divisible" in msg


def test_yaml_none_means_defaults():
    config = validate_config({"variants": {"full": None}, "tasks": {"listops": None}})
    assert config["variants"]["full"] == {}
    assert config["tasks"]["listops"]["data"]["source"] == "generate"


@pytest.mark.parametrize("config, expected", [
    pytest.param(with_(colour="blue"), ["'colour'", "unknown key", "variants", "tasks", "train"],
                 id="unknown-top-level"),
    pytest.param(with_(train={"lrr": 0.1}), ["'train.lrr'", "unknown key", "lr", "steps", "warmup_steps"],
                 id="unknown-nested"),
    pytest.param(with_(train={"lr": "abc"}), ["'train.lr'", "'abc'", "number"], id="wrong-type"),
    pytest.param(with_(variants={"full": {}, "nonesuch": {}}),
                 ["'nonesuch'", "variant", *VARIANTS.names()], id="unknown-variant"),
    pytest.param(with_(tasks={"listops": {}, "sudoku": {}}), ["'sudoku'", "task", *TASKS.names()], id="unknown-task"),
    pytest.param(with_(model={"pooling": "max"}), ["'model.pooling'", "'max'", "cls", "mean"], id="enum"),
    pytest.param(with_(train={"steps": 0}), ["'train.steps'", " 0", ">= 1"], id="bound"),
    pytest.param(with_(tasks={"listops": {"train": {"steps": -1}}}), ["'tasks.listops.train.steps'", "-1", ">= 1"],
                 id="bound-in-task-override"),
    pytest.param(with_(tasks={"listops": {"data": {"depth": 3}}}), ["'tasks.listops.data.depth'", "max_depth"],
                 id="unknown-task-data-key"),
    pytest.param(with_(variants={}), ["'variants'", "empty"], id="no-variants"),
    pytest.param(with_(device="tpu"), ["'device'", "'tpu'", "cpu", "cuda", "auto"], id="device-enum"),
])
def test_invalid_config_messages(config, expected):
    msg = error_of(config)
    for part in expected:
        assert part in msg, f"{part!r} missing from the message:\n{msg}"


def test_all_problems_are_reported_at_once():
    msg = error_of(with_(train={"steps": 0, "lr": "abc"}, model={"pooling": "max"}))
    assert "'train.steps'" in msg and "'train.lr'" in msg and "'model.pooling'" in msg
    assert len([line for line in msg.splitlines() if line.strip().startswith("- ")]) == 3


def test_numbers_written_as_text_are_read_as_numbers(tmp_path):
    # YAML 1.1 reads 1e-3 as a string; `snakemake --config seeds=[1,2]` passes strings
    path = tmp_path / "c.yaml"
    path.write_text("variants: {full: {}}\ntasks: {listops: {}}\nseeds: ['1', '2']\n"
                    "train:\n  lr: 1e-3\n  steps: '20'\n")
    config = load_config(path)
    assert config["train"]["lr"] == 0.001 and config["train"]["steps"] == 20 and config["seeds"] == [1, 2]
    assert error_of(with_(train={"steps": "2.5"})).count("'train.steps' is '2.5'") == 1


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_schema_is_completed_from_registries():
    schema = build_schema()
    assert set(schema["properties"]["variants"]["properties"]) == set(VARIANTS.names())
    assert set(schema["properties"]["tasks"]["properties"]) == set(TASKS.names())
    assert set(schema["properties"]["train"]["properties"]) == {f.name for f in dataclasses.fields(TrainConfig)}


# ---------------------------------------------------------------- resolution and hashing

def two_task_config() -> dict:
    return validate_config({
        "variants": {"full": {}},
        "tasks": {"listops": {"train": {"steps": 7}, "model": {"pooling": "mean"}}, "image": {}},
        "train": {"steps": 11, "lr": 0.002},
        "model": {"dim": 32, "heads": 2},
        "seeds": [0, 1],
    })


def test_per_task_override_used_by_resolve_run():
    config = two_task_config()
    listops = resolve_run(config, "listops", "full", 1)
    image = resolve_run(config, "image", "full", 1)
    assert listops["train"]["steps"] == 7 and image["train"]["steps"] == 11
    assert listops["train"]["lr"] == 0.002 == image["train"]["lr"]  # the rest comes from the top level
    assert listops["model"]["pooling"] == "mean" and image["model"]["pooling"] == ModelConfig().pooling
    assert listops["model"]["dim"] == 32 == image["model"]["dim"]
    assert config["train"]["steps"] == 11  # resolving does not touch the config
    assert listops["seed"] == 1 and listops["variant"] == {"name": "full", "params": {}}
    assert listops["task"]["data"]["n_train"] == TASKS.get("listops").config().n_train
    assert listops["task"]["data_key"] != image["task"]["data_key"]


@pytest.mark.slow
def test_per_variant_override_wins_for_that_variant_only():
    config = validate_config({
        "variants": {"full": {}, "window": {}},
        "tasks": {"image": {"model": {"layers": 1, "pooling": "cls"},
                            "per_variant": {"window": {"model": {"layers": 4, "pooling": "mean"},
                                                       "train": {"lr": 0.01}, "params": {"window": 32}}}},
                  "listops": {}},
        "train": {"lr": 0.002},
    })
    full, window = (resolve_run(config, "image", v, 0) for v in ("full", "window"))
    assert (full["model"]["layers"], full["model"]["pooling"], full["train"]["lr"]) == (1, "cls", 0.002)
    assert (window["model"]["layers"], window["model"]["pooling"], window["train"]["lr"]) == (4, "mean", 0.01)
    assert window["variant"]["params"]["window"] == 32
    assert resolve_run(config, "listops", "window", 0)["variant"]["params"]["window"] == 64  # other tasks: its own
    assert config_hash(full) != config_hash(window)


@pytest.mark.parametrize("per_variant, expected", [
    ({"nonesuch": {}}, "unknown variant 'nonesuch'"),
    ({"full": {"model": {"dim": 30, "heads": 4}}},
     "'tasks.listops.per_variant.full': model dim 30 is not divisible by heads 4"),
    ({"full": {"data": {}}}, "unknown key"),
    ({"window": {"params": {"window": "wide"}}}, "tasks.listops.per_variant.window.params.window"),
    ({"window": {"params": {"n_hashes": 2}}}, "unknown key"),
])
def test_per_variant_errors(per_variant, expected):
    config = minimal()
    config["tasks"]["listops"]["per_variant"] = per_variant
    assert expected in error_of(config)


def test_resolve_run_rejects_unconfigured_names():
    config = validate_config(minimal())
    with pytest.raises(ConfigError, match="sudoku"):
        resolve_run(config, "sudoku", "full", 0)
    with pytest.raises(ConfigError, match="nonesuch"):
        resolve_run(config, "listops", "nonesuch", 0)


def test_config_hash_stable_and_sensitive():
    config = two_task_config()
    run = resolve_run(config, "listops", "full", 0)
    again = resolve_run(two_task_config(), "listops", "full", 0)
    reordered = dict(reversed(list(copy.deepcopy(run).items())))
    assert config_hash(run) == config_hash(again) == config_hash(reordered)
    assert len(config_hash(run)) == 16 and int(config_hash(run), 16) >= 0
    changed = copy.deepcopy(run)
    changed["train"]["lr"] = 0.003
    assert config_hash(changed) != config_hash(run)
    assert config_hash(resolve_run(config, "listops", "full", 1)) != config_hash(run)


def test_data_key_ignores_training_settings_but_not_data_settings():
    a = resolve_run(validate_config(with_(train={"steps": 5})), "listops", "full", 0)
    b = resolve_run(validate_config(with_(train={"steps": 6})), "listops", "full", 3)
    c = resolve_run(validate_config(with_(tasks={"listops": {"data": {"n_train": 11}}})), "listops", "full", 0)
    assert a["task"]["data_key"] == b["task"]["data_key"] != c["task"]["data_key"]


# ---------------------------------------------------------------- command line

def test_cli_check_config_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_(train={"lrr": 0.1})))
    assert cli.main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "'train.lrr'" in err and "error" in err


def test_cli_check_config_good_file(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(minimal()))
    assert cli.main(["check-config", "--config", str(good)]) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_entry_point_exit_code(tmp_path):
    if not ATTNBENCH.exists():
        pytest.skip(f"console script {ATTNBENCH} is not installed")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_(model={"pooling": "max"})))
    proc = subprocess.run([str(ATTNBENCH), "check-config", "--config", str(bad)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "'model.pooling'" in proc.stderr and "'max'" in proc.stderr


def test_lra_config_resolves_lra_settings_per_task_and_variant():
    config = load_config(REPO / "config" / "lra.yaml")
    run = {(t, v): resolve_run(config, t, v, 0) for t in config["tasks"] for v in config["variants"]}
    listops = run["listops", "full"]
    assert (listops["model"]["layers"], listops["model"]["dim"], listops["train"]["schedule"]) == (4, 512, "rsqrt")
    assert listops["train"]["lr"] == pytest.approx(0.05 / 1000 ** 0.5, rel=1e-4)  # LRA's base 0.05 at warm-up 1000
    assert run["text", "full"]["task"]["data"]["seq_len"] == 1000
    # per-model sizes on Image and Pathfinder; per-task LSH buckets (about 2 N / chunk)
    window = run["image", "window"]["model"]
    assert (window["layers"], window["heads"], window["pooling"]) == (4, 4, "mean_all")  # LRA's MEAN: every position
    assert run["image", "full"]["model"]["layers"] == 1 and run["image", "full"]["model"]["pooling"] == "cls"
    assert run["pathfinder", "linear"]["model"]["dim"] == 128
    assert run["pathfinder", "full"]["model"]["pooling"] == "mean_all"
    # LRA's Reformer (1 hash round, 10 buckets) and Longformer (256 each side, no global token) on every task
    assert {(p["n_hashes"], p["n_buckets"]) for t in config["tasks"] for p in [run[t, "lsh"]["variant"]["params"]]} == {
        (1, 10)}
    assert {(p["window"], tuple(p["global_tokens"])) for t in config["tasks"]
            for p in [run[t, "window"]["variant"]["params"]]} == {(256, ())}
    # Performer and Sparse Trans. under their own names, as LRA's code ran them, with LRA's own sizes on Image and
    # Pathfinder (the forms themselves: tests/harness/config/test_config_extends.py)
    assert run["image", "performer"]["variant"]["params"]["feature_map"] == "relu"
    pathfinder = run["pathfinder", "performer"]["model"], run["pathfinder", "sparse_fixed"]["model"]
    assert (pathfinder[0]["layers"], pathfinder[1]["layers"]) == (4, 1)
    # LRA's model: the profile everywhere, black pixels masked on the pixel tasks only, position 0 on Retrieval
    assert {run[t, v]["model"]["profile"] for t, v in run} == {"lra"}
    assert {t: run[t, "full"]["model"]["mask_zero_tokens"] for t in config["tasks"]} == {
        "listops": False, "text": False, "retrieval": False, "image": True, "pathfinder": True, "pathx": True}
    assert run["retrieval", "full"]["model"]["pooling"] == "first"
    assert {run[t, v]["train"]["test_checkpoint"] for t, v in run} == {"final"}
    assert run["pathx", "full"]["train"]["grad_clip"] == 1.0 and run["image", "full"]["train"]["grad_clip"] == 0.0
    assert config["report"]["lra_average"] == 5
