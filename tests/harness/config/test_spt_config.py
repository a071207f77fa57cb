"""The config's ``spt:`` section (self-pretraining): what it plans, how its runs resolve (the pretraining's and
the fine-tuning's settings over the variant's own, the task's masking rate), and what it refuses, one line each."""
from __future__ import annotations

import pytest

from attnbench.harness.config import ConfigError, planned_runs, resolve_run, run_hash, validate_config
from attnbench.harness.config.runs import planned_pretraining
from attnbench.harness.results.records import RunKey
from conftest import tiny_config


def config(**spt) -> dict:
    return validate_config(tiny_config(variants={"full": {}, "linear": {}}, spt={"variants": ["full"], **spt}))


def test_each_listed_variant_gets_a_fine_tuning_run_and_a_pretraining_per_task_and_seed():
    c = config()
    spt = [k for k in planned_runs(c) if k.method == "spt"]
    assert {(k.task, k.variant) for k in spt} == {(t, "full") for t in c["tasks"]}
    assert len(spt) == len(c["tasks"]) * len(c["seeds"])
    assert [k._replace(method="spt") for k in planned_pretraining(c)] == spt
    assert {k.label for k in spt} == {"spt[full]"}
    assert RunKey("listops", "full", 0, "pretrain").dir.parts[-4:] == ("pretrain", "listops", "full", "seed0")
    off = validate_config(tiny_config())
    assert planned_pretraining(off) == [] and not [k for k in planned_runs(off) if k.method == "spt"]


def test_runs_from_labels_keep_their_hashes_when_spt_is_on():
    on, off = config(), validate_config(tiny_config(variants={"full": {}, "linear": {}}))
    for key in planned_runs(off):
        assert run_hash(on, key) == run_hash(off, key)


def test_pretraining_and_fine_tuning_settings_resolve_over_the_variants_own():
    c = config(train={"steps": 77, "lr": 0.002}, finetune={"lr": 0.0005}, masking="span", span_length=4)
    labels = resolve_run(c, "listops", "full", 0)
    pre = resolve_run(c, "listops", "full", 0, "pretrain")
    fine = resolve_run(c, "listops", "full", 0, "spt")
    assert pre["model"] == fine["model"] == labels["model"] and pre["variant"] == labels["variant"]
    assert (pre["train"]["steps"], pre["train"]["lr"]) == (77, 0.002)
    assert pre["train"]["batch_size"] == labels["train"]["batch_size"]
    assert (fine["train"]["steps"], fine["train"]["lr"]) == (labels["train"]["steps"], 0.0005)
    assert pre["method"] == {"name": "pretrain", "mask_rate": 0.1, "masking": "span", "span_length": 4,
                             "mask_token": 0.8, "random_token": 0.1, "holdout": 0.05}
    # the fine-tuning's hash covers the pretraining: its objective and its training settings
    assert fine["method"]["pretrain"]["train"] == pre["train"]
    other = config(train={"steps": 78, "lr": 0.002}, finetune={"lr": 0.0005}, masking="span", span_length=4)
    assert run_hash(other, RunKey("listops", "full", 0, "spt")) != run_hash(c, RunKey("listops", "full", 0, "spt"))


@pytest.mark.parametrize("task, data, rate", [("listops", {}, 0.10), ("image", {"source": "digits"}, 0.50)])
def test_the_masking_rate_is_the_tasks_from_the_paper_unless_set(task, data, rate):
    for spt, want in (({}, rate), ({"mask_rate": 0.3}, 0.3)):
        c = validate_config(tiny_config(tasks={task: {"data": data}}, spt={"variants": ["full"], **spt}))
        assert resolve_run(c, task, "full", 0, "pretrain")["method"]["mask_rate"] == want


@pytest.mark.parametrize("spt, other, says", [
    ({"variants": ["nystrom"]}, {}, "'spt.variants' names 'nystrom', which is not in 'variants'"),
    ({"variants": ["full"], "mask_token": 0.7, "random_token": 0.4}, {}, "'spt.mask_token' (0.7) + 'spt.random_token'"),
    ({"variants": ["full"]}, {"tune": {"trials": 2, "space": {"train.lr": {"low": 1e-4, "high": 1e-2}}}},
     "'spt' with 'tune'"),
    ({"variants": ["full"], "train": {"batch_size": 10, "accumulate": 4}}, {},
     "'spt.train': 'accumulate' does not divide 'batch_size'"),
    ({"variants": ["full"], "train": {"stepz": 3}}, {}, "'spt.train.stepz'"),
    ({"variants": ["full"], "mask_rate": 0}, {}, "'spt.mask_rate' is 0"),
])
def test_what_the_section_refuses_is_said_in_one_line(spt, other, says):
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config(spt=spt, **other))
    assert says in str(err.value)
