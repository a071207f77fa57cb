"""Adaptive seeds (``seeds: {min, max, step, target}``) as the pipeline runs them: the config, and one round's
decision from a task's final records on disk (``attnbench seed-round``). The rounds through snakemake's checkpoints:
tests/pipeline/test_pipeline_tuning.py."""
from __future__ import annotations

import json

import pytest

from attnbench.harness.config import ConfigError, planned_runs, resolve_run, validate_config
from attnbench.harness.config.seed_rounds import SeedRoundError, write_seed_round
from attnbench.harness.config.seeds import first_seed, seed_list
from attnbench.harness.core.hashing import config_hash
from attnbench.harness.core.io import atomic_write_json
from attnbench.harness.results.records import RunKey, read_record
from attnbench.harness.run.train import train_run
from conftest import tiny_config

ADAPTIVE = {"min": 3, "max": 5, "step": 1}


def adaptive_config(**seeds) -> dict:
    variants = {"full": {}, "window": {"window": 4}, "linear": {}}
    return validate_config(tiny_config(seeds={**ADAPTIVE, **seeds}, variants=variants))


def test_adaptive_seeds_are_read_with_their_defaults_and_plan_every_seed_a_run_may_get():
    config = validate_config(tiny_config(seeds=dict(ADAPTIVE)))
    assert config["seeds"] == {**ADAPTIVE, "target": {"reference": "full", "width": 2.0}}
    assert seed_list(config) == [0, 1, 2, 3, 4] and first_seed(config) == 0
    assert sorted({run.seed for run in planned_runs(config)}) == [0, 1, 2, 3, 4]
    assert seed_list(validate_config(tiny_config(seeds=[3, 1]))) == [3, 1]  # a list stays as it was


@pytest.mark.parametrize("seeds, message", [
    ({"min": 4, "max": 3}, r"'seeds.min' \(4\) is above 'seeds.max' \(3\)"),
    ({"min": 2, "max": 3, "target": {"reference": "lsh"}}, "'seeds.target.reference' is 'lsh', not a run"),
    ({"min": 1, "max": 3}, "'seeds.min' is 1; must be >= 2"),  # a paired interval needs two seeds
    ({"max": 3}, "'seeds' is missing a required key: 'min'"),
    ({"min": 2, "max": 3, "stepp": 1}, "unknown key 'seeds.stepp'"),
    (2.5, r"'seeds' is 2.5 \(a number\); expected array or object"),
])
def test_adaptive_seeds_that_cannot_be_run_are_refused(seeds, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(tiny_config(seeds=seeds))


@pytest.fixture(scope="module")
def template_record(tiny_listops_data, tmp_path_factory):
    """One real record of the tiny listops/full run: every fake record below is a copy of it."""
    from attnbench.harness.config import resolve_run as resolve

    run = resolve(validate_config(tiny_config()), "listops", "full", 0)
    return train_run(run, tiny_listops_data, tmp_path_factory.mktemp("template"), bar=False)


#: test accuracy per (label, seed): window is 10 points below full, linear swings ±6 points around it
def accuracy(label: str, seed: int) -> float:
    full = 0.60 + 0.01 * (seed % 3)
    return {"full": full, "window": full - 0.10, "linear": full + (0.06 if seed % 2 else -0.06)}[label]


def write_fake_records(config: dict, template: dict, root, counts: dict[str, int]) -> list:
    """Records of seeds 0..n-1 of each label, each a copy of ``template`` made the record of that run (its config,
    hash and identity) with the test accuracy ``accuracy`` gives it, in its run folder under ``root``."""
    paths = []
    for label, n in counts.items():
        for seed in range(n):
            run = resolve_run(config, "listops", label, seed)
            key = RunKey.of(run)
            record = {**template, "run_id": key.run_id, "variant": label, "label": label, "seed": seed,
                      "config": run, "config_hash": config_hash(run),
                      "accuracy": {**template["accuracy"], "test": accuracy(label, seed)}}
            path = root / key.record
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, record)
            read_record(path)  # a valid record of its run
            paths.append(path)
    return paths


@pytest.mark.slow
def test_a_round_plans_more_seeds_only_where_the_comparison_has_not_resolved_and_stops_at_the_maximum(
        template_record, tmp_path):
    config = adaptive_config()
    labels, seeds = ["full", "window", "linear"], config["seeds"]
    counts, decisions = {label: 3 for label in labels}, []
    for round_index in range(10):
        records = write_fake_records(config, template_record, tmp_path, counts)
        decision = write_seed_round(records, "listops", labels, seeds, round_index,
                                    tmp_path / f"round{round_index}.json")
        assert json.loads((tmp_path / f"round{round_index}.json").read_text()) == decision
        decisions.append(decision)
        if decision["done"]:
            break
        counts = decision["next"]
    first = decisions[0]
    assert first["comparisons"]["window"]["resolved"] and first["comparisons"]["window"]["why"] == "excludes 0"
    assert not first["comparisons"]["linear"]["resolved"]
    assert first["next"] == {"full": 4, "window": 3, "linear": 4}  # window resolved: no more seeds for it
    assert [d["counts"] for d in decisions] == [{"full": 3, "window": 3, "linear": 3},
                                                {"full": 4, "window": 3, "linear": 4},
                                                {"full": 5, "window": 3, "linear": 5}]
    assert decisions[-1]["done"] and decisions[-1]["next"] == decisions[-1]["counts"]  # at the maximum: it stops
    assert not decisions[-1]["comparisons"]["linear"]["resolved"]


def test_a_round_refuses_records_of_another_task_or_stage(template_record, tmp_path):
    config = adaptive_config()
    [path] = write_fake_records(config, template_record, tmp_path, {"full": 1})
    with pytest.raises(SeedRoundError, match="not a final run of task 'image'"):
        write_seed_round([path], "image", ["full"], config["seeds"], 0, tmp_path / "round0.json")
