"""Self-pretraining's pretraining run (``harness.run.pretrain``): what it reads (the training split's inputs, never
labels nor the validation or test inputs: issue 31's test, structurally and by its outcome), its model, its
record, a pair's two documents, and resuming a killed run. Runs are resolved from a tiny config
(``config.runs.resolve_run``), on the CPU, deterministic and on one thread, so that two runs of the same
inputs end bit-identical."""
from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from test_resume import _assert_same_result, _curve, _interrupted

from attnbench.harness.config import resolve_run, validate_config
from attnbench.harness.results.records import RunKey, read_record
from attnbench.harness.run.masking import masked_token_loss
from attnbench.harness.run.pretrain import (
    MaskedTokenModel,
    PretrainingDataError,
    PretrainTrainer,
    pretrain_run,
    pretraining_view,
)
from attnbench.tasks.base import PreparedData
from conftest import tiny_config, torch_state_restored

#: a few steps, evaluated twice
TRAIN = {"steps": 10, "eval_every": 5, "lr": 0.005, "warmup_steps": 2}


def spt_config(**override) -> dict:
    """The tiny config with ``full`` self-pretrained, deterministic on one CPU thread (dropout on: the global
    generator matters)."""
    return validate_config(tiny_config(**{"spt": {"variants": ["full"]}, "train": TRAIN, "model": {"dropout": 0.1},
                                          "threads": 1, "deterministic": True, "device": "cpu", **override}))


def rows(tokens: torch.Tensor) -> collections.Counter:
    """The examples of a split as a multiset of their token lists (a pair's: both documents)."""
    return collections.Counter(tuple(row) for row in tokens.reshape(tokens.shape[0], -1).tolist())


def paired_data(n: int = 60, seq_len: int = 12, vocab: int = 20, seed: int = 0) -> PreparedData:
    """A Retrieval-like data set by hand: two documents per example (tokens (n, 2, seq_len)), padded ends."""
    g = torch.Generator().manual_seed(seed)

    def split(m: int) -> dict[str, torch.Tensor]:
        tokens = torch.randint(1, vocab, (m, 2, seq_len), generator=g)
        lengths = torch.randint(3, seq_len + 1, (m, 2, 1), generator=g)
        tokens[torch.arange(seq_len) >= lengths] = 0
        return {"tokens": tokens, "labels": torch.randint(0, 2, (m,), generator=g)}

    return PreparedData(splits={"train": split(n), "val": split(16), "test": split(16)}, seq_len=seq_len,
                        vocab_size=vocab, num_classes=2, label_names=["no", "yes"], paired=True,
                        source="hand-made document pairs")


def paired_config(**override) -> dict:
    """``spt_config`` with a Retrieval task (its data made by hand: ``paired_data``; the path is never read)."""
    return spt_config(tasks={"retrieval": {"data": {"path": "unused", "seq_len": 12}}}, **override)


def pretrain(run: dict, data: PreparedData, out: Path) -> dict:
    with torch_state_restored():
        return pretrain_run(run, data, out, bar=False)


# ---------------------------------------------------------------- what pretraining reads: the view

def test_view_holds_the_training_inputs_only(tiny_listops_data):
    data = tiny_listops_data
    train = data.splits["train"]["tokens"]
    view = pretraining_view(data, 0.1, seed=3)
    assert set(view.splits) == {"train", "val"}  # no test split, and "val" is not the task's
    held = round(train.shape[0] * 0.1)
    assert view.splits["val"]["tokens"].shape[0] == held
    assert view.splits["train"]["tokens"].shape[0] == train.shape[0] - held
    # every training example once, in train or val: a permutation of the training split's rows
    together = torch.cat([view.splits["train"]["tokens"], view.splits["val"]["tokens"]])
    assert together.shape == train.shape and rows(together) == rows(train)
    for split in view.splits.values():  # labels: zeros, never the task's
        assert split["labels"].dtype == torch.long and torch.equal(split["labels"],
                                                                   torch.zeros(split["tokens"].shape[0],
                                                                               dtype=torch.long))
    assert view.num_classes == data.vocab_size and view.label_names == []
    assert (view.vocab_size, view.seq_len, view.pad_id, view.paired) == (data.vocab_size, data.seq_len,
                                                                          data.pad_id, data.paired)
    # seeded: the same seed holds out the same examples, another seed others
    assert torch.equal(pretraining_view(data, 0.1, seed=3).splits["val"]["tokens"], view.splits["val"]["tokens"])
    assert not torch.equal(pretraining_view(data, 0.1, seed=4).splits["val"]["tokens"], view.splits["val"]["tokens"])


def test_view_of_pairs_keeps_both_documents():
    data = paired_data()
    view = pretraining_view(data, 0.2, seed=0)
    assert view.splits["train"]["tokens"].shape[1:] == (2, data.seq_len) and view.paired
    together = torch.cat([view.splits["train"]["tokens"], view.splits["val"]["tokens"]])
    assert rows(together) == rows(data.splits["train"]["tokens"])


def test_view_holds_out_at_least_one_example_and_needs_two():
    data = paired_data(n=2)
    view = pretraining_view(data, 0.01, seed=0)
    assert (view.splits["train"]["tokens"].shape[0], view.splits["val"]["tokens"].shape[0]) == (1, 1)
    with pytest.raises(PretrainingDataError, match="has 1 example"):
        pretraining_view(paired_data(n=1), 0.05, seed=0)


# ---------------------------------------------------------------- what pretraining reads: its outcome

@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_listops_data):
    """The tiny pretraining run of listops/full/seed0, in its own folder (results/pretrain/...) under a
    temporary root."""
    run = resolve_run(spt_config(), "listops", "full", 0, "pretrain")
    out = tmp_path_factory.mktemp("pretrain") / RunKey.of(run).dir
    return run, pretrain(run, tiny_listops_data, out), out


class Unreadable:
    """Stands for a tensor or split pretraining must not read: any use of it fails the test."""

    def __init__(self, what: str):
        object.__setattr__(self, "what", what)

    def __getattr__(self, name):
        raise AssertionError(f"pretraining read {self.what} ({name})")

    def __getitem__(self, key):
        raise AssertionError(f"pretraining read {self.what} ([{key!r}])")

    def __iter__(self):
        raise AssertionError(f"pretraining iterated over {self.what}")

    def __len__(self):
        raise AssertionError(f"pretraining took the length of {self.what}")


@pytest.mark.slow
def test_pretraining_ignores_labels_and_the_validation_and_test_splits(reference, tiny_listops_data, tmp_path):
    """The same training inputs with other training labels (other classes, too) and other validation and test
    splits (random tokens, other sizes): bit-identical weights and the same curve."""
    run, record, out = reference
    data = tiny_listops_data
    g = torch.Generator().manual_seed(99)

    def junk(n: int) -> dict[str, torch.Tensor]:
        return {"tokens": torch.randint(1, data.vocab_size, (n, data.seq_len), generator=g),
                "labels": torch.randint(0, 7, (n,), generator=g)}

    train = data.splits["train"]
    labels = train["labels"][torch.randperm(train["labels"].shape[0], generator=g)]
    labels[::3] = 6
    assert not torch.equal(labels, train["labels"])
    other = dataclasses.replace(data, splits={"train": {"tokens": train["tokens"].clone(), "labels": labels},
                                              "val": junk(13), "test": junk(31)},
                                num_classes=7, label_names=[f"class {i}" for i in range(7)])
    again = pretrain(run, other, tmp_path / "other")
    assert again["pretraining"] == record["pretraining"] and again["baselines"] == record["baselines"]
    _assert_same_result(out, tmp_path / "other")


@pytest.mark.slow
def test_other_training_inputs_give_other_weights(reference, tiny_listops_data, tmp_path):
    """What makes the test above able to fail: the same run on other training inputs (two ids swapped
    everywhere) ends elsewhere."""
    run, _, out = reference
    data = tiny_listops_data
    tokens = data.splits["train"]["tokens"].clone()
    a, b = tokens == 3, tokens == 4
    tokens[a], tokens[b] = 4, 3
    other = dataclasses.replace(data, splits={**data.splits, "train": {**data.splits["train"], "tokens": tokens}})
    pretrain(run, other, tmp_path / "other")
    best, best_other = (torch.load(d / "best.pt", weights_only=True)["model"] for d in (out, tmp_path / "other"))
    assert any(not torch.equal(best[k], best_other[k]) for k in best)
    assert _curve(tmp_path / "other") != _curve(out)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["unreadable", "deleted"])
def test_pretraining_never_touches_labels_validation_or_test(reference, tiny_listops_data, tmp_path, how):
    """The training labels and the validation and test splits replaced by objects that fail on any use, or
    deleted: pretraining runs, and ends where it does with them."""
    run, _, out = reference
    tokens = tiny_listops_data.splits["train"]["tokens"]
    if how == "unreadable":
        splits = {"train": {"tokens": tokens, "labels": Unreadable("the training labels")},
                  "val": Unreadable("the validation split"), "test": Unreadable("the test split")}
    else:
        splits = {"train": {"tokens": tokens}}
    guarded = dataclasses.replace(tiny_listops_data, splits=splits)
    record = pretrain(run, guarded, tmp_path / how)
    assert record["status"] == "ok", record["message"]
    _assert_same_result(out, tmp_path / how)


# ---------------------------------------------------------------- the model and the loss

@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_masked_token_model_predicts_every_position_over_the_vocabulary(tiny_listops_data, pooling):
    data = tiny_listops_data
    run = resolve_run(spt_config(model={"pooling": pooling}), "listops", "full", 0, "pretrain")
    torch.manual_seed(0)
    model = MaskedTokenModel.for_run(run, data)
    assert model.mask_id == data.vocab_size and model.encoder.embed.num_embeddings == data.vocab_size + 1
    assert not list(model.encoder.head.parameters())  # the classifier head is gone
    assert not any(k.startswith("encoder.head.") for k in model.state_dict())
    x = data.splits["train"]["tokens"][:4]
    x = torch.where(torch.arange(x.shape[1]) == 2, torch.full_like(x, model.mask_id), x)  # [MASK] is an input
    assert model(x).shape == (4, data.seq_len, data.vocab_size)


@pytest.mark.slow
def test_trainer_loss_reads_no_labels_and_evaluation_repeats(tiny_listops_data):
    run = resolve_run(spt_config(), "listops", "full", 0, "pretrain")
    view = pretraining_view(tiny_listops_data, run["method"]["holdout"], 0)
    with torch_state_restored():
        torch.manual_seed(0)
        trainer = PretrainTrainer(run, view, torch.device("cpu"))
    trainer.model.eval()  # no dropout: the loss depends on the masking draw only
    x = view.splits["train"]["tokens"][:8]
    losses = []
    for y in (torch.zeros(8, dtype=torch.long), torch.arange(8)):
        torch.manual_seed(5)
        losses.append(trainer.loss(x, y))
    assert torch.equal(losses[0], losses[1])
    # the loss is the masked-token loss of the drawn corruption
    torch.manual_seed(5)
    tokens, chosen, inputs = trainer.draw(x, True)
    assert torch.equal(tokens, x) and chosen.any() and not (chosen & (x == view.pad_id)).any()
    assert torch.equal(inputs[~chosen], x[~chosen]) and (inputs[chosen] == trainer.masked_model.mask_id).any()
    assert torch.equal(losses[0], masked_token_loss(trainer.model(inputs), tokens, chosen))
    # the held-out evaluation draws the same positions each time, whatever the global generator
    torch.manual_seed(1)
    first = trainer.evaluate("val")
    torch.manual_seed(2)
    assert trainer.evaluate("val") == first and 0.0 <= first[0] <= 1.0
    assert trainer.test("ok") is None


# ---------------------------------------------------------------- the record

@pytest.mark.slow
def test_pretraining_record(reference, tiny_listops_data):
    run, record, out = reference
    assert out.parts[-4:] == ("pretrain", "listops", "full", "seed0")  # results/pretrain/TASK/VARIANT/seedS
    assert record["status"] == "ok", record["message"]
    stored = read_record(out / "record.json")  # the schema, and the run folder it lies in
    assert stored == json.loads(json.dumps(record))
    assert (stored["run_id"], stored["method"], stored["label"]) == ("listops/pretrain[full]/seed0", "pretrain",
                                                                     "pretrain[full]")
    assert stored["accuracy"]["test"] is None and stored["accuracy"]["test_confusion"] is None
    view = pretraining_view(tiny_listops_data, run["method"]["holdout"], 0)
    n_train, n_held = (view.splits[s]["tokens"].shape[0] for s in ("train", "val"))
    assert stored["data"]["sizes"] == {"train": n_train, "val": n_held}
    training = stored["training"]
    p = stored["pretraining"]
    assert p["tokens_seen"] == training["steps_done"] * training["effective_batch"] * tiny_listops_data.seq_len
    assert training["steps_done"] == TRAIN["steps"] and p["tokens_seen"] > 0
    # the attention kernel of a training step and of an evaluation pass, noted as for any run
    assert training["attention_kernel"] and training["eval_attention_kernel"]
    assert (p["objective"], p["train_examples"], p["heldout_examples"]) == ("masked tokens", n_train, n_held)
    assert p["mask_rate"] == 0.1 == stored["config"]["method"]["mask_rate"]  # ListOps' rate (Amos et al.)
    curve = _curve(out)
    assert p["best_masked_acc"] == stored["accuracy"]["best_val"] == max(float(r["val_acc"]) for r in curve)
    # the majority baseline: the most frequent real token of the inputs it trained on
    tokens = view.splits["train"]["tokens"].reshape(-1)
    counts = torch.bincount(tokens[tokens != tiny_listops_data.pad_id], minlength=tiny_listops_data.vocab_size)
    majority = stored["baselines"]["majority_class"]
    assert majority != tiny_listops_data.pad_id and counts[majority] == counts.max()
    assert stored["baselines"]["majority_test_acc"] is None
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["run"] == run and best["step"] == stored["accuracy"]["best_step"]
    assert best["model"]["encoder.embed.weight"].shape[0] == tiny_listops_data.vocab_size + 1
    assert not any(k.startswith("encoder.head.") for k in best["model"])


# ---------------------------------------------------------------- pairs

@pytest.mark.slow
def test_pairs_pretrain_on_both_documents(tmp_path):
    data = paired_data()
    run = resolve_run(paired_config(model={"pooling": "mean"}), "retrieval", "full", 0, "pretrain")
    assert run["method"]["mask_rate"] == 0.15  # Retrieval's rate
    view = pretraining_view(data, run["method"]["holdout"], 0)
    with torch_state_restored():
        torch.manual_seed(0)
        trainer = PretrainTrainer(run, view, torch.device("cpu"))
        x = view.splits["train"]["tokens"][:4]
        tokens, chosen, inputs = trainer.draw(x, True)
        assert tokens.shape == (8, data.seq_len) and torch.equal(tokens, x.reshape(8, data.seq_len))
        assert chosen[0::2].any() and chosen[1::2].any()  # in the first documents and in the second
        assert not (chosen & (tokens == data.pad_id)).any()
        assert torch.isfinite(trainer.loss(x, torch.zeros(4, dtype=torch.long)))
    record = pretrain(run, data, tmp_path / "pairs")
    assert record["status"] == "ok", record["message"]
    training = record["training"]
    assert record["pretraining"]["tokens_seen"] == training["steps_done"] * training["effective_batch"] * 2 * 12


# ---------------------------------------------------------------- resuming

@pytest.mark.slow
def test_killed_pretraining_resumes_to_the_same_weights(tmp_path, tiny_listops_data, monkeypatch, capsys):
    """Killed at step 25, it resumes from its step-21 checkpoint and ends as the run that was not killed (span
    masking: its draws too come from the generators the checkpoint holds)."""
    config = spt_config(train={"steps": 30, "eval_every": 10, "checkpoint_every": 7, "lr": 0.005,
                               "warmup_steps": 5},
                        spt={"variants": ["full"], "masking": "span", "span_length": 3})
    run = resolve_run(config, "listops", "full", 0, "pretrain")
    assert run["method"]["masking"] == "span"

    def train(out: Path) -> dict:
        return pretrain_run(run, tiny_listops_data, out, bar=False)

    with torch_state_restored():
        train(tmp_path / "A")
    _interrupted(monkeypatch, train, tmp_path / "B")
    capsys.readouterr()
    with torch_state_restored():
        record = train(tmp_path / "B")
    assert "resuming from step 21 (checkpoint " in capsys.readouterr().out
    assert record["training"]["resumed_from_step"] == 21 and record["pretraining"]["tokens_seen"] == (
        30 * record["training"]["effective_batch"] * tiny_listops_data.seq_len)
    _assert_same_result(tmp_path / "A", tmp_path / "B")


# ---------------------------------------------------------------- the CUDA data placements, forced on the CPU

@pytest.mark.slow
@pytest.mark.parametrize("placement", ["device", "streamed"])
def test_pretraining_on_device_resident_or_streamed_data_is_the_host_run(reference, tiny_listops_data, tmp_path,
                                                                        monkeypatch, placement):
    """A GPU run keeps its splits on the device (narrowed ids, cast per batch) or streams them: the masking,
    the corruption and the held-out evaluation read them there and end with the host run's weights."""
    from attnbench.harness.run import batches

    run, record, out = reference
    monkeypatch.setattr(batches, "choose_placement", lambda device, nbytes, budget_bytes: placement)
    again = pretrain(run, tiny_listops_data, tmp_path / placement)
    # the placement was forced: something was copied "to the device" (the host run copies nothing)
    assert again["efficiency"]["device_data_bytes"] > 0 == record["efficiency"]["device_data_bytes"]
    assert again["pretraining"] == record["pretraining"]
    _assert_same_result(out, tmp_path / placement)


@pytest.mark.slow
def test_a_compiled_pretraining_keeps_its_state_dict_keys_and_fine_tunes(tmp_path, tiny_listops_data, monkeypatch):
    """``train.compile`` (a GPU setting): the model's graphs captured by Dynamo (its ``eager`` backend here, so that
    no C++ is generated: the trainer's compiled branches are what is tested), the pretraining's kernels noted
    outside the graph, and its checkpoint with the plain model's keys, which fine-tuning reads."""
    from attnbench.harness.run.self_pretrained import spt_run

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend="eager"))
    config = spt_config(spt={"variants": ["full"], "train": {"compile": True, "steps": 2, "eval_every": 2,
                                                             "timing_skip_steps": 1}})  # the fine-tuning: plain
    run = resolve_run(config, "listops", "full", 0, "pretrain")
    record = pretrain(run, tiny_listops_data, tmp_path / "pretrain")
    assert record["status"] == "ok", record["message"]
    assert record["training"]["compiled"] is True and record["training"]["eval_attention_kernel"]
    saved = torch.load(tmp_path / "pretrain" / "best.pt", weights_only=True)["model"]
    plain = MaskedTokenModel.for_run(run, pretraining_view(tiny_listops_data, 0.05, 0)).state_dict()
    assert sorted(saved) == sorted(plain)  # no "_orig_mod." prefixes
    with torch_state_restored():
        tuned = spt_run(resolve_run(config, "listops", "full", 0, "spt"), tiny_listops_data, tmp_path / "spt",
                        pretrain_dir=tmp_path / "pretrain", bar=False)
    assert tuned["status"] == "ok", tuned["message"]
