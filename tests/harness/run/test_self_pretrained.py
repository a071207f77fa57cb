"""Fine-tuning a self-pretrained model (``harness.run.self_pretrained``): it starts from the pretrained weights,
every encoder tensor, with a fresh head (issue 31's test), for [CLS] and mean pooling and for pairs; the
pretraining run it needs is found, or refused naming what is wrong; a variant from outside the repository
(``from:``) is pretrained and fine-tuned. Runs are resolved from a tiny config (``config.runs.resolve_run``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from test_pretrain import paired_config, paired_data, spt_config

from attnbench.harness.config import resolve_run
from attnbench.harness.conformance.template import write_template
from attnbench.harness.results.records import RunKey, read_record
from attnbench.harness.run.model import model_for_run
from attnbench.harness.run.pretrain import pretrain_run
from attnbench.harness.run.self_pretrained import PretrainError, SptTrainer, init_from_pretrained, spt_run
from attnbench.tasks.base import PreparedData
from conftest import torch_state_restored

#: the fine-tuning runs train a few steps: what is tested is where they start
FINETUNE = {"steps": 4, "eval_every": 2}


def config(**override) -> dict:
    return spt_config(**{"spt": {"variants": ["full"], "finetune": FINETUNE}, **override})


def pretrained(run: dict, data: PreparedData, out: Path) -> dict[str, torch.Tensor]:
    """Pretrain ``run`` (method pretrain) into ``out``; its best.pt's weights."""
    with torch_state_restored():
        record = pretrain_run(run, data, out, bar=False)
    assert record["status"] == "ok", record["message"]
    return torch.load(out / "best.pt", weights_only=True)["model"]


def fresh(run: dict, data: PreparedData) -> dict[str, torch.Tensor]:
    """The model of ``run`` as a run from scratch initialises it (seeded with the run's seed)."""
    with torch_state_restored():
        torch.manual_seed(run["seed"])
        return model_for_run(run, data).state_dict()


def assert_started_from_pretrained(state: dict, init: dict, weights: dict, scratch: dict) -> None:
    """``state`` (a fine-tuning model's first weights) holds every encoder tensor of the pretrained ``weights``
    exactly (the embeddings without the [MASK] row) and the head of a run from scratch (``scratch``)."""
    encoder = {k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")}
    head = [k for k in state if k.startswith("head.")]
    assert head and init["kept"] == head and init["copied"] == [k for k in state if k not in head]
    assert set(encoder) == set(init["copied"])  # nothing of the pretrained encoder left behind
    assert not any(k.startswith("head.") for k in encoder)  # pretraining has no classifier head
    for key, value in state.items():
        if key in head:
            assert torch.equal(value, scratch[key]), key  # fresh, as from scratch
            continue
        want = encoder[key]
        if key == "embed.weight":
            assert want.shape[0] == value.shape[0] + 1  # [MASK], the last row, is not copied
            want = want[:-1]
        assert torch.equal(value, want), key
        assert not torch.equal(value, scratch[key]), key  # not a fresh initialisation


@pytest.fixture
def first_weights(monkeypatch):
    """What each SptTrainer built in this test started from: (its model's state, ``init``)."""
    seen = []
    build_model = SptTrainer.build_model

    def recording(self):
        model = build_model(self)
        seen.append(({k: v.detach().clone() for k, v in model.state_dict().items()}, self.init))
        return model

    monkeypatch.setattr(SptTrainer, "build_model", recording)
    return seen


@pytest.fixture(scope="module")
def listops_pretrained(tmp_path_factory, tiny_listops_data):
    """The pretraining of listops/full/seed0 ([CLS] pooling) in its folder under a temporary root."""
    root = tmp_path_factory.mktemp("spt")
    run = resolve_run(config(), "listops", "full", 0, "pretrain")
    weights = pretrained(run, tiny_listops_data, root / RunKey.of(run).dir)
    return root, run, weights


# ---------------------------------------------------------------- starting from the pretrained weights

@pytest.mark.slow
def test_fine_tuning_starts_from_the_pretrained_encoder_with_a_fresh_head(listops_pretrained, tiny_listops_data,
                                                                         first_weights, monkeypatch):
    root, pre_run, weights = listops_pretrained
    monkeypatch.chdir(root)  # the pretraining run is found in its folder, results/pretrain/listops/full/seed0
    run = resolve_run(config(), "listops", "full", 0, "spt")
    assert run["model"] == pre_run["model"] and run["model"]["pooling"] == "cls"
    out = root / RunKey.of(run).dir
    with torch_state_restored():
        record = spt_run(run, tiny_listops_data, out, bar=False)
    assert record["status"] == "ok", record["message"]
    [(state, init)] = first_weights
    assert "cls" in init["copied"] and "pos" in init["copied"]
    assert_started_from_pretrained(state, init, weights, fresh(run, tiny_listops_data))

    stored = read_record(out / "record.json")
    assert (stored["run_id"], stored["method"], stored["label"]) == ("listops/spt[full]/seed0", "spt", "spt[full]")
    assert stored["accuracy"]["test"] is not None
    pre = read_record(root / RunKey.of(pre_run).record)
    entry = stored["pretrain"]
    assert entry["run_id"] == "listops/pretrain[full]/seed0" == pre["run_id"]
    assert (entry["status"], entry["config_hash"], entry["steps_done"]) == ("ok", pre["config_hash"],
                                                                            pre["training"]["steps_done"])
    assert (out / entry["checkpoint"]).resolve() == (root / RunKey.of(pre_run).dir / "best.pt").resolve()
    assert read_record(out / entry["record"])["run_id"] == pre["run_id"]
    assert entry["tokens_seen"] == pre["pretraining"]["tokens_seen"] and entry["tokens_seen"] > 0
    assert entry["best_masked_acc"] == pre["accuracy"]["best_val"]
    assert entry["wall_s"] == pre["training"]["wall_s"] and entry["train_s"] == pre["training"]["train_s"]
    assert entry["peak_memory_bytes"] == pre["efficiency"]["peak_memory_bytes"]
    assert stored["config"]["method"]["pretrain"]["train"] == pre["config"]["train"]
    assert stored["config"]["train"]["steps"] == FINETUNE["steps"] != pre["config"]["train"]["steps"]


def test_init_copies_by_name_and_keeps_what_does_not_fit(tiny_listops_data):
    """A checkpoint tensor of another shape is not copied (the model's own kept); nor is a head tensor, even
    one of the model's shape; copies share no storage with the checkpoint."""
    run = resolve_run(config(), "listops", "full", 0)
    scratch = fresh(run, tiny_listops_data)
    torch.manual_seed(1)
    model = model_for_run(run, tiny_listops_data)
    source = {f"encoder.{k}": torch.randn_like(v) for k, v in scratch.items()}
    source["encoder.embed.weight"] = torch.randn(tiny_listops_data.vocab_size + 1, scratch["embed.weight"].shape[1])
    source["encoder.blocks.0.mlp.0.weight"] = torch.randn(3, 3)
    source["predict.0.weight"] = torch.randn(4, 4)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    init = init_from_pretrained(model, source)
    state = model.state_dict()
    assert "embed.weight" in init["copied"] and "encoder.head.0.weight" in source  # of the model's shape
    assert set(init["kept"]) == {k for k in state if k.startswith("head.")} | {"blocks.0.mlp.0.weight"}
    assert set(init["copied"]) == set(state) - set(init["kept"])
    for key in init["kept"]:
        assert torch.equal(state[key], own[key]), key
    for key in init["copied"]:
        want = source[f"encoder.{key}"][: state[key].shape[0]]
        assert torch.equal(state[key], want), key
    model.embed.weight.data.add_(1.0)
    assert not torch.equal(model.embed.weight, source["encoder.embed.weight"][:-1])


@pytest.mark.slow
def test_pairs_with_mean_pooling_fine_tune_all_but_the_head(tmp_path):
    """Retrieval-like pairs, mean pooling (no [CLS]): the pretrained encoder read both documents, and the
    fine-tuning model (two towers, the dual head) starts from all of it."""
    data = paired_data()
    cfg = paired_config(model={"pooling": "mean"}, spt={"variants": ["full"], "finetune": FINETUNE})
    pre_run = resolve_run(cfg, "retrieval", "full", 0, "pretrain")
    weights = pretrained(pre_run, data, tmp_path / "pre")
    run = resolve_run(cfg, "retrieval", "full", 0, "spt")
    with torch_state_restored():
        torch.manual_seed(run["seed"])  # as train_run seeds before it builds the trainer
        trainer = SptTrainer(run, data, torch.device("cpu"), checkpoint=tmp_path / "pre" / "best.pt")
    assert trainer.model.paired and trainer.model.cls is None and "cls" not in trainer.init["copied"]
    assert len([k for k in trainer.init["kept"] if k.endswith(".weight")]) == 3  # the dual head's three layers
    assert_started_from_pretrained(trainer.model.state_dict(), trainer.init, weights, fresh(run, data))
    with torch_state_restored():
        record = spt_run(run, data, tmp_path / "ft", pretrain_dir=tmp_path / "pre", bar=False)
    assert record["status"] == "ok", record["message"]
    pre = read_record(tmp_path / "pre" / "record.json")["training"]
    assert record["pretrain"]["tokens_seen"] == pre["steps_done"] * pre["effective_batch"] * 2 * data.seq_len > 0


# ---------------------------------------------------------------- the pretraining run it needs

def test_missing_pretraining_is_an_error_that_says_how_to_get_it(tmp_path, tiny_listops_data):
    run = resolve_run(config(), "listops", "full", 0, "spt")
    with pytest.raises(PretrainError) as info:
        spt_run(run, tiny_listops_data, tmp_path / "out", pretrain_dir=tmp_path / "nowhere", bar=False)
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / "record.json") in msg
    assert ("attnbench train --method pretrain --task listops --variant full --seed 0 --out "
            f"{tmp_path / 'nowhere'}") in msg
    assert not (tmp_path / "out" / "record.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("variant, seed", [("window", 0), ("full", 1)])
def test_the_record_of_another_run_is_refused(listops_pretrained, tiny_listops_data, tmp_path, variant, seed):
    root, pre_run, _ = listops_pretrained
    cfg = config(variants={"full": {}, "window": {"window": 4}},
                 spt={"variants": ["full", "window"], "finetune": FINETUNE})
    run = resolve_run(cfg, "listops", variant, seed, "spt")
    with pytest.raises(PretrainError) as info:
        spt_run(run, tiny_listops_data, tmp_path / "out", pretrain_dir=root / RunKey.of(pre_run).dir, bar=False)
    msg = str(info.value)
    assert "is the record of listops/pretrain[full]/seed0" in msg
    assert f"--variant {variant} --seed {seed}" in msg
    assert not (tmp_path / "out" / "record.json").exists()


@pytest.mark.slow
def test_a_labels_run_is_no_pretraining(tmp_path, tiny_listops_data):
    from attnbench.harness.run.train import train_run

    cfg = config(train={"steps": 2, "eval_every": 2})
    with torch_state_restored():
        train_run(resolve_run(cfg, "listops", "full", 0), tiny_listops_data, tmp_path / "labels", bar=False)
    with pytest.raises(PretrainError, match=r"is the record of listops/full/seed0, not of the pretraining"):
        spt_run(resolve_run(cfg, "listops", "full", 0, "spt"), tiny_listops_data, tmp_path / "out",
                pretrain_dir=tmp_path / "labels", bar=False)


@pytest.mark.slow
def test_other_model_settings_give_a_failed_record_naming_the_checkpoint(listops_pretrained, tiny_listops_data,
                                                                       tmp_path):
    root, pre_run, _ = listops_pretrained
    run = resolve_run(config(model={"dim": 32}), "listops", "full", 0, "spt")
    pre_dir = root / RunKey.of(pre_run).dir
    with torch_state_restored():
        record = spt_run(run, tiny_listops_data, tmp_path / "out", pretrain_dir=pre_dir, bar=False)
    assert record["status"] == "failed"
    assert f"pretraining checkpoint {pre_dir / 'best.pt'}" in record["message"]
    assert "other model settings" in record["message"] and "pretrain again" in record["message"]
    assert record["pretrain"]["run_id"] == "listops/pretrain[full]/seed0"
    assert read_record(tmp_path / "out" / "record.json")["status"] == "failed"


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["no checkpoint", "unreadable"])
def test_unusable_checkpoint_gives_a_failed_record(listops_pretrained, tiny_listops_data, tmp_path, damage):
    root, pre_run, _ = listops_pretrained
    pre = json.loads((root / RunKey.of(pre_run).record).read_text())
    folder = tmp_path / "pretrain"
    folder.mkdir()
    if damage == "no checkpoint":
        pre.update(status="oom", message="out of memory")
        pre["training"]["checkpoint"] = None
    else:
        (folder / "best.pt").write_bytes(b"not a checkpoint")
    (folder / "record.json").write_text(json.dumps(pre))
    run = resolve_run(config(), "listops", "full", 0, "spt")
    with torch_state_restored():
        record = spt_run(run, tiny_listops_data, tmp_path / "out", pretrain_dir=folder, bar=False)
    assert record["status"] == "failed"
    if damage == "no checkpoint":
        assert "has no checkpoint" in record["message"] and "(status oom)" in record["message"]
        assert record["pretrain"]["checkpoint"] is None
    else:
        assert f"pretraining checkpoint {folder / 'best.pt'} cannot be read" in record["message"]


# ---------------------------------------------------------------- a variant from outside the repository

@pytest.mark.slow
def test_a_from_variant_is_pretrained_and_fine_tuned(tmp_path, monkeypatch, tiny_listops_data, first_weights):
    code = tmp_path / "code"
    _, cls = write_template("sptownattn", code)
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.delitem(sys.modules, "sptownattn", raising=False)
    cfg = config(variants={"full": {}, "mine": {"from": f"sptownattn:{cls}"}},
                 spt={"variants": ["mine"], "finetune": FINETUNE})
    pre_run = resolve_run(cfg, "listops", "mine", 0, "pretrain")
    assert pre_run["variant"]["source"] == f"sptownattn:{cls}"
    weights = pretrained(pre_run, tiny_listops_data, tmp_path / "pre")
    pre = read_record(tmp_path / "pre" / "record.json")
    assert pre["run_id"] == "listops/pretrain[mine]/seed0"
    assert pre["variant_origin"]["source"] == f"sptownattn:{cls}"
    run = resolve_run(cfg, "listops", "mine", 0, "spt")
    with torch_state_restored():
        record = spt_run(run, tiny_listops_data, tmp_path / "ft", pretrain_dir=tmp_path / "pre", bar=False)
    sys.modules.pop("sptownattn", None)
    assert record["status"] == "ok", record["message"]
    assert (record["run_id"], record["pretrain"]["run_id"]) == ("listops/spt[mine]/seed0",
                                                               "listops/pretrain[mine]/seed0")
    assert record["variant_origin"]["source"] == f"sptownattn:{cls}"
    [(state, init)] = first_weights
    assert_started_from_pretrained(state, init, weights, fresh(run, tiny_listops_data))
