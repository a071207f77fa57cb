"""Text tasks: ``text`` (LRA byte-level IMDb) and ``textcls`` (any labelled texts, bytes or subword),
on small local files in each format, the offline errors, and the real shared samples trained briefly."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tokenizers
import torch

from attnbench.tasks.base import SPLITS, TASKS, DataError, build_task
from attnbench.tasks.lib import subword
from attnbench.tasks.lib.byte_text import BYTE_VOCAB, decode_bytes
from conftest import REPO

SHARED = REPO.parent / "shared" / "data"
AG_NEWS = SHARED / "ag_news" / "test.csv"
IMDB_SAMPLE = SHARED / "imdb_sample" / "texts.csv"


@pytest.fixture(autouse=True)
def _offline(offline_hf):
    """Every test here runs offline, with empty Hugging Face caches (conftest's ``offline_hf``)."""
    return offline_hf


# ---------------------------------------------------------------- small local files

WORDS = ["good", "bad", "fine", "café ☕", "naïve", "plot", "actor", "zebra", "scene", "end"]


def _rows(n: int, seed: int = 0, labels=("neg", "pos")) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"text": f"{i}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(1, 6)))),
             "label": labels[i % len(labels)]} for i in range(n)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        raise ValueError(path)
    return path


def _texts(data, split: str) -> list[str]:
    return [decode_bytes(row) for row in data.splits[split]["tokens"]]


def _pairs(data, split: str) -> list[tuple[str, int]]:
    return list(zip(_texts(data, split), data.splits[split]["labels"].tolist(), strict=True))


def _check_shapes(data, seq_len: int) -> None:
    assert data.seq_len == seq_len and data.pad_id == 0
    for split in SPLITS:
        tokens, labels = data.splits[split]["tokens"], data.splits[split]["labels"]
        assert tokens.dtype == torch.int64 and labels.dtype == torch.int64
        assert tokens.shape == (labels.shape[0], seq_len) and labels.shape[0] > 0
        assert int(tokens.min()) >= 0 and int(tokens.max()) < data.vocab_size
        assert set(labels.tolist()) <= set(range(data.num_classes))


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
@pytest.mark.parametrize("task", ["text", "textcls"])
def test_one_file_carves_val_and_test(tmp_path, suffix, task):
    rows = _rows(60)
    path = _write(tmp_path / f"reviews{suffix}", rows)
    params = {"path": str(path), "seq_len": 64, **({"tokenizer": "bytes"} if task == "textcls" else {})}
    data = build_task(task, params).prepare(tmp_path / "work")

    _check_shapes(data, 64)
    assert data.vocab_size == BYTE_VOCAB and data.num_classes == 2
    assert data.label_names == ["neg", "pos"]  # string labels in sorted order
    assert {s: len(data.splits[s]["labels"]) for s in SPLITS} == {"train": 48, "val": 6, "test": 6}
    # the splits partition the file; every text round-trips through the byte tokens (UTF-8 included)
    ours = sorted(p for s in SPLITS for p in _pairs(data, s))
    assert ours == sorted((r["text"], ["neg", "pos"].index(r["label"])) for r in rows)
    assert "test carved from train" in data.source and "val carved from train" in data.source
    assert str(path) in data.source


def test_bytes_truncated_at_seq_len_and_padded(tmp_path):
    long_text = "".join(chr(ord("a") + i % 26) for i in range(300))
    rows = [{"text": long_text if i == 0 else "é" * 40 if i == 1 else f"short {i}", "label": i % 2} for i in range(20)]
    path = _write(tmp_path / "t.csv", rows)
    data = build_task("text", {"path": str(path), "seq_len": 50, "val_fraction": 0.2, "test_fraction": 0.2}
                      ).prepare(tmp_path / "work")
    tokens = torch.cat([data.splits[s]["tokens"] for s in SPLITS])
    by_text = {}
    for row in tokens:
        by_text[decode_bytes(row)[:5]] = row
    cut = by_text["abcde"]
    assert cut.tolist() == [b + 1 for b in long_text.encode()[:50]]  # the head kept, no padding
    two_byte = [r for r in tokens if int(r[0]) == "é".encode()[0] + 1][0]
    assert two_byte.tolist() == [b + 1 for b in ("é" * 40).encode()[:50]]  # 80 bytes cut to 50
    short = by_text["short"]
    n = len(decode_bytes(short).encode())
    assert (short[:n] > 0).all() and (short[n:] == 0).all()


def test_val_carved_from_train_only_and_test_untouched(tmp_path):
    folder = tmp_path / "imdb"
    train, test = _rows(50, seed=1), _rows(12, seed=2)
    _write(folder / "train.parquet", train)
    _write(folder / "test.parquet", test)
    params = {"path": str(folder), "seq_len": 64, "val_fraction": 0.2}
    data = build_task("text", params).prepare(tmp_path / "work")

    label = {"neg": 0, "pos": 1}
    assert _pairs(data, "test") == [(r["text"], label[r["label"]]) for r in test]  # all of it, in file order
    assert len(data.splits["val"]["labels"]) == 10 and len(data.splits["train"]["labels"]) == 40
    assert sorted(_pairs(data, "train") + _pairs(data, "val")) == sorted((r["text"], label[r["label"]]) for r in train)
    assert "test carved" not in data.source and "val carved from train (0.2, seed 0)" in data.source

    again = build_task("text", params).prepare(tmp_path / "work2")
    other = build_task("text", {**params, "data_seed": 1}).prepare(tmp_path / "work3")
    for s in SPLITS:  # deterministic, and the seed moves only the carved validation rows
        assert torch.equal(again.splits[s]["tokens"], data.splits[s]["tokens"])
        assert torch.equal(again.splits[s]["labels"], data.splits[s]["labels"])
    assert torch.equal(other.splits["test"]["tokens"], data.splits["test"]["tokens"])
    assert not torch.equal(other.splits["val"]["tokens"], data.splits["val"]["tokens"])


def test_source_validation_split_is_used(tmp_path):
    folder = tmp_path / "sst"
    _write(folder / "train.jsonl", [{"sentence": r["text"], "label": i % 2} for i, r in enumerate(_rows(30))])
    _write(folder / "validation.jsonl", [{"sentence": f"val {i}", "label": i % 2} for i in range(7)])
    # SST-2 style: the test split's labels are hidden (-1), so test is carved from train instead
    _write(folder / "test.jsonl", [{"sentence": f"hidden {i}", "label": -1} for i in range(5)])
    data = build_task("textcls", {"path": str(folder), "text_columns": ["sentence"], "tokenizer": "bytes",
                                  "seq_len": 32, "test_fraction": 0.2}).prepare(tmp_path / "work")
    assert _texts(data, "val") == [f"val {i}" for i in range(7)]
    assert len(data.splits["test"]["labels"]) == 6 and len(data.splits["train"]["labels"]) == 24
    assert not any(t.startswith("hidden") for s in SPLITS for t in _texts(data, s))
    assert "no labels" in data.source and "test carved from train" in data.source
    assert data.label_names == ["0", "1"]


def test_several_text_columns_integer_labels_offset_and_names(tmp_path):
    rows = [{"label": 1 + i % 4, "title": f"Title {i}", "description": f"body of {i}"} for i in range(40)]
    path = _write(tmp_path / "ag.csv", rows)
    data = build_task("textcls", {"path": str(path), "text_columns": ["title", "description"], "label_offset": 1,
                                  "label_names": ["World", "Sports", "Business", "Sci/Tech"],
                                  "tokenizer": "bytes", "seq_len": 40}).prepare(tmp_path / "work")
    assert data.num_classes == 4 and data.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    got = sorted(p for s in SPLITS for p in _pairs(data, s))
    assert got == sorted((f"Title {i} body of {i}", i % 4) for i in range(40))


def test_split_column_is_valid(tmp_path):
    """fastai's IMDB_SAMPLE layout: is_valid True = validation; test is carved from the train rows only."""
    rows = [{**r, "is_valid": i >= 40} for i, r in enumerate(_rows(50))]
    path = _write(tmp_path / "texts.csv", rows)
    data = build_task("text", {"path": str(path), "split_column": "is_valid", "seq_len": 64,
                               "test_fraction": 0.25}).prepare(tmp_path / "work")
    valid = {r["text"] for r in rows if r["is_valid"]}
    assert set(_texts(data, "val")) == valid and len(_texts(data, "val")) == 10
    assert len(data.splits["test"]["labels"]) == 10 and len(data.splits["train"]["labels"]) == 30
    assert not valid & set(_texts(data, "test") + _texts(data, "train"))
    assert "splits from column 'is_valid'" in data.source and "test carved from train" in data.source
    assert "val carved" not in data.source


def test_split_column_with_names(tmp_path):
    rows = [{**r, "part": ["train", "train", "train", "dev", "test"][i % 5]} for i, r in enumerate(_rows(40))]
    data = build_task("textcls", {"path": str(_write(tmp_path / "d.parquet", rows)), "split_column": "part",
                                  "tokenizer": "bytes", "seq_len": 64}).prepare(tmp_path / "work")
    for split, name in (("train", "train"), ("val", "dev"), ("test", "test")):
        assert sorted(_texts(data, split)) == sorted(r["text"] for r in rows if r["part"] == name)


def test_max_train_is_a_seeded_subset(tmp_path):
    path = _write(tmp_path / "d.jsonl", _rows(100))
    full = build_task("text", {"path": str(path), "seq_len": 32}).prepare(tmp_path / "w1")
    capped = build_task("text", {"path": str(path), "seq_len": 32, "max_train": 25}).prepare(tmp_path / "w2")
    assert len(capped.splits["train"]["labels"]) == 25
    assert set(_texts(capped, "train")) < set(_texts(full, "train"))
    for s in ("val", "test"):  # the cap leaves the held-out splits alone
        assert torch.equal(capped.splits[s]["tokens"], full.splits[s]["tokens"])
    assert len(set(capped.splits["train"]["labels"].tolist())) == 2  # a random subset, not the file's head


def test_data_files_per_split(tmp_path):
    train = _write(tmp_path / "a" / "mytrain.csv", _rows(20, seed=3))
    test = _write(tmp_path / "b" / "held.csv", _rows(6, seed=4))
    data = build_task("text", {"data_files": {"train": str(train), "test": str(test)}, "seq_len": 64,
                               "val_fraction": 0.25}).prepare(tmp_path / "work")
    assert {s: len(data.splits[s]["labels"]) for s in SPLITS} == {"train": 15, "val": 5, "test": 6}



def test_hub_layout_with_class_label_names(tmp_path):
    """The layout of a hub dataset's files (IMDb: plain_text/{train,test}-00000-of-00001.parquet, a
    ClassLabel feature): its class names become label_names and its integer labels are kept."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    folder = tmp_path / "imdb" / "plain_text"
    folder.mkdir(parents=True)
    for split, n in (("train", 20), ("test", 6)):
        datasets.Dataset.from_dict({"text": [f"{split} {i}" for i in range(n)], "label": [i % 2 for i in range(n)]},
                                   features=features).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    data = build_task("text", {"path": str(tmp_path / "imdb"), "seq_len": 16}).prepare(tmp_path / "work")
    assert data.label_names == ["neg", "pos"] and data.num_classes == 2
    assert _pairs(data, "test") == [(f"test {i}", i % 2) for i in range(6)]
    assert sorted(_pairs(data, "train") + _pairs(data, "val")) == sorted((f"train {i}", i % 2) for i in range(20))

# ---------------------------------------------------------------- subword tokenizer

def test_subword_trained_on_train_only_and_cached(tmp_path):
    folder = tmp_path / "news"
    train = [{"text": f"the market rallied as stocks rose {i} times today", "label": i % 2} for i in range(60)]
    test = [{"text": "zyxwvutsrq " * 5, "label": i % 2} for i in range(8)]  # a word only the test split has
    _write(folder / "train.csv", train)
    _write(folder / "test.csv", test)
    params = {"path": str(folder), "tokenizer": "subword", "vocab_size": 300, "seq_len": 16}
    work = tmp_path / "work"

    before = subword.TRAINED["count"]
    data = build_task("textcls", params).prepare(work)
    assert subword.TRAINED["count"] == before + 1
    _check_shapes(data, 16)
    assert data.vocab_size <= 300 and "bpe subword tokenizer" in data.source
    (cache,) = (work / "tokenizers").glob("subword-bpe-*.json")
    mtime = cache.stat().st_mtime_ns

    again = build_task("textcls", params).prepare(work)  # the cache file is reused, nothing trained
    assert subword.TRAINED["count"] == before + 1 and cache.stat().st_mtime_ns == mtime
    assert list((work / "tokenizers").iterdir()) == [cache]
    for s in SPLITS:
        assert torch.equal(again.splits[s]["tokens"], data.splits[s]["tokens"])

    tok = subword.SubwordTokenizer(tokenizers.Tokenizer.from_file(str(cache)), subword.SubwordSettings())
    assert len(tok.ids(["market"])[0]) <= 2 < len(tok.ids(["zyxwvutsrq"])[0])  # learnt from train, not from test
    assert tok.decode(data.splits["train"]["tokens"][0].tolist()).startswith("the market rallied")
    assert int((data.splits["train"]["tokens"] == 0).sum(1).min()) > 0  # short texts padded with id 0

    # other training texts (or settings) train, and cache, another tokenizer
    build_task("textcls", {**params, "max_train": 30}).prepare(work)
    build_task("textcls", {**params, "vocab_size": 280}).prepare(work)
    assert subword.TRAINED["count"] == before + 3 and len(list((work / "tokenizers").iterdir())) == 3


def test_subword_wordpiece_and_truncation(tmp_path):
    rows = [{"text": f"Alpha beta gamma delta epsilon {i % 5} zeta eta theta", "label": i % 3} for i in range(40)]
    path = _write(tmp_path / "d.csv", rows)
    data = build_task("textcls", {"path": str(path), "tokenizer": "subword", "subword_model": "wordpiece",
                                  "lowercase": True, "vocab_size": 200, "seq_len": 4}).prepare(tmp_path / "w")
    _check_shapes(data, 4)
    assert (data.splits["train"]["tokens"] > 0).all()  # every text is longer than 4 pieces: cut, not padded
    (cache,) = (tmp_path / "w" / "tokenizers").glob("subword-wordpiece-*.json")
    tok = subword.SubwordTokenizer(tokenizers.Tokenizer.from_file(str(cache)),
                                   subword.SubwordSettings(model="wordpiece"))
    assert tok.decode(tok.ids(["Alpha beta gamma"])[0]) == "alpha beta gamma"
    assert data.splits["train"]["tokens"][0].tolist() == tok.ids(["alpha beta gamma delta"])[0]


def test_subword_training_is_deterministic():
    texts = [f"{w} {v} and {w}{v}" for w in ("red", "green", "blue", "cyan") for v in ("apple", "pear", "plum")] * 3
    settings = subword.SubwordSettings(vocab_size=120)
    a, b = subword.train(texts, settings), subword.train(texts, settings)
    assert a.tokenizer.to_str() == b.tokenizer.to_str()
    assert subword.cache_key(texts, settings) != subword.cache_key(texts[:-1], settings)


# ---------------------------------------------------------------- errors

def test_missing_local_file(tmp_path):
    missing = tmp_path / "no" / "reviews.csv"
    with pytest.raises(DataError) as info:
        build_task("text", {"path": str(missing)}).prepare(tmp_path / "work")
    msg = str(info.value)
    assert str(missing) in msg and "'text'" in msg and "'label'" in msg
    assert "datasets.load_dataset('stanfordnlp/imdb')" in msg and "tasks.text.data.path" in msg

    with pytest.raises(DataError) as info:
        build_task("textcls", {"data_files": {"train": str(missing)}, "text_columns": ["title", "description"]}
                   ).prepare(tmp_path / "work")
    assert str(missing) in str(info.value) and "'description'" in str(info.value)


def test_missing_columns_listed(tmp_path):
    path = _write(tmp_path / "d.csv", _rows(10))
    with pytest.raises(DataError) as info:
        build_task("textcls", {"path": str(path), "text_columns": ["title", "text"]}).prepare(tmp_path / "w")
    assert "'title'" in str(info.value) and "columns found: text, label" in str(info.value)
    with pytest.raises(DataError) as info:
        build_task("text", {"path": str(path), "label_column": "sentiment"}).prepare(tmp_path / "w")
    assert "'sentiment'" in str(info.value) and "columns found: text, label" in str(info.value)


@pytest.mark.parametrize("task, hub_id", [("text", "stanfordnlp/imdb"), ("textcls", "fancyzhx/ag_news")])
def test_offline_hub_id(tmp_path, task, hub_id):
    """The defaults are hub ids; offline with an empty cache, the error says how to get the data."""
    t0 = time.perf_counter()
    with pytest.raises(DataError) as info:
        build_task(task, {}).prepare(tmp_path / "work")
    msg = str(info.value)
    assert "Offline mode is on" in msg
    assert f"python -c \"import datasets; datasets.load_dataset('{hub_id}')\"" in msg
    assert f"tasks.{task}.data.path" in msg
    assert time.perf_counter() - t0 < 20  # no network attempts


def test_missing_sources_said_when_planned(tmp_path, offline_hf):
    """What a dry run reports before any job: absent local files, and hub ids not in the cache."""
    absent = tmp_path / "nowhere" / "reviews.csv"
    (problem,) = build_task("textcls", {"path": str(absent)}).missing_sources()
    assert str(absent) in problem and "datasets.load_dataset('fancyzhx/ag_news')" in problem
    present = _write(tmp_path / "d.csv", _rows(10))
    assert build_task("text", {"path": str(present)}).missing_sources() == []
    (problem,) = build_task("textcls", {"data_files": {"train": str(present), "test": str(absent)}}).missing_sources()
    assert str(absent) in problem and str(present) not in problem
    # hub ids: absent from the cache -> the download command; present -> nothing to say
    (problem,) = build_task("text", {}).missing_sources()
    assert "datasets.load_dataset('stanfordnlp/imdb')" in problem and "offline mode is on" in problem
    (problem,) = build_task("image", {"source": "cifar10"}).missing_sources()
    assert "datasets.load_dataset('uoft-cs/cifar10')" in problem
    assert build_task("image", {"source": "digits"}).missing_sources() == []
    (offline_hf / "hub" / "datasets--stanfordnlp--imdb").mkdir(parents=True)
    assert build_task("text", {}).missing_sources() == []


def test_offline_hub_id_with_subset(tmp_path):
    with pytest.raises(DataError) as info:
        build_task("textcls", {"path": "nyu-mll/glue", "subset": "sst2", "text_columns": ["sentence"]}
                   ).prepare(tmp_path / "work")
    assert "datasets.load_dataset('nyu-mll/glue', 'sst2')" in str(info.value)


def test_bad_labels_and_split_values(tmp_path):
    path = _write(tmp_path / "d.csv", _rows(10, labels=("neg", "pos", "meh")))
    with pytest.raises(DataError, match="'meh'"):
        build_task("text", {"path": str(path), "label_names": ["neg", "pos"]}).prepare(tmp_path / "w")
    path = _write(tmp_path / "e.csv", [{"text": "x", "label": 5}] * 10)
    with pytest.raises(DataError, match="outside 0..1"):
        build_task("text", {"path": str(path), "label_names": ["a", "b"]}).prepare(tmp_path / "w")
    path = _write(tmp_path / "f.csv", [{**r, "part": "holdout"} for r in _rows(10)])
    with pytest.raises(DataError, match="'holdout'"):
        build_task("text", {"path": str(path), "split_column": "part"}).prepare(tmp_path / "w")
    path = _write(tmp_path / "g.csv", _rows(3))
    with pytest.raises(DataError, match="would be empty"):
        build_task("text", {"path": str(path)}).prepare(tmp_path / "w")
    folder = tmp_path / "only_test"
    _write(folder / "test.csv", _rows(10))
    with pytest.raises(DataError, match="no training split"):
        build_task("text", {"path": str(folder)}).prepare(tmp_path / "w")


# ---------------------------------------------------------------- configs

def test_configs_and_defaults():
    from attnbench.harness.config import resolve_run, validate_config

    text, textcls = TASKS.get("text").config(), TASKS.get("textcls").config()
    assert (text.path, text.seq_len, text.text_columns, text.label_column) == \
           ("stanfordnlp/imdb", 4096, ("text",), "label")
    assert not hasattr(text, "tokenizer")  # LRA Text is bytes only
    assert (textcls.path, textcls.tokenizer, textcls.vocab_size) == ("fancyzhx/ag_news", "subword", 8192)
    config = validate_config({"variants": {"full": {}}, "tasks": {"text": {"data": {"seq_len": 1000}},
                                                                  "textcls": {"data": {"tokenizer": "bytes"}}}})
    run = resolve_run(config, "text", "full", 0)
    assert run["task"]["data"]["seq_len"] == 1000 and run["task"]["data"]["val_fraction"] == 0.1


# ---------------------------------------------------------------- the real shared samples, trained briefly

def _train_briefly(tmp_path, task: str, data, model: dict, train: dict) -> dict:
    from attnbench.harness.config import resolve_run, validate_config
    from attnbench.harness.run.train import train_run

    config = validate_config({"variants": {"full": {}}, "tasks": {task: {}}, "model": model, "train": train,
                              "device": "cpu", "threads": 1, "seeds": [0]})
    t0 = time.perf_counter()
    record = train_run(resolve_run(config, task, "full", 0), data, tmp_path / "run", bar=False)
    record["_seconds"] = time.perf_counter() - t0
    print(f"{task}: test accuracy {record['accuracy']['test']:.4f}, "
          f"majority {record['baselines']['majority_test_acc']:.4f}, {record['_seconds']:.1f} s")
    assert record["status"] == "ok", record["message"]
    return record


@pytest.mark.slow
@pytest.mark.skipif(not AG_NEWS.exists(), reason=f"the shared AG News sample {AG_NEWS} is absent")
def test_ag_news_sample_textcls_subword_beats_majority(tmp_path):
    names = [line.strip() for line in (AG_NEWS.parent / "classes.txt").read_text().splitlines() if line.strip()]
    data = build_task("textcls", {"path": str(AG_NEWS), "text_columns": ["title", "description"], "label_offset": 1,
                                  "label_names": names, "test_fraction": 0.2, "seq_len": 128, "vocab_size": 4096}
                      ).prepare(tmp_path / "work")
    sizes = {s: len(data.splits[s]["labels"]) for s in SPLITS}
    assert sizes == {"train": 5320, "val": 760, "test": 1520}
    assert data.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert sorted(torch.bincount(torch.cat([data.splits[s]["labels"] for s in SPLITS])).tolist()) == [1900] * 4
    record = _train_briefly(tmp_path, "textcls", data,
                            {"layers": 1, "dim": 32, "heads": 2, "mlp_dim": 64, "pooling": "mean"},
                            {"steps": 300, "batch_size": 32, "eval_every": 100, "lr": 3e-3, "warmup_steps": 20})
    assert record["accuracy"]["test"] > record["baselines"]["majority_test_acc"] + 0.25


@pytest.mark.slow
@pytest.mark.skipif(not IMDB_SAMPLE.exists(), reason=f"the shared IMDb sample {IMDB_SAMPLE} is absent")
def test_imdb_sample_text_bytes_beats_majority(tmp_path):
    """Byte-level IMDb from 600 reviews is hard: a small model memorises the training set within a few
    hundred steps, and only early stopping on validation (evaluated every 25 steps) keeps the few
    points above the majority class that the bytes give (seeds 0-3: 0.545-0.61 against 0.515)."""
    data = build_task("text", {"path": str(IMDB_SAMPLE), "split_column": "is_valid", "test_fraction": 0.25,
                               "seq_len": 256}).prepare(tmp_path / "work")
    assert {s: len(data.splits[s]["labels"]) for s in SPLITS} == {"train": 600, "val": 200, "test": 200}
    assert data.label_names == ["negative", "positive"] and data.vocab_size == BYTE_VOCAB
    raw = pd.read_csv(IMDB_SAMPLE)
    assert set(_texts(data, "val")) == {t.encode()[:256].decode(errors="replace") for t in raw.text[raw.is_valid]}
    assert "test carved from train" in data.source and "splits from column 'is_valid'" in data.source
    record = _train_briefly(tmp_path, "text", data,
                            {"layers": 1, "dim": 16, "heads": 1, "mlp_dim": 32, "dropout": 0.3, "pooling": "mean"},
                            {"steps": 300, "batch_size": 32, "eval_every": 25, "lr": 2e-3, "warmup_steps": 20,
                             "weight_decay": 0.1})
    assert record["accuracy"]["test"] > record["baselines"]["majority_test_acc"]
