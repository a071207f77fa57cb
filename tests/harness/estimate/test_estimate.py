"""A config's expected wall time (``harness.estimate``): every planned run, data set and sweep job estimated,
each shape calibrated once, the jobs scheduled on the cores; a run's time from its budget; earlier records of
this machine used instead of calibrating; ``attnbench estimate`` and check-config's line."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from attnbench.harness.cli import main as cli_main
from attnbench.harness.config import planned_runs, resolve_run, validate_config
from attnbench.harness.core import paths
from attnbench.harness.estimate import costs
from attnbench.harness.estimate.calibrate import RunTiming
from attnbench.harness.estimate.data_shape import DataShape
from attnbench.harness.estimate.grid import estimate_pipeline
from attnbench.harness.estimate.history import History
from attnbench.harness.estimate.run_times import in_process_s, planned_steps
from attnbench.harness.results.records import RunKey, read_record
from attnbench.harness.run.train import train_run
from attnbench.tasks.base import build_task, save_prepared
from conftest import tiny_run
from snakemake_runs import TINY

FIXED = costs.reference_process_start()
TIMING = RunTiming(step_s=0.02, eval_example_s=0.001, setup_s=0.5, flops_per_step=1_000_000, source="calibrated")
SHAPE = DataShape(seq_len=48, vocab_size=20, num_classes=10, sizes={"train": 800, "val": 100, "test": 200},
                  paired=False, source="configured")


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The pipeline tests' tiny config (two tasks, full and its student, a two-length sweep), in an empty folder."""
    monkeypatch.chdir(tmp_path)
    return validate_config(copy.deepcopy(TINY))


@pytest.mark.parametrize("budget, steps", [({}, 300), ({"steps": 120}, 120), ({"flops": 5.5e7}, 55),
                                           ({"seconds": 2.0}, 100), ({"seconds": 60.0}, 300)])
def test_a_runs_steps_follow_its_budget(budget, steps):
    assert planned_steps({"steps": 300, "budget": budget}, TIMING) == steps


def test_a_runs_time_is_its_set_up_steps_evaluations_and_test():
    run = tiny_run()
    run["train"].update(steps=250, eval_every=100)
    expected = 0.5 + 250 * 0.02 + (3 * 100 + 200) * 0.001  # evaluations at 100, 200 and the last step
    assert in_process_s(run, SHAPE, TIMING, 250) == pytest.approx(expected)
    run["tuning"] = {"stage": "tune"}  # a tuning trial is never tested
    assert in_process_s(run, SHAPE, TIMING, 250) == pytest.approx(expected - 200 * 0.001)
    run["train"]["time_limit_min"] = 0.05  # 3 s of steps at most
    assert in_process_s(run, SHAPE, TIMING, 250) == pytest.approx(0.5 + 3.0 + 300 * 0.001)


@pytest.mark.slow
def test_every_planned_run_data_set_and_sweep_job_is_estimated(tiny):
    est = estimate_pipeline(tiny, 2, FIXED)
    keys = planned_runs(tiny)
    assert [run.key for run in est.runs] == keys and len(keys) == 8
    assert est.calibrated_shapes == 4  # per task: full and its 1-layer student, both seeds alike
    assert est.calibrated_cases == 4 and [s.variant for s in est.sweeps] == ["full"]
    for run in est.runs:
        twin = next(r for r in est.runs if r.key._replace(seed=1 - r.key.seed) == run.key)
        assert run.job_s == twin.job_s and run.source == "calibrated" and run.steps in (20, 30)
        assert run.job_s > run.train_s > 0
        if run.key.method == "distill":
            assert run.after == (RunKey(run.key.task, "full", run.key.seed).run_id,)
    assert sorted(est.prepare) == sorted({run.data for run in est.runs}) and len(est.prepare) == 2
    assert set(est.tail) == {"aggregate", "bench_aggregate", "report"}
    work = sum(r.job_s for r in est.runs) + sum(est.prepare.values())
    sweeps = sum(s.job_s for s in est.sweeps)
    # the schedule: at least the work shared by the cores, at most all of it one job after another
    assert est.start_s + work / 2 + sweeps <= est.wall_s <= est.start_s + work + sweeps + sum(est.tail.values())
    one_core = estimate_pipeline(tiny, 1, FIXED)
    assert one_core.wall_s > est.wall_s


@pytest.mark.slow
def test_prepared_data_is_not_prepared_again(tiny):
    for task in ("listops", "image"):
        section = resolve_run(tiny, task, "full", 0)["task"]
        data = build_task(task, section["data"]).prepare(paths.DATA / "work")
        save_prepared(paths.dataset_file(task, section["data_key"]), task, section["data"], data)
    est = estimate_pipeline(tiny, 2, FIXED, sweep=[])
    assert est.prepare == {} and est.sweeps == [] and "bench_aggregate" not in est.tail


@pytest.mark.slow
def test_records_of_this_machine_are_used_instead_of_calibrating(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = validate_config({**copy.deepcopy(TINY), "distill": {"students": {}}, "bench": {"enabled": False},
                              "tasks": {"listops": TINY["tasks"]["listops"]}})
    run = resolve_run(config, "listops", "full", 0)
    data = build_task("listops", run["task"]["data"]).prepare(tmp_path / "work")
    record = train_run(run, data, RunKey("listops", "full", 0).dir)
    est = estimate_pipeline(config, 2, FIXED)
    by_seed = {r.key.seed: r for r in est.runs}
    assert est.calibrated_shapes == 0
    assert by_seed[0].train_s == record["training"]["wall_s"]  # this very run: its time
    assert by_seed[0].source == by_seed[1].source == "record listops/full/seed0"  # seed 1: its shape's times
    assert by_seed[1].train_s == pytest.approx(by_seed[0].train_s)  # its step, evaluation and set-up times add up
    path = RunKey("listops", "full", 0).record
    other = read_record(path)
    other["environment"]["host"] = "another-machine"
    assert History([other]).timing(run) is None and History([other]).run_seconds(run) is None


@pytest.mark.slow
def test_estimate_command_prints_the_table_and_the_headline(tiny, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    assert cli_main(["estimate", "--config", str(path), "--cores", "2"]) == 0
    out = capsys.readouterr().out
    assert "listops  distilled[full]     2" in out and "image    full" in out
    assert out.strip().splitlines()[-1].startswith("expected wall time on this machine: ~")
    assert "calibrated: 4 run shapes and 4 sweep cases in" in out
    assert cli_main(["estimate", "--config", str(path), "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert len(est["runs"]) == 8 and est["wall_s"] > est["start_s"] > 0 and est["calibrated_shapes"] == 4
    assert {"run_id", "steps", "train_s", "job_s", "source"} <= set(est["runs"][0])
    assert cli_main(["estimate", "--config", str(path), "--cores", "0"]) == 2


@pytest.mark.slow
def test_check_config_says_the_expected_time_when_asked(tiny, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    assert cli_main(["check-config", "--config", str(path), "--estimate"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("expected wall time on this machine: ~") and lines[0].endswith(
        "(attnbench estimate for the breakdown)")
    assert lines[-1] == f"{path}: valid"
    assert cli_main(["check-config", "--config", str(path)]) == 0  # not a terminal: no calibration
    assert capsys.readouterr().out.strip() == f"{path}: valid"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU machine cannot time a CUDA config")
def test_a_config_this_machine_cannot_time_is_said_in_one_line(tiny, tmp_path, capsys):
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump({**TINY, "device": "cuda"}))
    assert cli_main(["estimate", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnbench: error: cannot time ") and "no CUDA device" in err and "\n" not in err
    assert cli_main(["check-config", "--config", str(path), "--estimate"]) == 0  # valid all the same
    assert capsys.readouterr().out.startswith("expected wall time on this machine: not estimated (cannot time ")
