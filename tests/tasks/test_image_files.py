"""Image task, local data (`source: files`: a CSV of pixels, an .npz, class folders) and any `datasets` image set
(`source: hf`): each prepared to the right tokens, labels and classes; RGB through the LRA grayscale path; what
check-config refuses of a malformed file, in one line; the description the record carries; the hashes of
digits and cifar10 configs unchanged by the new settings."""
from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from attnbench.harness.config import ConfigError, validate_config
from attnbench.harness.core.registry import as_dict, settings_of
from attnbench.tasks.base import FORMAT_VERSION, SPLITS, DataError, build_task, data_key
from attnbench.tasks.image import Image, ImageConfig
from attnbench.tasks.lib import image_files
from conftest import tiny_config

#: ImageConfig's fields before the files and hf sources: what a digits or cifar10 config still hashes
OLD_FIELDS = ["source", "path", "val_fraction", "test_fraction", "max_train", "data_seed"]


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _write_csv(path: Path, images: np.ndarray, labels, header: list[str] | None = None) -> Path:
    flat = images.reshape(len(images), -1)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header or ["label"] + [f"pixel{i}" for i in range(flat.shape[1])])
        writer.writerows([label, *row] for label, row in zip(labels, flat.tolist(), strict=True))
    return path


def _write_folders(root: Path, images: np.ndarray, labels: list[str], suffix: str = ".png") -> Path:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (root / label).mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(image).save(root / label / f"{i:03d}{suffix}")
    return root


def _prepare(tmp_path: Path, **params):
    return build_task("image", {"source": "files", **params}).prepare(tmp_path / "work")


def _rows(data) -> list[tuple]:
    """Every (token row..., label) of all splits, sorted: the data set as a multiset."""
    return sorted(tuple(row) + (label,) for s in SPLITS
                  for row, label in zip(data.splits[s]["tokens"].tolist(), data.splits[s]["labels"].tolist(),
                                        strict=True))


def _expected(gray: np.ndarray, labels) -> list[tuple]:
    return sorted(tuple(int(v) + 1 for v in img.reshape(-1)) + (int(label),)
                  for img, label in zip(gray, labels, strict=True))


def _tf_luma(rgb: np.ndarray) -> np.ndarray:
    """tf.image.rgb_to_grayscale on uint8, written out: luma of x / 255 in float32, times 255.5, truncated."""
    x = rgb.astype(np.float32) / np.float32(255)
    gray = x[..., 0] * np.float32(0.2989) + x[..., 1] * np.float32(0.5870) + x[..., 2] * np.float32(0.1140)
    return np.trunc(gray * np.float32(255.5)).astype(np.uint8)


# ---------------------------------------------------------------- each form prepared

def test_csv_grayscale(tmp_path):
    images, labels = _images(40, (5, 5)), [i % 4 for i in range(40)]
    data = _prepare(tmp_path, path=str(_write_csv(tmp_path / "d.csv", images, labels)))
    assert data.seq_len == 25 and data.vocab_size == 257 and data.num_classes == 4
    assert data.label_names == ["0", "1", "2", "3"]
    assert _rows(data) == _expected(images, labels)  # the splits partition the file, each image once
    sizes = {s: len(data.splits[s]["labels"]) for s in SPLITS}
    assert sizes == {"test": 8, "val": 4, "train": 28}  # 0.2 and 0.1 of 40, carved as the digits are


def test_csv_rgb_goes_through_the_lra_grayscale(tmp_path):
    rgb = _images(30, (4, 4, 3), seed=1)
    path = _write_csv(tmp_path / "rgb.csv", rgb, [i % 3 for i in range(30)])
    data = _prepare(tmp_path, path=str(path), channels=3)
    assert data.seq_len == 16
    assert _rows(data) == _expected(_tf_luma(rgb), [i % 3 for i in range(30)])
    assert "RGB converted to grayscale as LRA" in data.source
    assert Image.__module__ == "attnbench.tasks.image"
    from attnbench.tasks import image
    assert image.to_grayscale is image_files.to_grayscale and image.LUMA is image_files.LUMA  # one code path


def test_gray_pixels_are_kept_as_the_luma_path_would_give_them():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert (image_files.to_grayscale(np.stack([levels] * 3, axis=-1)) == levels).all()


def test_npz_grayscale_rgb_and_string_labels(tmp_path):
    gray, rgb = _images(20, (3, 6), seed=2), _images(20, (3, 6, 3), seed=3)
    names = ["zebra", "ant"] * 10
    np.savez(tmp_path / "g.npz", images=gray, labels=np.array(names))
    data = _prepare(tmp_path, path=str(tmp_path / "g.npz"))
    assert data.seq_len == 18 and data.label_names == ["ant", "zebra"]  # strings in sorted order
    assert _rows(data) == _expected(gray, [["ant", "zebra"].index(n) for n in names])
    np.savez(tmp_path / "c.npz", images=rgb, labels=np.arange(20) % 2)
    data = _prepare(tmp_path, path=str(tmp_path / "c.npz"), label_names=["even", "odd"])
    assert data.label_names == ["even", "odd"] and "6 x 3 pixels" in data.source
    assert _rows(data) == _expected(_tf_luma(rgb), np.arange(20) % 2)


def test_class_folders_name_the_classes(tmp_path):
    gray = _images(12, (4, 4), seed=4)
    labels = ["dog", "cat", "bird"] * 4
    root = _write_folders(tmp_path / "pets", gray, labels)
    data = _prepare(tmp_path, path=str(root), label_names=["dog", "cat", "bird"])
    assert data.label_names == ["dog", "cat", "bird"] and data.num_classes == 3
    assert _rows(data) == _expected(gray, [["dog", "cat", "bird"].index(n) for n in labels])
    assert "grayscale;" in data.source and "3 classes (dog, cat, bird)" in data.source
    plain = _prepare(tmp_path, path=str(root))
    assert plain.label_names == ["bird", "cat", "dog"]  # without label_names: the folders in sorted order


def test_class_folders_rgb_and_grayscale_mixed(tmp_path):
    rgb, gray = _images(4, (3, 3, 3), seed=5), _images(4, (3, 3), seed=6)
    _write_folders(tmp_path / "mix", rgb, ["a"] * 4)
    _write_folders(tmp_path / "mix", gray, ["b"] * 4, suffix=".bmp")
    data = _prepare(tmp_path, path=str(tmp_path / "mix"), test_fraction=0.25, val_fraction=0.25)
    assert _rows(data) == _expected(np.concatenate([_tf_luma(rgb), gray]), [0] * 4 + [1] * 4)
    assert "grayscale and RGB converted" in data.source


def test_separate_test_file(tmp_path):
    train, test = _images(20, (3, 3), seed=7), _images(6, (3, 3), seed=8)
    data = _prepare(tmp_path, path=str(_write_csv(tmp_path / "train.csv", train, ["b", "a"] * 10)),
                    test_path=str(_write_csv(tmp_path / "test.csv", test, ["a", "b", "c"] * 2)))
    assert data.label_names == ["a", "b", "c"]  # the names of both files
    assert data.splits["test"]["tokens"].tolist() == [[int(v) + 1 for v in img.reshape(-1)] for img in test]
    assert data.splits["test"]["labels"].tolist() == [0, 1, 2, 0, 1, 2]
    assert {s: len(data.splits[s]["labels"]) for s in SPLITS} == {"train": 18, "val": 2, "test": 6}
    assert "test from local CSV file" in data.source and "test carved" not in data.source


def test_max_train_and_seed(tmp_path):
    path = str(_write_csv(tmp_path / "d.csv", _images(50, (2, 2)), [i % 2 for i in range(50)]))
    a, b = _prepare(tmp_path, path=path, max_train=10), _prepare(tmp_path, path=path, max_train=10, data_seed=1)
    assert len(a.splits["train"]["labels"]) == 10 and "train capped at 10" in a.source
    assert a.splits["test"]["tokens"].tolist() != b.splits["test"]["tokens"].tolist()


def test_bad_labels_are_refused_at_prepare(tmp_path):
    path = str(_write_csv(tmp_path / "d.csv", _images(10, (2, 2)), [0, 1, 5, 1, 0, 1, 0, 1, 0, 1]))
    with pytest.raises(DataError, match=r"label ids \[5\] are outside 0\.\.1 for the 2 classes of label_names"):
        _prepare(tmp_path, path=path, label_names=["a", "b"])
    strings = str(_write_csv(tmp_path / "s.csv", _images(4, (2, 2)), ["a", "b", "c", "a"]))
    with pytest.raises(DataError, match=r"label\(s\) 'c' are not in label_names \['a', 'b'\]"):
        _prepare(tmp_path, path=strings, label_names=["a", "b"])


def test_a_bad_pixel_past_the_checked_rows_is_refused_at_prepare(tmp_path):
    images = _images(10, (2, 2)).astype(np.int64)
    images[8, 1, 1] = 300
    path = _write_csv(tmp_path / "d.csv", images, [i % 2 for i in range(10)])
    assert ImageConfig(source="files", path=str(path)).problems() == []  # the first rows are fine
    with pytest.raises(DataError, match=r"d\.csv, data row 9, column 'pixel3' is 300; every pixel must be"):
        _prepare(tmp_path, path=str(path))


def test_missing_sources_name_path_and_test_path(tmp_path):
    task = build_task("image", {"source": "files", "path": str(tmp_path / "no.csv"),
                                "test_path": str(tmp_path / "none")})
    missing = task.missing_sources()
    assert len(missing) == 2 and str(tmp_path / "no.csv") in missing[0] and "'tasks.image.data.test_path'" in missing[1]


# ---------------------------------------------------------------- a named 10-class data set, through the task's API

@pytest.mark.slow
def test_a_named_ten_class_csv(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    path = _write_csv(tmp_path / "digits.csv", digits.images.astype(np.uint8), digits.target)
    data = _prepare(tmp_path, path=str(path), label_names=names)
    assert data.num_classes == 10 and data.label_names == names and data.seq_len == 64
    assert _rows(data) == _expected(digits.images.astype(np.uint8), digits.target)
    assert set(data.splits["train"]["labels"].tolist()) == set(range(10))
    # the record's data.source names the data truthfully: where, size, channels, the classes, the splits
    assert data.source == (f"local CSV file {path}: 8 x 8 pixels (64 tokens), grayscale; 10 classes (zero, one, two, "
                           "three, four, five, six, seven, eight, nine); train 1,258, val 180, test 359 (test carved "
                           "from train (0.2, seed 0); val carved from train (0.1, seed 0))")
    assert "CIFAR" not in json.dumps(data.meta())


# ---------------------------------------------------------------- any `datasets` image set

@pytest.mark.slow
def test_hf_image_set_with_its_own_columns_and_class_names(tmp_path, offline_hf):
    import datasets

    features = datasets.Features({"picture": datasets.Image(), "y": datasets.ClassLabel(names=["ant", "bee", "cow"])})
    images = {"train": _images(20, (3, 4), seed=9), "test": _images(6, (3, 4), seed=10)}
    folder = tmp_path / "hub_copy"
    folder.mkdir()
    for split, imgs in images.items():
        datasets.Dataset.from_dict({"picture": [PILImage.fromarray(i) for i in imgs],
                                    "y": [i % 3 for i in range(len(imgs))]}, features=features
                                   ).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    data = build_task("image", {"source": "hf", "path": str(folder), "image_column": "picture",
                                "label_column": "y"}).prepare(tmp_path / "work")
    assert data.label_names == ["ant", "bee", "cow"] and data.seq_len == 12
    assert data.splits["test"]["tokens"].tolist() == [[int(v) + 1 for v in i.reshape(-1)] for i in images["test"]]
    assert {s: len(data.splits[s]["labels"]) for s in SPLITS} == {"train": 18, "val": 2, "test": 6}
    assert data.source.startswith(f"local folder {folder}: 4 x 3 pixels (12 tokens), grayscale; 3 classes (ant, bee, "
                                  "cow)")
    with pytest.raises(DataError, match=r"no column 'img' or 'image' and no column 'label'; columns found: picture, y"):
        build_task("image", {"source": "hf", "path": str(folder)}).prepare(tmp_path / "work")


# ---------------------------------------------------------------- what check-config refuses, one line each

def _npz(tmp_path, **arrays) -> Path:
    np.savez(tmp_path / "d.npz", **arrays)
    return tmp_path / "d.npz"


def _text(tmp_path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path / name


def _folder(tmp_path, empty: bool = False, loose: bool = False, one: bool = False, garbage: bool = False) -> Path:
    root = tmp_path / "classes"
    if loose:
        root.mkdir()
        PILImage.fromarray(_images(1, (2, 2))[0]).save(root / "a.png")
        return root
    n = 2 if one else 4
    _write_folders(root, _images(n, (2, 2)), ["a", "a", "b", "b"][:n])
    if empty:
        (root / "c").mkdir()
    if garbage:
        (root / "a" / "000.png").write_bytes(b"not an image")
    return root


HEADER = "label," + ",".join(f"p{i}" for i in range(4))
MALFORMED = {  # name: (settings, or a function of tmp_path giving them; words the one line must hold)
    "csv, a column too many": (lambda t: {"path": _text(t, "d.csv", "label,id," + HEADER[6:] + "\n0,1,2,3,4,5\n")},
                               ["5 pixel columns, but a grayscale image needs side x side",
                                "one or two columns too many"]),
    "csv, RGB without channels": (lambda t: {"path": _text(t, "d.csv", "label," + ",".join(f"p{i}" for i in range(12))
                                                            + "\n0" + ",1" * 12 + "\n")},
                                  ["12 = 2 x 2 x 3: if the rows are RGB, set channels: 3"]),
    "csv, no label column": (lambda t: {"path": _text(t, "d.csv", "y," + HEADER[6:] + "\n0,1,2,3,4\n")},
                             ["has no column 'label' (label_column) in its header ('y', 'p0', 'p1', 'p2', 'p3')",
                              "set label_column"]),
    "csv, a fraction": (lambda t: {"path": _text(t, "d.csv", HEADER + "\n0,1,2,3,4\n1,0,0.5,0,0\n")},
                        ["line 3, column 'p1' is '0.5'; every pixel must be an integer 0-255"]),
    "csv, a pixel of 256": (lambda t: {"path": _text(t, "d.csv", HEADER + "\n0,1,2,3,256\n")},
                            ["column 'p3' is '256'"]),
    "csv, ragged": (lambda t: {"path": _text(t, "d.csv", HEADER + "\n0,1,2,3\n")},
                    ["line 2 has 4 fields, but the header has 5"]),
    "csv, empty": (lambda t: {"path": _text(t, "d.csv", "")}, ["is empty: no header and no rows"]),
    "csv, header only": (lambda t: {"path": _text(t, "d.csv", HEADER + "\n")}, ["has no rows: only a header line"]),
    "npz, no labels": (lambda t: {"path": _npz(t, images=_images(3, (2, 2)), y=np.zeros(3))},
                       ["has no array 'labels' (its arrays: 'images', 'y'); save it with numpy.savez"]),
    "npz, no images": (lambda t: {"path": _npz(t, x=_images(3, (2, 2)), labels=np.zeros(3))},
                       ["has no array 'images'"]),
    "npz, float images": (lambda t: {"path": _npz(t, images=np.zeros((3, 2, 2)), labels=np.zeros(3, int))},
                          ["'images' are float64, not integers 0-255"]),
    "npz, labels of another length": (lambda t: {"path": _npz(t, images=_images(3, (2, 2)), labels=np.zeros(2, int))},
                                      ["'labels' has shape (2,), but 'images' holds 3 images"]),
    "npz, not a zip": (lambda t: {"path": _text(t, "d.npz", "hello")}, ["cannot be read as an .npz"]),
    "folder, an empty class": (lambda t: {"path": _folder(t, empty=True)},
                               ["class folder(s) 'c' hold no image files", "add their images or remove them"]),
    "folder, images but no classes": (lambda t: {"path": _folder(t, loose=True)},
                                      ["has 1 image files but no sub-folder: put each class's images in a sub-folder"]),
    "folder, one class": (lambda t: {"path": _folder(t, one=True)}, ["has one class folder ('a')"]),
    "folder, not an image": (lambda t: {"path": _folder(t, garbage=True)}, ["000.png cannot be read as an image"]),
    "another kind of file": (lambda t: {"path": _text(t, "d.parquet", "x")},
                             ["is neither a .csv, an .npz nor a folder"]),
    "channels for an npz": (lambda t: {"path": _npz(t, images=_images(3, (2, 2)), labels=np.zeros(3, int)),
                                       "channels": 3}, ["'channels' is 3, but", "is no CSV"]),
    "a fraction that carves nothing": (lambda t: {"path": _folder(t), "val_fraction": 0.1},
                                       ["'val_fraction' is 0.1; of",
                                        "4 images that is round(4 * 0.1) = 0 for validation"]),
    "the cifar10 hub id": (lambda t: {}, ["'path' is 'uoft-cs/cifar10', the hub id that source cifar10 reads"]),
    "a test file with no label column": (lambda t: {"path": _folder(t), "test_path": _text(t, "t.csv", "y,p0\n0,1\n")},
                                         ["'test_path': ", "has no column 'label'"]),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_check_config_refuses_in_one_line(tmp_path, case):
    settings, words = MALFORMED[case]
    params = {k: str(v) if isinstance(v, Path) else v for k, v in settings(tmp_path).items()}
    problems = ImageConfig(**{"source": "files", **params}).problems()
    assert len(problems) == 1 and "\n" not in problems[0], problems
    for word in words:
        assert word in problems[0], problems[0]
    if "path" in params:
        assert str(Path(params.get("test_path", params["path"]))) in problems[0] or "0.1" in problems[0]


def test_prepare_refuses_in_the_same_words(tmp_path):
    path = _text(tmp_path, "d.csv", "y,p0,p1,p2,p3\n0,1,2,3,4\n")
    with pytest.raises(DataError) as info:
        _prepare(tmp_path, path=str(path))
    assert str(info.value) == ImageConfig(source="files", path=str(path)).problems(
        key=lambda name: f"'tasks.image.data.{name}'")[0]


def test_the_config_check_reads_the_files(tmp_path):
    path = _text(tmp_path, "d.csv", "label,a,b,c\n0,1,2,3\n")
    config = tiny_config(tasks={"image": {"data": {"source": "files", "path": str(path)}}})
    with pytest.raises(ConfigError, match=r"'tasks\.image\.data\.path': .*d\.csv has 4 columns: label column 'label' "
                                          r"and 3 pixel columns"):
        validate_config(config)


def test_settings_a_source_does_not_read(tmp_path):
    assert ImageConfig(source="digits", label_names=("a", "b")).problems() == [
        "'label_names' is ('a', 'b'), but source 'digits' does not read it (a setting of source files and hf): "
        "remove it, or set the source"]
    assert "'test_path'" in ImageConfig(source="hf", test_path="x.csv").problems()[0]
    assert ImageConfig(source="hf", label_names=("a", "a")).problems()[0].endswith("each class name once (its "
                                                                                   "position is the label id)")


# ---------------------------------------------------------------- the hashes of existing configs

def test_digits_and_cifar10_configs_hash_as_before():
    for params in ({}, {"source": "cifar10", "path": "/data/cifar10"}, {"source": "digits", "max_train": 100}):
        cfg = build_task("image", params).cfg
        old = {name: getattr(cfg, name) for name in OLD_FIELDS}
        assert settings_of(cfg) == old == as_dict(cfg)
        before = json.dumps({"task": "image", "params": old, "format": FORMAT_VERSION, "version": 2}, sort_keys=True)
        assert data_key("image", params) == hashlib.sha256(before.encode()).hexdigest()[:10]
        assert dataclasses.replace(cfg, max_train=5).max_train == 5
        assert pickle.loads(pickle.dumps(cfg)) == cfg == copy.deepcopy(cfg)
    files = ImageConfig(source="files", path="d.csv", channels=3)
    assert list(as_dict(files)) == [*OLD_FIELDS, "channels"]  # an added setting is hashed where it is set
    assert data_key("image", {"source": "files", "path": "a.csv"}) != data_key("image", {"source": "files",
                                                                                         "path": "a.csv",
                                                                                         "channels": 3})
    assert data_key("image", {"source": "files", "path": "a.csv"}) != data_key("image", {"source": "files",
                                                                                         "path": "b.csv"})
