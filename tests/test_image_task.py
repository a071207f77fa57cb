"""Image task: the offline digits source, and the CIFAR-10 path through `datasets` on a tiny local copy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from attnbench.tasks.base import SPLITS, DataError, build_task

# ---------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def digits():
    return build_task("image", {"source": "digits"}).prepare(Path("unused"))


def _rows(data, splits=SPLITS) -> list[tuple]:
    return [tuple(row) + (label,) for s in splits
            for row, label in zip(data.splits[s]["tokens"].tolist(), data.splits[s]["labels"].tolist(),
                                     strict=True)]


def test_digits_shapes_and_vocabulary(digits):
    assert digits.seq_len == 64 and digits.num_classes == 10
    for split in SPLITS:
        tokens, labels = digits.splits[split]["tokens"], digits.splits[split]["labels"]
        assert tokens.dtype == torch.int64 and labels.dtype == torch.int64
        assert tokens.shape == (labels.shape[0], 64)
        assert int(tokens.min()) >= 1 and int(tokens.max()) <= 17  # intensities 0-16, + 1 (0 is padding)
        assert int(tokens.max()) < digits.vocab_size
        assert set(labels.tolist()) <= set(range(10))
    assert set(digits.splits["train"]["labels"].tolist()) == set(range(10))
    assert digits.pad_id == 0


def test_digits_splits_partition_the_dataset(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    sizes = {s: digits.splits[s]["labels"].shape[0] for s in SPLITS}
    assert sum(sizes.values()) == 1797
    assert abs(sizes["test"] - 0.2 * 1797) <= 1 and abs(sizes["val"] - 0.1 * 1797) <= 1
    # the three splits together are exactly the dataset, each image once (a partition, as multisets)
    ours = sorted(_rows(digits))
    theirs = sorted(tuple(int(v) + 1 for v in img) + (int(label),)
                    for img, label in zip(raw.data, raw.target, strict=True))
    assert ours == theirs


def test_digits_split_seeded():
    a = build_task("image", {"source": "digits", "data_seed": 1}).prepare(Path("unused"))
    b = build_task("image", {"source": "digits", "data_seed": 1}).prepare(Path("unused"))
    c = build_task("image", {"source": "digits", "data_seed": 2}).prepare(Path("unused"))
    for s in SPLITS:
        assert torch.equal(a.splits[s]["tokens"], b.splits[s]["tokens"])
    assert not torch.equal(a.splits["test"]["tokens"], c.splits["test"]["tokens"])


def test_digits_max_train():
    data = build_task("image", {"source": "digits", "max_train": 100}).prepare(Path("unused"))
    assert data.splits["train"]["labels"].shape[0] == 100
    assert data.splits["test"]["labels"].shape[0] == round(0.2 * 1797)


# ---------------------------------------------------------------- cifar10 through `datasets`, offline

# colours whose luma is not within 0.01 of a .5 boundary, so rounding is unambiguous; (0, 45, 255)
# (luma 55.485) is close enough that a weight off by 1e-4 (0.1141 for blue) rounds it the other way
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (10, 200, 30),
           (123, 45, 67), (90, 180, 250), (250, 128, 3), (33, 66, 99), (200, 10, 150), (1, 2, 3), (0, 45, 255)]
H, W = 2, 3


def _luma_token(rgb) -> int:
    r, g, b = rgb
    return round(0.2989 * r + 0.5870 * g + 0.1140 * b) + 1


def _image_pixels(i: int) -> np.ndarray:
    """Image i: H x W pixels, each a different known colour (row-major order matters)."""
    idx = [(i + j) % len(COLOURS) for j in range(H * W)]
    return np.array([COLOURS[k] for k in idx], dtype=np.uint8).reshape(H, W, 3)


def _write_split(folder: Path, split: str, indices: list[int], column: str = "img") -> None:
    import datasets
    from PIL import Image as PILImage

    features = datasets.Features({column: datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    ds = datasets.Dataset.from_dict(
        {column: [PILImage.fromarray(_image_pixels(i)) for i in indices],
         "label": [i % 10 for i in indices]},
        features=features)
    folder.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))


def _expected_tokens(i: int) -> list[int]:
    return [_luma_token(tuple(int(c) for c in px)) for px in _image_pixels(i).reshape(-1, 3)]


def test_luma_boundaries_are_unambiguous():
    for r, g, b in COLOURS:
        frac = (0.2989 * r + 0.5870 * g + 0.1140 * b) % 1.0
        assert abs(frac - 0.5) > 0.01


@pytest.mark.parametrize("column", ["img", "image"])
def test_cifar10_local_parquet(tmp_path, offline_hf, column):
    folder = tmp_path / "cifar10"
    train_ids, test_ids = list(range(10)), list(range(100, 103))
    _write_split(folder / "plain_text", "train", train_ids, column)
    _write_split(folder / "plain_text", "test", test_ids, column)

    data = build_task("image", {"source": "cifar10", "path": str(folder)}).prepare(tmp_path / "work")

    assert data.seq_len == H * W and data.num_classes == 10 and data.vocab_size == 257
    # LRA's cut: train[:90%] / train[90%:] / test, in file order
    expected_ids = {"train": train_ids[:9], "val": train_ids[9:], "test": test_ids}
    for split, ids in expected_ids.items():
        tokens, labels = data.splits[split]["tokens"], data.splits[split]["labels"]
        assert tokens.tolist() == [_expected_tokens(i) for i in ids], split
        assert labels.tolist() == [i % 10 for i in ids], split
        assert tokens.dtype == torch.int64
    assert int(data.splits["train"]["tokens"].max()) <= 256 and int(data.splits["train"]["tokens"].min()) >= 1


def test_cifar10_val_fraction_and_max_train(tmp_path, offline_hf):
    folder = tmp_path / "cifar10"
    _write_split(folder, "train", list(range(20)))
    _write_split(folder, "test", list(range(4)))
    data = build_task("image", {"source": "cifar10", "path": str(folder), "val_fraction": 0.25,
                                "max_train": 7}).prepare(tmp_path / "work")
    sizes = {s: data.splits[s]["labels"].shape[0] for s in SPLITS}
    assert sizes == {"train": 7, "val": 5, "test": 4}
    assert data.splits["val"]["tokens"].tolist() == [_expected_tokens(i) for i in range(15, 20)]


def test_cifar10_missing_path_is_data_error(tmp_path, offline_hf):
    missing = tmp_path / "no" / "such" / "cifar"
    with pytest.raises(DataError) as info:
        build_task("image", {"source": "cifar10", "path": str(missing)}).prepare(tmp_path / "work")
    assert str(missing) in str(info.value)


def test_cifar10_without_test_split_is_data_error(tmp_path, offline_hf):
    folder = tmp_path / "cifar10"
    _write_split(folder, "train", list(range(5)))
    with pytest.raises(DataError) as info:
        build_task("image", {"source": "cifar10", "path": str(folder)}).prepare(tmp_path / "work")
    assert "test" in str(info.value) and str(folder) in str(info.value)
