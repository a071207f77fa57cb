"""The estimate counts self-pretraining (``spt:``): each pretraining run is a job of its own, timed with its
masked-token step and its held-out evaluations (no test pass), and each fine-tuning waits for its pretraining."""
from __future__ import annotations

import copy

import pytest

from attnbench.harness.config import planned_runs, resolve_run, validate_config
from attnbench.harness.config.runs import planned_pretraining
from attnbench.harness.estimate import costs
from attnbench.harness.estimate.calibrate import RunTiming
from attnbench.harness.estimate.data_shape import DataShape
from attnbench.harness.estimate.grid import estimate_pipeline
from attnbench.harness.estimate.run_times import in_process_s
from attnbench.harness.results.records import RunKey
from snakemake_runs import TINY

TIMING = RunTiming(step_s=0.02, eval_example_s=0.001, setup_s=0.5, flops_per_step=1_000_000, source="calibrated")
SHAPE = DataShape(seq_len=48, vocab_size=20, num_classes=10, sizes={"train": 800, "val": 100, "test": 200},
                  paired=False, source="configured")


def spt_config(**spt) -> dict:
    config = copy.deepcopy(TINY)
    config.update(seeds=[0], distill={"students": {}}, bench={"enabled": False},
                  spt={"variants": ["full"], **spt})
    config["tasks"] = {"listops": config["tasks"]["listops"]}
    return validate_config(config)


def test_a_pretraining_run_evaluates_its_heldout_inputs_and_tests_nothing():
    config = spt_config(holdout=0.1, train={"steps": 250, "eval_every": 100})
    run = resolve_run(config, "listops", "full", 0, "pretrain")
    heldout = round(800 * 0.1)  # of the task's training split; its validation and test splits are not read
    assert in_process_s(run, SHAPE, TIMING, 250) == pytest.approx(0.5 + 250 * 0.02 + 3 * heldout * 0.001)
    fine_tune = resolve_run(config, "listops", "full", 0, "spt")  # a run from labels: validation and test
    steps = fine_tune["train"]["steps"]
    evaluations = steps // 10 + bool(steps % 10)
    assert in_process_s(fine_tune, SHAPE, TIMING, steps) == pytest.approx(
        0.5 + steps * 0.02 + (evaluations * 100 + 200) * 0.001)


@pytest.mark.slow
def test_the_pipeline_estimate_has_each_pretraining_before_its_fine_tuning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = spt_config(train={"steps": 60})
    est = estimate_pipeline(config, 2, costs.reference_process_start())
    assert [run.key for run in est.runs] == planned_runs(config) + planned_pretraining(config)
    by_key = {run.key: run for run in est.runs}
    pretrain, fine_tune = RunKey("listops", "full", 0, "pretrain"), RunKey("listops", "full", 0, "spt")
    assert by_key[fine_tune].after == (pretrain.run_id,)
    assert by_key[pretrain].steps == 60 and by_key[fine_tune].steps == 30
    # calibrated with its own step (masked tokens over every position): another shape than the run from labels
    assert est.calibrated_shapes == 3
    # the fine-tuning starts after its pretraining ends: the wall time holds both one after the other
    assert est.wall_s >= est.start_s + by_key[pretrain].job_s + by_key[fine_tune].job_s
