"""Retrieval: the LRA AAN TSV reader, the paired tokens, and the two-tower model."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from attnbench.harness.run.model import EncoderClassifier, ModelConfig
from attnbench.harness.run.train import train_run
from attnbench.tasks.base import SPLITS, DataError, build_task, load_prepared, save_prepared
from attnbench.tasks.lib.byte_text import decode_bytes
from conftest import tiny_run


def write_aan(folder: Path, rows: dict[str, list[tuple]], prefix: str = "new_aan_pairs") -> Path:
    """Rows (label, id1, id2, text1, text2) as the release writes them: no header, tabs, float labels."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, suffix in (("train", "train"), ("val", "eval"), ("test", "test")):
        lines = [f"{float(r[0])}\t{r[1]}\t{r[2]}\t{r[3]}\t{r[4]}\n" for r in rows[split]]
        (folder / f"{prefix}.{suffix}.tsv").write_text("".join(lines), encoding="utf-8")
    return folder


def topic_rows(n: int, rng: random.Random) -> list[tuple]:
    """Pairs of documents drawn from two letter alphabets; label 1 when both share one alphabet."""
    alphabets = ("abcdefghijklm", "nopqrstuvwxyz")
    rows = []
    for i in range(n):
        a = rng.randrange(2)
        b = a if rng.random() < 0.5 else 1 - a
        docs = ["".join(rng.choice(alphabets[t]) for _ in range(rng.randint(20, 40))) for t in (a, b)]
        rows.append((int(a == b), f"P{i}a", f"P{i}b", *docs))
    return rows


def test_reads_release_format(tmp_path):
    rows = {"train": [(1, "A00-1001", "B01-2002", 'He said "hi"\u00e9', "second doc"),
                      (0, "A", "B", "x" * 50, "y")],
            "val": [(0, "C", "D", "val one", "val two")],
            "test": [(1, "E", "F", "test one", "test two")]}
    folder = write_aan(tmp_path / "tsv_data", rows)
    data = build_task("retrieval", {"path": str(folder), "seq_len": 16}).prepare(tmp_path / "work")
    assert data.paired and data.num_classes == 2 and data.seq_len == 16 and data.vocab_size == 257
    train = data.splits["train"]
    assert train["tokens"].shape == (2, 2, 16)
    assert train["labels"].tolist() == [1, 0]
    # quotes are ordinary characters; UTF-8 is encoded as bytes (the e-acute takes two)
    assert decode_bytes(train["tokens"][0, 0]) == 'He said "hi"\u00e9'
    assert decode_bytes(train["tokens"][0, 1]) == "second doc"
    assert decode_bytes(train["tokens"][1, 0]) == "x" * 16  # cut to seq_len bytes
    assert int(train["tokens"][1, 1, 1]) == 0  # "y" then padding
    assert {s: int(data.splits[s]["labels"].shape[0]) for s in SPLITS} == {"train": 2, "val": 1, "test": 1}
    assert decode_bytes(data.splits["val"]["tokens"][0, 1]) == "val two"


def test_max_chars_and_max_examples(tmp_path):
    rows = {s: [(i % 2, "a", "b", "abcdef" * 3, "z") for i in range(5)] for s in SPLITS}
    folder = write_aan(tmp_path, rows)
    data = build_task("retrieval", {"path": str(folder), "seq_len": 32, "max_chars": 4,
                                    "max_examples": 3}).prepare(tmp_path)
    assert data.splits["test"]["labels"].tolist() == [0, 1, 0]
    assert decode_bytes(data.splits["train"]["tokens"][2, 0]) == "abcd"


def test_prepared_file_round_trip(tmp_path):
    rows = {s: topic_rows(6, random.Random(1)) for s in SPLITS}
    params = {"path": str(write_aan(tmp_path / "aan", rows)), "seq_len": 40}
    data = build_task("retrieval", params).prepare(tmp_path)
    save_prepared(tmp_path / "d.pt", "retrieval", params, data)
    back = load_prepared(tmp_path / "d.pt", "retrieval", params)
    assert back.paired and torch.equal(back.splits["train"]["tokens"], data.splits["train"]["tokens"])


@pytest.mark.parametrize("problem, message", [
    ("missing", "new_aan_pairs.train.tsv is missing; download and unpack the LRA release"),
    ("columns", "expected 5 tab-separated columns"),
    ("label", "is not a number"),
    ("nopath", "retrieval needs `path`"),
])
def test_errors_name_the_problem(tmp_path, problem, message):
    folder = write_aan(tmp_path, {s: [(1, "a", "b", "t1", "t2")] for s in SPLITS})
    params = {"path": str(folder)}
    if problem == "missing":
        (folder / "new_aan_pairs.train.tsv").unlink()
    elif problem == "columns":
        (folder / "new_aan_pairs.eval.tsv").write_text("1.0\ta\tb\tonly four\n")
    elif problem == "label":
        (folder / "new_aan_pairs.test.tsv").write_text("yes\ta\tb\tt1\tt2\n")
    else:
        params = {}
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace("`", ".")):
        build_task("retrieval", params).prepare(tmp_path)


@pytest.mark.parametrize("interaction", ["concat", "nli"])
def test_two_towers_share_one_encoder_without_cross_attention(interaction):
    torch.manual_seed(0)
    cfg = ModelConfig(layers=1, dim=16, heads=2, mlp_dim=32, dropout=0.0, interaction=interaction, pooling="mean")
    model = EncoderClassifier(cfg, "full", {}, vocab_size=257, seq_len=12, num_classes=2, paired=True).eval()
    x = torch.randint(1, 257, (3, 2, 12))
    x[:, 1, 9:] = 0  # padding in the second documents
    out = model(x)
    assert out.shape == (3, 2)
    # the logits are the head applied to the two documents encoded separately
    u, v = model.encode(x[:, 0]), model.encode(x[:, 1])
    feats = [u, v] if interaction == "concat" else [u, v, u * v, u - v]
    assert torch.allclose(out, model.head(torch.cat(feats, -1)), atol=1e-5)
    # changing the second document leaves the first one's encoding alone (no cross-attention)
    y = x.clone()
    y[:, 1] = torch.randint(1, 257, (3, 12))
    assert torch.allclose(model.encode(y[:, 0]), u) and not torch.allclose(model(y), out)
    with pytest.raises(ValueError, match="paired task's tokens are"):
        model(x[:, 0])


@pytest.mark.slow
def test_two_tower_model_learns_a_matching_task(tmp_path):
    """Through the real reader and the training loop: label = both documents use one alphabet."""
    rng = random.Random(0)
    rows = {"train": topic_rows(600, rng), "val": topic_rows(100, rng), "test": topic_rows(200, rng)}
    params = {"path": str(write_aan(tmp_path / "aan", rows)), "seq_len": 40}
    data = build_task("retrieval", params).prepare(tmp_path)
    run = tiny_run(model={"pooling": "mean", "interaction": "nli", "dim": 32, "mlp_dim": 64, "dropout": 0.0},
                   train={"steps": 150, "eval_every": 50, "batch_size": 32, "lr": 3e-3, "warmup_steps": 10})
    record = train_run(run, data, tmp_path / "run", bar=False)
    majority = record["baselines"]["majority_test_acc"]
    assert record["status"] == "ok", record["message"]
    assert record["accuracy"]["test"] >= max(0.9, majority + 0.3), (record["accuracy"], majority)
    # a training step processes both documents of every pair
    eff = record["efficiency"]
    assert eff["train_tokens_per_s"] == pytest.approx(eff["train_steps_per_s"] * 32 * 2 * 40)
