"""The test split's confusion counts in a run's record (issue 29): rows the true class, columns the predicted
one, counted on the device during the test pass only and read once; they agree with the test accuracy and the
test split's labels, for a run trained from labels and for a distilled student; null where no test ran."""
from __future__ import annotations

import json

import pytest
import torch
from torch.overrides import TorchFunctionMode

from attnbench.harness.config import resolve_run, validate_config
from attnbench.harness.results.records import read_record
from attnbench.harness.run.distill import distill_run
from attnbench.harness.run.progress import Log
from attnbench.harness.run.train import Trainer, seed_everything, train_run
from conftest import tiny_config, tiny_run, torch_state_restored


def assert_confusion_agrees(record: dict, data) -> None:
    """The record's confusion: num_classes square, summing to the test size, each row to its class's test
    count, its diagonal over the total the test accuracy."""
    confusion = torch.tensor(record["accuracy"]["test_confusion"])
    labels = data.splits["test"]["labels"]
    assert confusion.shape == (data.num_classes, data.num_classes)
    assert int(confusion.sum()) == len(labels) == record["data"]["sizes"]["test"]
    assert confusion.sum(dim=1).tolist() == torch.bincount(labels, minlength=data.num_classes).tolist()
    assert int(confusion.diag().sum()) / len(labels) == pytest.approx(record["accuracy"]["test"], abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["best", "final"])
def test_the_record_holds_the_test_confusion_of_the_tested_weights(tmp_path, tiny_listops_data, checkpoint):
    run = tiny_run(train={"steps": 20, "eval_every": 5, "test_checkpoint": checkpoint})
    record = train_run(run, tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "ok", record["message"]
    assert record["accuracy"]["checkpoint"] == checkpoint
    stored = read_record(tmp_path / "record.json")  # valid against the schema, as written
    assert stored["accuracy"]["test_confusion"] == record["accuracy"]["test_confusion"]
    assert_confusion_agrees(stored, tiny_listops_data)


class Calls(TorchFunctionMode):
    """Counts the torch functions called (by name) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", ""))
        return func(*args, **(kwargs or {}))


@pytest.mark.slow
def test_only_the_test_pass_counts_and_reads_the_confusion_once(tiny_listops_data):
    run = tiny_run(train={"eval_batch_size": 16})  # the 50 test examples in 4 batches
    seed_everything(0, False)
    trainer = Trainer(run, tiny_listops_data, torch.device("cpu"))
    trainer.fit(Log(10, "fit", bar=False))
    assert trainer.test_confusion is None
    with Calls() as validating:  # as each evaluation during training validates
        trainer.evaluate("val")
    assert "bincount" not in validating.names and trainer.test_confusion is None
    with Calls() as testing:
        accuracy = trainer.test("ok")
    assert testing.names.count("bincount") == 4 and testing.names.count("tolist") == 1
    confusion = torch.tensor(trainer.test_confusion)
    assert int(confusion.diag().sum()) / 50 == pytest.approx(accuracy)


def test_a_run_that_never_trained_records_no_confusion(tmp_path, tiny_listops_data):
    if torch.cuda.is_available():
        pytest.skip("the run must fail to start: it asks for CUDA where torch sees none")
    record = train_run(tiny_run(device="cuda"), tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "failed" and record["accuracy"]["test"] is None
    assert json.loads((tmp_path / "record.json").read_text())["accuracy"]["test_confusion"] is None


@pytest.mark.slow
def test_a_distilled_student_records_its_confusion(tmp_path, tiny_listops_data):
    config = validate_config(tiny_config(distill={"students": {"full": {}}}, model={"layers": 2}))
    with torch_state_restored():
        train_run(resolve_run(config, "listops", "full", 0), tiny_listops_data, tmp_path / "full", bar=False)
        record = distill_run(resolve_run(config, "listops", "full", 0, "distill"), tiny_listops_data,
                             tmp_path / "distilled", tmp_path / "full", bar=False)
    assert record["status"] == "ok" and record["method"] == "distill", record["message"]
    assert_confusion_agrees(read_record(tmp_path / "distilled" / "record.json"), tiny_listops_data)
