"""Data that cannot be right is refused when it is prepared, before any training job reads it: one line
(exit 2 from ``attnbench prepare``) naming the data, the split, the value and what is expected, and no
dataset file written. Every task's data passes the same checks (``tasks.base.data_problem``): labels in
0..num_classes - 1 in every split, no val/test class missing from train, at least two classes in train,
every split's tokens (n, seq_len) within the vocabulary. Images must all be one size, and the first
other one is named by its file (``tasks/image.py``). A dataset file prepared before these checks is
refused when loaded, so that no run trains on it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attnbench.harness import cli
from attnbench.tasks import base
from attnbench.tasks.base import DataError, PreparedData, data_problem, load_prepared, save_prepared
from conftest import tiny_run


def _cifar(folder: Path, split: str, sizes: list[tuple[int, int]], labels: list[int], files: int = 1) -> None:
    """CIFAR-10's hub layout: ``split`` as ``files`` parquet files of images of ``sizes`` (w, h) and plain
    integer labels (no ClassLabel, which would refuse a label past its names)."""
    import datasets
    from PIL import Image as PILImage

    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    rng = np.random.default_rng(len(sizes))
    images = [PILImage.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    (folder / "plain_text").mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(sizes)), files)):
        datasets.Dataset.from_dict({"img": [images[j] for j in part], "label": [labels[j] for j in part]},
                                   features=features).to_parquet(
            str(folder / "plain_text" / f"{split}-{i:05d}-of-{files:05d}.parquet"))


def _prepare(tmp_path: Path, task: str, params: dict, capsys) -> str:
    """``attnbench prepare``'s one-line error (exit 2), having written no dataset file."""
    out = tmp_path / "data" / "dataset.pt"
    rc = cli.main(["prepare", "--task", task, "--data-json", json.dumps(params), "--out", str(out)])
    err = capsys.readouterr().err  # above the error: the progress bars of `datasets` reading the files
    errors = [line for line in err.splitlines() if line.startswith("attnbench: error: ")]
    assert rc == 2 and len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err, err
    assert not out.exists()
    return errors[0].removeprefix("attnbench: error: ")


SQUARE = [(4, 4)]


# ---------------------------------------------------------------- labels (every task)

@pytest.mark.slow
def test_a_label_past_the_class_count_is_refused_at_prepare(tmp_path, offline_hf, capsys):
    folder = tmp_path / "cifar"
    _cifar(folder, "train", SQUARE * 20, [i % 10 for i in range(20)])
    _cifar(folder, "test", SQUARE * 5, [0, 1, 10, 2, 10])
    msg = _prepare(tmp_path, "image", {"source": "cifar10", "path": str(folder)}, capsys)
    assert msg.startswith(f"image data (CIFAR-10 grayscale from {folder}): test label 10 (2 examples, the first at "
                          "index 2) is outside 0..9 for the task's 10 classes")


def test_a_label_out_of_range_in_listops_files_is_refused(tmp_path, capsys):
    folder = tmp_path / "listops"
    base.build_task("listops", {"n_train": 100, "n_val": 20, "n_test": 20, "min_length": 0, "max_length": 24,
                                "max_depth": 3}).write_generated(folder)
    val = folder / "basic_val.tsv"
    lines = val.read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t-1"
    val.write_text("\n".join(lines) + "\n")
    msg = _prepare(tmp_path, "listops", {"source": "files", "path": str(folder), "max_length": 24}, capsys)
    assert f"listops data (LRA release files in {folder}): val label -1 (1 example, the first at index 2)" in msg
    assert "outside 0..9" in msg


def test_a_class_only_in_test_is_refused(tmp_path, offline_hf, capsys):
    folder = tmp_path / "cifar"
    _cifar(folder, "train", SQUARE * 20, [i % 3 for i in range(20)])  # classes 0, 1, 2 (val: train's last 2)
    _cifar(folder, "test", SQUARE * 6, [0, 1, 7, 2, 7, 5])
    msg = _prepare(tmp_path, "image", {"source": "cifar10", "path": str(folder)}, capsys)
    assert ": test has class(es) 5, 7 (3 examples, the first at index 2) that train has none of (18 train " \
           "examples); a model cannot learn a class it never sees" in msg


def test_a_single_class_train_split_is_refused(tmp_path, offline_hf, capsys):
    folder = tmp_path / "cifar"
    _cifar(folder, "train", SQUARE * 10, [3] * 10)
    _cifar(folder, "test", SQUARE * 2, [3, 3])
    msg = _prepare(tmp_path, "image", {"source": "cifar10", "path": str(folder)}, capsys)
    assert ": the train split has a single class (label 3) in its 9 examples;" in msg
    assert "needs at least two classes in train" in msg


# ---------------------------------------------------------------- image sizes

def test_test_images_of_another_size_than_train_are_refused(tmp_path, offline_hf, capsys):
    """The issue's case: 32 x 32 training images (1,024 tokens), 16 x 16 test images (256)."""
    folder = tmp_path / "cifar"
    _cifar(folder, "train", [(32, 32)] * 10, list(range(10)))
    _cifar(folder, "test", [(16, 16)] * 3, [0, 1, 2])
    msg = _prepare(tmp_path, "image", {"source": "cifar10", "path": str(folder)}, capsys)
    test_file = folder / "plain_text" / "test-00000-of-00001.parquet"
    assert msg.startswith(f"CIFAR-10 at {str(folder)!r}: test image 0 (file {test_file}, row 0) is 16 x 16 pixels "
                          "(256 tokens), but the training images are 32 x 32 (1,024 tokens); every image must be one "
                          "size (3 of test's 3 images are not)")


def test_one_odd_image_is_named_by_its_file_and_row(tmp_path, offline_hf, capsys):
    """One 5 x 3 image among 4 x 4 ones, in the second of two training files (it made np.stack raise,
    naming no file)."""
    folder = tmp_path / "cifar"
    sizes = SQUARE * 10
    sizes[7] = (5, 3)
    _cifar(folder, "train", sizes, list(range(10)), files=2)
    _cifar(folder, "test", SQUARE * 2, [0, 1])
    msg = _prepare(tmp_path, "image", {"source": "cifar10", "path": str(folder)}, capsys)
    second = folder / "plain_text" / "train-00001-of-00002.parquet"
    assert f"train image 7 (file {second}, row 2) is 5 x 3 pixels (15 tokens), but the training images are 4 x 4" in msg


def test_a_folder_of_images_names_the_odd_image_file(tmp_path, offline_hf, capsys):
    """A local folder of PNGs (train/CLASS/*.png, test/CLASS/*.png), which ``datasets`` reads with its path."""
    from PIL import Image as PILImage

    folder = tmp_path / "pngs"
    for split, n in (("train", 3), ("test", 2)):
        for label in ("cat", "dog"):
            (folder / split / label).mkdir(parents=True)
            for i in range(n):
                PILImage.new("RGB", (4, 4)).save(folder / split / label / f"{i}.png")
    odd = folder / "test" / "dog" / "1.png"
    PILImage.new("RGB", (6, 4)).save(odd)
    msg = _prepare(tmp_path, "image", {"source": "cifar10", "path": str(folder)}, capsys)
    assert f"test image 3 (file {odd}) is 6 x 4 pixels (24 tokens), but the training images are 4 x 4" in msg


def test_images_of_one_size_still_prepare(tmp_path, offline_hf, capsys):
    folder = tmp_path / "cifar"
    _cifar(folder, "train", [(3, 2)] * 20, [i % 10 for i in range(20)])
    _cifar(folder, "test", [(3, 2)] * 4, [0, 1, 2, 3])
    out = tmp_path / "data" / "dataset.pt"
    rc = cli.main(["prepare", "--task", "image", "--data-json", json.dumps({"source": "cifar10", "path": str(folder)}),
                   "--out", str(out)])
    assert rc == 0 and out.exists(), capsys.readouterr().err


# ---------------------------------------------------------------- the shared check, and loading

def _data(**splits) -> PreparedData:
    parts = {s: {"tokens": torch.ones(len(y), 4, dtype=torch.int64), "labels": torch.tensor(y, dtype=torch.int64)}
             for s, y in {"train": [0, 1, 2, 1], "val": [0, 1], "test": [2, 0], **splits}.items()}
    return PreparedData(splits=parts, seq_len=4, vocab_size=5, num_classes=3, source="hand-made")


def test_the_shared_check_of_tokens_and_splits():
    assert data_problem(_data(), "t") == ""
    data = _data()
    data.splits["test"]["tokens"] = torch.ones(2, 6, dtype=torch.int64)
    assert data_problem(data, "t") == ("t data (hand-made): test tokens have shape (2, 6), expected (2, 4) (2 "
                                       "examples of seq_len 4); every split's examples must be of one length")
    data = _data()
    data.splits["val"]["tokens"][1, 2] = 5
    assert data_problem(data, "t") == ("t data (hand-made): val token ids span 1..5, outside the vocabulary 0..4 "
                                       "(vocab_size 5)")
    assert "the val split is empty" in data_problem(_data(val=[]), "t")
    data = _data()
    del data.splits["val"]
    assert data_problem(data, "t") == "t data (hand-made) has no val split (found train, test)"
    data = _data()
    data.splits["train"]["labels"] = data.splits["train"]["labels"].float()
    assert "train labels are torch.float32" in data_problem(data, "t")
    assert data_problem(_data(val=[3, 0, -2, 3]), "t") == (
        "t data (hand-made): val labels -2, 3 (3 examples, the first at index 0) are outside 0..2 for the task's 3 "
        "classes; fix the labels of the source")


def test_a_dataset_file_prepared_before_the_checks_is_refused_when_loaded(tmp_path, tiny_listops_data, monkeypatch,
                                                                           capsys):
    """A file with a label past the class count, written without the check (as an older version did):
    ``attnbench train`` refuses it in one line and trains nothing."""
    run = tiny_run()
    path = tmp_path / "dataset.pt"
    bad = PreparedData(**{**tiny_listops_data.__dict__, "splits": {s: dict(t) for s, t in
                                                                   tiny_listops_data.splits.items()}})
    bad.splits["train"]["labels"] = bad.splits["train"]["labels"].clone()
    bad.splits["train"]["labels"][5] = 10
    with pytest.raises(DataError, match=r"train label 10 \(1 example, the first at index 5\)"):
        save_prepared(path, "listops", run["task"]["data"], bad)
    assert not path.exists()
    monkeypatch.setattr(base, "check_prepared", lambda data, task: None)
    save_prepared(path, "listops", run["task"]["data"], bad)
    monkeypatch.undo()
    with pytest.raises(DataError) as info:
        load_prepared(path, "listops", run["task"]["data"])
    assert str(info.value).startswith(f"prepared data {path}: listops data (generated (seed 0), LRA specification): "
                                      "train label 10")
    assert str(info.value).endswith("; delete it and prepare again once the source is fixed")
    out = tmp_path / "run"
    rc = cli.main(["train", "--task", "listops", "--variant", "full", "--seed", "0", "--data", str(path),
                   "--run-config", json.dumps(run), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"prepared data {path}: " in err
    assert not out.exists()
