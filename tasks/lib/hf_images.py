"""Image sets through Hugging Face ``datasets`` (a hub id or a local folder of its files), decoded to grayscale
pixel rows: the image task's ``cifar10`` and ``hf`` sources.

``decode`` reads one split's image column (decoded one by one, once), ``check_sizes`` refuses images of
another size than most training images (an image is H * W tokens: one size for all), naming the image's file.
``read_hf`` is the ``hf`` source: any image set with its own image and label columns, its splits by their
names (train; validation/valid/val/dev; test), class names from its ClassLabel feature.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnbench.tasks.base import DataError
from attnbench.tasks.lib.hf_source import Dataset, DatasetDict, load_source
from attnbench.tasks.lib.image_files import image_pixels
from attnbench.tasks.lib.labelled_texts import our_splits
from attnbench.tasks.lib.local_file_checks import folder_files

#: an image column's names tried in turn when none is set
IMAGE_COLUMNS = ("img", "image")


def decode(part: Dataset, column: str, convert: Callable[[Any, str], tuple[np.ndarray, int]],
           where: str) -> tuple[list[np.ndarray], list[tuple[int, int]], set[int]]:
    """One split's images as flat grayscale pixel rows, their (width, height) and the channels seen;
    ``convert`` (a Pillow image, where it is) -> ((H, W) gray pixels, channels)."""
    pixels, sizes, channels = [], [], set()
    for i, image in enumerate(part[column]):  # decoded one by one, once
        sizes.append(image.size)
        gray, ch = convert(image, f"{where}, image {i}")
        pixels.append(gray.reshape(-1))
        channels.add(ch)
    return pixels, sizes, channels


def _image_file(ds: DatasetDict, split: str, column: str, row: int, path: str) -> str:
    """Where row ``row`` of ``split`` comes from: the image's file name as ``datasets`` holds it (for a folder
    of images, the file read; a parquet file may keep its images' names), else its file and row among the
    split's parquet files in a local folder, else its row in the split."""
    import datasets

    stored = ds[split].cast_column(column, datasets.Image(decode=False))[row][column].get("path")
    if stored:
        return f"file {stored}"
    folder = Path(path).expanduser()
    if folder.is_dir():
        import pyarrow.parquet as pq

        start = 0
        for f in folder_files(folder).get(split, []):
            try:
                rows = pq.ParquetFile(f).metadata.num_rows
            except Exception:  # not parquet: its rows cannot be counted without reading it
                break
            if row < start + rows:
                return f"file {f}, row {row - start}"
            start += rows
    return f"row {row} of the {split} split"


def check_sizes(sizes: dict[str, list[tuple[int, int]]], ds: DatasetDict, columns: dict[str, str], path: str,
                what: str = "CIFAR-10") -> None:
    """Every image (``sizes``: split -> (width, height) per image) the size of most training images (an image
    is H * W tokens, so one size for all splits); a DataError names the first other one's file and both sizes."""
    common = Counter(sizes["train"]).most_common(1)
    if not common:
        raise DataError(f"{what} at {path!r}: the train split has no images")
    want = common[0][0]
    for split, these in sizes.items():
        odd = [i for i, size in enumerate(these) if size != want]
        if odd:
            (w, h), (ww, wh) = these[odd[0]], want
            raise DataError(
                f"{what} at {path!r}: {split} image {odd[0]} ({_image_file(ds, split, columns[split], odd[0], path)})"
                f" is {w} x {h} pixels ({w * h:,} tokens), but the training images are {ww} x {wh} ({ww * wh:,} "
                f"tokens); every image must be one size ({len(odd):,} of {split}'s {len(these):,} images are not): "
                "resize or remove them")


@dataclass
class HFImages:
    """An image set's splits (ours: train, and val/test where the source has them) as grayscale pixel rows."""

    pixels: dict[str, np.ndarray]  # split -> (n, H * W) uint8
    labels: dict[str, list[Any]]  # split -> the labels as the source holds them
    class_names: list[str]  # of a ClassLabel feature, else []
    size: tuple[int, int]  # (H, W)
    channels: set[int]
    origin: str
    notes: list[str] = field(default_factory=list)


def read_hf(path: str, *, image_column: str, label_column: str, config_key: str) -> HFImages:
    """The ``hf`` source: ``path`` (a hub id or a local folder) through ``datasets``, each split's images
    (``image_column``; empty: 'img' or 'image') and labels (``label_column``)."""
    import datasets

    what = "the image data"
    wanted = f"an image column {image_column!r}" if image_column else "an image column 'img' or 'image'"
    expected = f"{wanted} and a label column {label_column!r}"
    ds, origin = load_source(path, what=what, config_key=f"{config_key}.path", expected=expected,
                             local_form=f"a local folder of a data set's files (parquet, or images) with {expected}")
    pixels: dict[str, list[np.ndarray]] = {}  # by our split name
    labels: dict[str, list[Any]] = {}
    sizes: dict[str, list[tuple[int, int]]] = {}  # by the source's split name ("train" is the same in both)
    columns: dict[str, str] = {}
    channels: set[int] = set()
    notes: list[str] = []
    class_names: list[str] = []
    for ours, name, part in our_splits(ds, notes):
        column = image_column or next((c for c in IMAGE_COLUMNS if c in part.column_names), "")
        missing = ([] if column else [" or ".join(map(repr, IMAGE_COLUMNS))]) + [
            repr(c) for c in (column, label_column) if c and c not in part.column_names]
        if missing:
            raise DataError(f"{origin}, split {name!r}: no column {' and no column '.join(missing)}; "
                            f"columns found: {', '.join(part.column_names)}. Set {config_key}.image_column / "
                            "label_column to the right names")
        if not isinstance(part.features.get(column), datasets.Image):
            raise DataError(f"{origin}, split {name!r}: column {column!r} holds {part.features.get(column)}, not "
                            f"images (a datasets Image feature); set {config_key}.image_column to the column of images")
        pixels[ours], sizes[name], seen = decode(part, column, image_pixels, f"{origin}, split {name!r}")
        columns[name], channels = column, channels | seen
        labels[ours] = part.with_format("arrow")[label_column].to_pylist()
        feature = part.features.get(label_column)
        class_names = class_names or list(getattr(feature, "names", None) or [])
    if "train" not in pixels:
        raise DataError(f"{origin} has no training split (found: {', '.join(ds)}); name its files train* (and test*)")
    check_sizes(sizes, ds, columns, path, what=what)
    w, h = Counter(sizes["train"]).most_common(1)[0][0]
    return HFImages({s: np.stack(p).astype(np.uint8) for s, p in pixels.items()}, labels, class_names, (h, w),
                    channels, origin, notes)
