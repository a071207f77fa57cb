"""Tuning with an equal budget (``tune:``) as the config plans it: the trials of every (task, run label), their
run configs (the same points for every variant, trial 0 the config's own settings), the selection a tuned final
run trains with, and a trial's job, which never reads the test split."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from attnbench.harness.config import ConfigError, plan_hashes, planned_runs, resolve_run, run_hash, validate_config
from attnbench.harness.config.runs import final_run
from attnbench.harness.config.selection import SelectionError, write_selection
from attnbench.harness.core import paths
from attnbench.harness.results.records import RecordError, RunKey, read_record, validate_record
from attnbench.harness.run.train import Trainer, train_run
from conftest import tiny_config

SPACE = {"train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "model.dropout": {"low": 0.0, "high": 0.3},
         "train.warmup_steps": {"low": 0, "high": 4, "integer": True}}


def tune_config(trials: int = 4, **override) -> dict:
    return validate_config(tiny_config(variants={"full": {}, "linear": {}}, seeds=[0, 1],
                                       tune={"trials": trials, "seed": 3, "space": SPACE, "train": {"steps": 6}},
                                       **override))


def test_every_task_and_label_gets_the_same_number_of_trials():
    config = tune_config(distill={"students": {"full": {}}})
    trials = [run for run in planned_runs(config) if run.trial is not None]
    per_label = {}
    for run in trials:
        per_label.setdefault(run.label, []).append(run.trial)
    assert per_label == {label: [0, 1, 2, 3] for label in ("full", "linear", "distilled[full]")}
    assert {run.seed for run in trials} == {0}  # the first of `seeds`
    assert trials[0].run_id == "listops/full/trial0" and trials[0].dir.as_posix().endswith("tune/listops/full/trial0")


def test_trials_train_the_same_points_for_every_variant_and_trial_0_is_the_configs_own():
    config = tune_config()
    full = [resolve_run(config, "listops", "full", 0, "labels", t) for t in range(4)]
    linear = [resolve_run(config, "listops", "linear", 0, "labels", t) for t in range(4)]
    assert [r["tuning"]["point"] for r in full] == [r["tuning"]["point"] for r in linear]
    own = resolve_run(config, "listops", "full", 0)
    assert full[0]["tuning"]["point"] == {"model.dropout": own["model"]["dropout"], "train.lr": own["train"]["lr"],
                                          "train.warmup_steps": own["train"]["warmup_steps"]}
    assert len({json.dumps(r["tuning"]["point"], sort_keys=True) for r in full}) == 4  # four different points
    for run in full:  # each trial trains with its point, for tune.train's steps
        point = run["tuning"]["point"]
        assert (run["train"]["lr"], run["model"]["dropout"], run["train"]["warmup_steps"]) == (
            point["train.lr"], point["model.dropout"], point["train.warmup_steps"])
        assert run["train"]["steps"] == 6 and run["tuning"]["stage"] == "tune"
    assert own["train"]["steps"] == 10 and "tuning" not in own  # the final runs keep theirs


@pytest.mark.slow
def test_the_same_config_plans_the_same_trials_in_another_process():
    config = tune_config()
    trials = [key for key in planned_runs(config) if key.trial is not None]
    here = {key.run_id: run_hash(config, key) for key in trials}
    code = ("import json, sys; from attnbench.harness.config import planned_runs, run_hash, validate_config; "
            "c = validate_config(json.load(sys.stdin)); "
            "print(json.dumps({k.run_id: run_hash(c, k) for k in planned_runs(c) if k.trial is not None}))")
    raw = tiny_config(variants={"full": {}, "linear": {}}, seeds=[0, 1],
                      tune={"trials": 4, "seed": 3, "space": SPACE, "train": {"steps": 6}})
    there = json.loads(subprocess.run([sys.executable, "-c", code], input=json.dumps(raw), capture_output=True,
                                      text=True, check=True).stdout)
    assert there == here
    other = validate_config({**raw, "tune": {**raw["tune"], "seed": 4}})
    assert [run_hash(other, k) for k in trials][1:] != [here[k.run_id] for k in trials][1:]  # another design seed


def test_a_tuned_final_run_waits_for_its_selection_then_trains_with_its_point(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tune_config()
    key = RunKey("listops", "linear", 1)
    assert run_hash(config, key) is None and final_run(config, key) is None  # no selection yet
    assert key.run_id not in plan_hashes(config)
    point = resolve_run(config, "listops", "linear", 0, "labels", 2)["tuning"]["point"]
    selected = paths.selection_file("listops", "linear")
    selected.parent.mkdir(parents=True)
    selected.write_text(json.dumps({"task": "listops", "label": "linear", "trial": 2, "point": point}))
    run = final_run(config, key)
    assert run["tuning"] == {"stage": "final", "trial": 2, "trials": 4, "point": point}
    assert run["train"]["lr"] == point["train.lr"] and run["train"]["steps"] == 10 and run["seed"] == 1
    assert plan_hashes(config)[key.run_id] == run_hash(config, key)


@pytest.mark.parametrize("tune, message", [
    ({"trials": 4}, "'tune.space' is empty"),
    ({"trials": 4, "space": {"train.lr": {"low": 0.01, "high": 0.001}}}, "low 0.01 must be below high 0.001"),
    ({"trials": 4, "space": {"train.lr": {"low": 0.0, "high": 0.1, "log": True}}}, "a log scale needs low > 0"),
    ({"trials": 4, "space": {"train.lr": {"low": 0.001}}}, "give low and high"),
    ({"trials": 4, "space": {"train.lrr": {"low": 0.001, "high": 0.01}}}, "train.lrr"),
    ({"trials": 4, "space": SPACE, "train": {"stepz": 3}}, "stepz"),
])
def test_tuning_settings_that_cannot_be_run_are_refused(tune, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(tiny_config(tune=tune))


def test_no_trials_no_tuning():
    config = validate_config(tiny_config())
    assert config["tune"]["trials"] == 0
    assert all(run.trial is None for run in planned_runs(config))


class SpyTrainer(Trainer):
    """A trainer that notes the data splits it was given."""

    seen: list[set[str]] = []

    def __init__(self, run, data, device, **kwargs):
        SpyTrainer.seen.append(set(data.splits))
        super().__init__(run, data, device, **kwargs)


@pytest.mark.slow
def test_a_trial_never_reads_the_test_split_and_records_no_test_accuracy(tiny_listops_data, tmp_path):
    config = tune_config(trials=2)
    trial = resolve_run(config, "listops", "full", 0, "labels", 1)
    SpyTrainer.seen.clear()
    record = train_run(trial, tiny_listops_data, tmp_path / "trial", bar=False, trainer_cls=SpyTrainer)
    assert SpyTrainer.seen == [{"train", "val"}]  # the test split was withheld before training began
    assert record["status"] == "ok" and record["stage"] == "tune" and record["trial"] == 1
    assert record["accuracy"]["test"] is None and record["accuracy"]["best_val"] is not None
    assert record["baselines"]["majority_test_acc"] is None
    assert read_record(tmp_path / "trial" / "record.json")["run_id"] == "listops/full/trial1"
    with pytest.raises(RecordError, match="accuracy.test"):  # a trial record that holds one is refused
        validate_record({**record, "accuracy": {**record["accuracy"], "test": 0.5}})
    final = train_run(resolve_run(config, "listops", "full", 0), tiny_listops_data, tmp_path / "final", bar=False,
                      trainer_cls=SpyTrainer)
    assert SpyTrainer.seen[-1] == {"train", "val", "test"} and final["accuracy"]["test"] is not None


def fake_trial_record(config: dict, trial: int, val_acc: float) -> dict:
    """A trial's record as its job writes it, with the given validation accuracy (made by training a few steps
    would be slower and would not choose the accuracy)."""
    from attnbench.harness.core.hashing import config_hash

    run = resolve_run(config, "listops", "full", 0, "labels", trial)
    key = RunKey.of(run)
    return {"run_id": key.run_id, "task": key.task, "variant": key.variant, "method": key.method, "label": key.label,
            "seed": key.seed, "stage": "tune", "trial": trial, "config_hash": config_hash(run), "status": "ok",
            "accuracy": {"best_val": val_acc, "test": None}, "config": run}


def test_selection_reads_validation_accuracy_and_gives_the_same_answer_twice(tmp_path, monkeypatch):
    import attnbench.harness.config.selection as selection

    config = tune_config()
    records = {tmp_path / f"trial{t}.json": fake_trial_record(config, t, acc)
               for t, acc in enumerate([0.40, 0.55, 0.55, 0.30])}
    monkeypatch.setattr(selection, "read_record", lambda path: records[path])
    first = write_selection(list(records), tmp_path / "a.json")
    write_selection(list(reversed(records)), tmp_path / "b.json")
    assert first["trial"] == 1 and first["best_val_acc"] == 0.55  # the best; of two equal, the lower trial
    assert first["point"] == records[tmp_path / "trial1.json"]["config"]["tuning"]["point"]
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    final = {**records[tmp_path / "trial0.json"], "stage": "final"}
    monkeypatch.setattr(selection, "read_record", lambda path: final)
    with pytest.raises(SelectionError, match="a final run, not a tuning trial"):
        write_selection([tmp_path / "x.json"], tmp_path / "c.json")
