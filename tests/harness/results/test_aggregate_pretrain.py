"""The ``pretrain_*`` columns of ``results/summary.csv``: a real self-pretrained run (pretrained, then fine-tuned,
tiny) is aggregated beside its variant's run from scratch, and its row holds its record's ``pretrain`` entry and
objective; the run from scratch's row holds none."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from attnbench.harness.config import resolve_run, validate_config
from attnbench.harness.results.aggregate import COLUMNS, aggregate
from attnbench.harness.results.records import read_record
from attnbench.harness.run.pretrain import pretrain_run
from attnbench.harness.run.self_pretrained import spt_run
from attnbench.harness.run.train import train_run
from conftest import tiny_config

PRETRAIN_COLUMNS = ["pretrain_run_id", "pretrain_status", "pretrain_steps", "pretrain_train_s", "pretrain_wall_s",
                    "pretrain_tokens_seen", "pretrain_masked_acc", "pretrain_peak_memory_mb", "pretrain_mask_rate",
                    "pretrain_masking"]


@pytest.fixture(scope="module")
def aggregated(tmp_path_factory, tiny_listops_data):
    """(summary table, the spt record, its pretraining record): listops/full from scratch and self-pretrained
    (span masking at 0.2, so that the objective is not the defaults), seed 0, under ``results/``."""
    root = tmp_path_factory.mktemp("spt_aggregate") / "results"
    config = validate_config(tiny_config(
        train={"steps": 4, "eval_every": 2},
        spt={"variants": ["full"], "mask_rate": 0.2, "masking": "span", "span_length": 2, "train": {"steps": 3}}))
    data = tiny_listops_data
    train_run(resolve_run(config, "listops", "full", 0), data, root / "runs/listops/full/seed0", bar=False)
    pretrain_dir = root / "pretrain/listops/full/seed0"
    pretrain_run(resolve_run(config, "listops", "full", 0, "pretrain"), data, pretrain_dir, bar=False)
    record = spt_run(resolve_run(config, "listops", "full", 0, "spt"), data, root / "runs/listops/spt-full/seed0",
                     pretrain_dir, bar=False)
    out = root / "summary.csv"
    result = aggregate(root / "runs", out)
    assert result.set_aside == [] and result.left_out == []
    return pd.read_csv(out), record, read_record(pretrain_dir / "record.json")


def test_the_self_pretrained_row_holds_its_records_pretraining(aggregated):
    df, record, pretraining = aggregated
    assert list(df.columns) == COLUMNS and COLUMNS[-len(PRETRAIN_COLUMNS):] == PRETRAIN_COLUMNS
    assert sorted(df["method"]) == ["labels", "spt"]
    row = df[df["method"] == "spt"].iloc[0]
    assert (row["variant"], row["attention"]) == ("spt[full]", "full")
    pretrain = record["pretrain"]
    assert row["pretrain_run_id"] == pretrain["run_id"] == "listops/pretrain[full]/seed0"
    assert row["pretrain_status"] == pretrain["status"] == "ok"
    assert row["pretrain_steps"] == pretrain["steps_done"] == pretraining["training"]["steps_done"] == 3
    assert row["pretrain_train_s"] == pytest.approx(pretrain["train_s"]) and pretrain["train_s"] > 0
    assert row["pretrain_wall_s"] == pytest.approx(pretrain["wall_s"])
    assert row["pretrain_tokens_seen"] == pretrain["tokens_seen"] == pretraining["pretraining"]["tokens_seen"] > 0
    assert row["pretrain_masked_acc"] == pytest.approx(pretrain["best_masked_acc"])
    assert row["pretrain_masked_acc"] == pytest.approx(pretraining["pretraining"]["best_masked_acc"])
    assert row["pretrain_peak_memory_mb"] == pytest.approx(pretrain["peak_memory_bytes"] / 2**20)
    assert (row["pretrain_mask_rate"], row["pretrain_masking"]) == (0.2, "span")
    # the fine-tuning's own time is train_s; the pretraining's is apart
    assert row["train_s"] == pytest.approx(record["training"]["train_s"])


def test_other_runs_have_no_pretraining_columns(aggregated):
    df, _, _ = aggregated
    row = df[df["method"] == "labels"].iloc[0]
    assert row["variant"] == "full"
    assert all(pd.isna(row[c]) for c in PRETRAIN_COLUMNS)
    assert not math.isnan(row["test_acc"])
