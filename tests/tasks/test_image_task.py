"""Image task: the offline digits source, and the CIFAR-10 path through `datasets` on a tiny local copy."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attnbench.tasks.base import FORMAT_VERSION, SPLITS, TASKS, DataError, build_task, data_key
from attnbench.tasks.image import Image, to_grayscale

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

# colours whose TF grayscale (luma of x / 255, times 255.5) is not within 0.005 of an integer, so its
# truncation is unambiguous in float32; (0, 255, 0) gives 149.98: TF's 149, where rounding gave 150
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (10, 200, 30),
           (123, 45, 67), (90, 180, 250), (250, 128, 3), (33, 66, 99), (200, 10, 150), (1, 2, 3), (0, 45, 255)]
H, W = 2, 3


def _tf_gray(rgb) -> float:
    """tf.image.rgb_to_grayscale's value before its cast: the luma of x / 255, times 255.5."""
    r, g, b = rgb
    return (0.2989 * r / 255 + 0.5870 * g / 255 + 0.1140 * b / 255) * 255.5


def _luma_token(rgb) -> int:
    return int(_tf_gray(rgb)) + 1  # the cast to uint8 truncates


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
    for rgb in COLOURS:
        frac = _tf_gray(rgb) % 1.0
        assert rgb == (0, 0, 0) or 0.005 < frac < 0.995


def test_grayscale_truncates_as_tensorflow_does():
    """TF: convert_image_dtype to float (x / 255), luma, convert back: x * 255.5 truncated."""
    rgb = np.array([[(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)],
                    [(123, 45, 67), (200, 10, 150), (1, 2, 3), (0, 0, 0)]], dtype=np.uint8)
    assert to_grayscale(rgb).tolist() == [[76, 149, 29, 255], [70, 82, 1, 0]]
    rounded = np.rint(rgb.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140]))
    assert rounded.tolist() == [[76, 150, 29, 255], [71, 83, 2, 0]]  # what rounding (before) gave
    assert to_grayscale(np.full((2, 2), 7, dtype=np.uint8)).tolist() == [[7, 7], [7, 7]]  # already gray


def test_the_changed_conversion_gives_image_data_a_new_key():
    """Cached CIFAR data sets prepared with the old rounding are not reused: image's data_version is
    in its key; a task at version 1 keeps the key it had."""
    assert Image.data_version == 2
    key = data_key("image", {"source": "cifar10"})
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Image, "data_version", 1)
        assert data_key("image", {"source": "cifar10"}) != key
    listops = dataclasses.asdict(TASKS.make_config("listops", {}))
    before = json.dumps({"task": "listops", "params": listops, "format": FORMAT_VERSION}, sort_keys=True)
    assert data_key("listops", {}) == hashlib.sha256(before.encode()).hexdigest()[:10]


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
