"""Run records from real tiny training runs: schema, contents, and every non-ok status."""
from __future__ import annotations

import copy
import csv
import json
from collections import Counter

import pytest
import torch

from attnbench.harness.core.hashing import config_hash
from attnbench.harness.results.records import RecordError, read_record, validate_record, write_record
from attnbench.harness.run.model import EncoderClassifier, ModelConfig
from attnbench.harness.run.train import train_run
from conftest import tiny_run, torch_state_restored


@pytest.fixture(scope="module")
def ok_run(tmp_path_factory, tiny_listops_data):
    out = tmp_path_factory.mktemp("ok_run")
    run = tiny_run()
    with torch_state_restored():
        record = train_run(run, tiny_listops_data, out, bar=False)
    return run, record, out


@pytest.mark.slow
def test_record_written_and_valid(ok_run):
    run, record, out = ok_run
    stored = read_record(out / "record.json")
    assert stored == json.loads(json.dumps(record))
    assert stored["status"] == "ok" and stored["message"] is None
    assert stored["run_id"] == "listops/full/seed0"
    assert (stored["task"], stored["variant"], stored["seed"]) == ("listops", "full", 0)
    assert stored["config"] == json.loads(json.dumps(run))
    assert stored["config_hash"] == config_hash(stored["config"]) == config_hash(run)


def test_record_numbers(ok_run, tiny_listops_data):
    run, record, out = ok_run
    acc = record["accuracy"]
    assert 0.0 <= acc["best_val"] <= 1.0 and 0.0 <= acc["test"] <= 1.0
    eff = record["efficiency"]
    for key in ("train_steps_per_s", "train_tokens_per_s", "eval_tokens_per_s", "step_time_median_s"):
        assert eff[key] > 0, key
    assert eff["train_tokens_per_s"] == pytest.approx(eff["train_steps_per_s"] * run["train"]["batch_size"]
                                                      * tiny_listops_data.seq_len)
    assert isinstance(eff["params"], int) and eff["params"] > 0
    assert eff["attention_flops_fwd"] is None or eff["attention_flops_fwd"] > 0
    assert eff["peak_memory_bytes"] is not None and eff["peak_memory_method"]
    train = record["training"]
    assert train["steps_planned"] == train["steps_done"] == run["train"]["steps"] == 10
    sizes = {s: int(t["labels"].shape[0]) for s, t in tiny_listops_data.splits.items()}
    assert record["data"]["sizes"] == sizes == {"train": 200, "val": 50, "test": 50}
    assert record["data"]["key"] == run["task"]["data_key"]
    env = record["environment"]
    assert {"commit", "dirty"} <= set(env["git"])
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"


def test_record_curve_checkpoint_and_test_accuracy(ok_run, tiny_listops_data):
    run, record, out = ok_run
    with open(out / record["training"]["curve"], newline="") as f:
        curve = list(csv.DictReader(f))
    assert [int(r["step"]) for r in curve] == [5, 10]
    val_accs = [float(r["val_acc"]) for r in curve]
    assert record["accuracy"]["best_val"] == pytest.approx(max(val_accs))
    assert record["accuracy"]["best_step"] == int(curve[val_accs.index(max(val_accs))]["step"])

    ckpt = torch.load(out / record["training"]["checkpoint"], weights_only=True)
    assert ckpt["step"] == record["accuracy"]["best_step"]
    # every learned tensor is in the state dict (learned positions: no buffers), so it counts the parameters
    assert sum(v.numel() for v in ckpt["model"].values()) == record["efficiency"]["params"]
    # the test accuracy is that of the best-validation checkpoint
    data = tiny_listops_data
    model = EncoderClassifier(ModelConfig(**run["model"]), "full", {}, data.vocab_size, data.seq_len, data.num_classes)
    model.load_state_dict(ckpt["model"])
    model.eval()
    with torch.no_grad():
        pred = model(data.splits["test"]["tokens"]).argmax(-1)
    assert record["accuracy"]["test"] == pytest.approx((pred == data.splits["test"]["labels"]).float().mean().item())


def test_record_baselines(ok_run, tiny_listops_data):
    _, record, _ = ok_run
    train_labels = tiny_listops_data.splits["train"]["labels"].tolist()
    test_labels = tiny_listops_data.splits["test"]["labels"].tolist()
    counts = Counter(train_labels)
    top = max(counts.values())
    assert counts[record["baselines"]["majority_class"]] == top
    majority = record["baselines"]["majority_class"]
    assert record["baselines"]["majority_test_acc"] == pytest.approx(test_labels.count(majority) / len(test_labels))
    assert record["baselines"]["chance"] == pytest.approx(0.1)


def _set(section: str | None, key: str, value):
    def damage(record):
        (record[section] if section else record)[key] = value
    return damage


#: damages a record can have, each with what the refusal names
DAMAGES = {
    "missing-status": (lambda r: r.pop("status"), "status"),
    "bad-status": (_set(None, "status", "finished"), "status"),
    "extra-key": (_set(None, "colour", "blue"), "colour"),
    "bad-hash": (_set(None, "config_hash", "xyz"), "config_hash"),
    "accuracy>1": (_set("accuracy", "test", 1.5), "accuracy.test"),
    # issue 26: numbers that cannot be true, and records that are not the run they say
    "nan-accuracy": (_set("accuracy", "test", float("nan")), "accuracy.test is nan"),
    "ok-without-test-accuracy": (_set("accuracy", "test", None), "accuracy.test"),
    "negative-tokens-per-s": (_set("efficiency", "train_tokens_per_s", -1.0), "efficiency.train_tokens_per_s"),
    "infinite-tokens-per-s": (_set("efficiency", "eval_tokens_per_s", float("inf")), "eval_tokens_per_s is inf"),
    "negative-memory": (_set("efficiency", "peak_memory_bytes", -1), "efficiency.peak_memory_bytes"),
    "negative-params": (_set("efficiency", "params", -5), "efficiency.params"),
    "baseline>1": (_set("baselines", "majority_test_acc", 1.5), "baselines.majority_test_acc"),
    "negative-chance": (_set("baselines", "chance", -0.1), "baselines.chance"),
    "wrong-run_id": (_set(None, "run_id", "listops/window/seed0"), "run_id 'listops/window/seed0' is not"),
    "wrong-config_hash": (_set(None, "config_hash", "0" * 16), "config_hash 0000000000000000 is not the hash"),
    "wrong-seed": (_set(None, "seed", 3), "seed 3 but its config's seed 0"),
    "wrong-variant": (_set(None, "variant", "window"), "variant 'window' but its config's variant 'full'"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_invalid_records_rejected(ok_run, tmp_path, damage):
    _, record, _ = ok_run
    bad = copy.deepcopy(record)
    apply, named = DAMAGES[damage]
    apply(bad)
    path = tmp_path / "record.json"
    path.write_text(json.dumps(bad))  # NaN and infinities as Python writes them: NaN, Infinity
    with pytest.raises(RecordError) as info:
        read_record(path)
    assert str(path) in str(info.value) and named in str(info.value)
    with pytest.raises(RecordError):
        write_record(tmp_path / "other" / "record.json", bad)
    assert not (tmp_path / "other" / "record.json").exists()


def test_unreadable_record(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("{not json")
    with pytest.raises(RecordError, match="cannot read"):
        read_record(path)
    with pytest.raises(RecordError):
        read_record(tmp_path / "missing.json")


def test_validate_record_accepts_real_record(ok_run):
    validate_record(copy.deepcopy(ok_run[1]))


# ---------------------------------------------------------------- non-ok outcomes still leave a record

def _check_written(out, status):
    stored = read_record(out / "record.json")
    assert stored["status"] == status
    assert stored["message"], "a run that did not end ok must say why"
    assert stored["config_hash"] == config_hash(stored["config"])
    return stored


@pytest.mark.slow
def test_divergence_gives_diverged_record(tmp_path, tiny_listops_data):
    run = tiny_run(train={"lr": 1.0e6, "warmup_steps": 0})
    record = train_run(run, tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "diverged", record["message"]
    stored = _check_written(tmp_path, "diverged")
    assert "non-finite" in stored["message"]
    assert stored["training"]["steps_done"] <= stored["training"]["steps_planned"]


@pytest.mark.slow
def test_nan_loss_gives_diverged_record(tmp_path, tiny_listops_data, monkeypatch):
    original = EncoderClassifier.forward
    calls = {"n": 0}

    def poisoned(self, tokens, padded=True):
        calls["n"] += 1
        out = original(self, tokens, padded)
        # the first training forward is the FLOP count's (Trainer.count_step_flops), before step 1
        return out * float("nan") if self.training and calls["n"] >= 4 else out

    monkeypatch.setattr(EncoderClassifier, "forward", poisoned)
    record = train_run(tiny_run(), tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "diverged"
    stored = _check_written(tmp_path, "diverged")
    assert "nan" in stored["message"]
    assert stored["training"]["steps_done"] == 2  # the third training forward went non-finite


@pytest.mark.slow
def test_exception_in_model_gives_failed_record(tmp_path, tiny_listops_data, monkeypatch):
    def broken(self, tokens, padded=True):
        raise RuntimeError("deliberately broken forward")

    monkeypatch.setattr(EncoderClassifier, "forward", broken)
    record = train_run(tiny_run(), tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "failed"
    stored = _check_written(tmp_path, "failed")
    assert "deliberately broken forward" in stored["message"] and "RuntimeError" in stored["message"]
    assert stored["accuracy"] == {"best_val": None, "test": None, "best_step": None, "checkpoint": None,
                                  "test_confusion": None}
    assert stored["training"]["checkpoint"] is None


@pytest.mark.slow
def test_out_of_memory_gives_oom_record(tmp_path, tiny_listops_data, monkeypatch):
    def oom(self, tokens, padded=True):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")

    monkeypatch.setattr(EncoderClassifier, "forward", oom)
    record = train_run(tiny_run(), tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "oom"
    _check_written(tmp_path, "oom")


@pytest.mark.slow
def test_time_limit_gives_timeout_record(tmp_path, tiny_listops_data):
    run = tiny_run(train={"time_limit_min": 1.0e-9})
    record = train_run(run, tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "timeout"
    stored = _check_written(tmp_path, "timeout")
    assert 1 <= stored["training"]["steps_done"] < stored["training"]["steps_planned"]
    assert stored["accuracy"]["test"] is not None  # the checkpoint from before the limit is still tested


@pytest.mark.slow
def test_a_run_that_finished_all_its_steps_is_ok_however_late_its_last_evaluation(tmp_path, tiny_listops_data):
    """The time limit stops a run with steps left to do; the last step is evaluated once (issue 26, 1)."""
    run = tiny_run(train={"steps": 2, "warmup_steps": 0, "eval_every": 1, "time_limit_min": 1.0e-9})
    record = train_run(run, tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "timeout" and record["training"]["steps_done"] == 1  # step 1 of 2: stopped
    run = tiny_run(train={"steps": 1, "warmup_steps": 0, "eval_every": 1, "time_limit_min": 1.0e-9})
    record = train_run(run, tiny_listops_data, tmp_path / "one", bar=False)
    assert (record["status"], record["message"], record["training"]["steps_done"]) == ("ok", None, 1)
    steps = [line.split(",")[0] for line in (tmp_path / "one" / "curve.csv").read_text().splitlines()[1:]]
    assert steps == ["1"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_gives_failed_record(tmp_path, tiny_listops_data):
    run = tiny_run()
    run["device"] = "cuda"
    record = train_run(run, tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "failed"
    assert "cuda" in _check_written(tmp_path, "failed")["message"]
