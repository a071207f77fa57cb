"""Local image data for the image task (``source: files``), read whole when the task is prepared, and the
grayscale conversion every image source shares.

A source is one of (``image_checks.source_kind``):

- a CSV of pixels: a header line, a label column (``label_column``) and one column per pixel value, integers
  0-255, rows top to bottom; grayscale (``channels: 1``: side x side columns) or RGB (``channels: 3``:
  side x side x 3 columns, each pixel's red, green and blue in turn, i.e. an (H, W, 3) array flattened);
- an ``.npz`` (``numpy.savez``) with the arrays ``images``, (n, H, W) grayscale or (n, H, W, 3) RGB of
  integers 0-255 (uint8), and ``labels``, (n,) integers or strings;
- a folder with one sub-folder per class, each holding that class's image files (PNG, JPEG, ... read with
  Pillow) directly; the class is the sub-folder's name.

RGB pixels are converted to grayscale as LRA does (``to_grayscale``: TF's ``rgb_to_grayscale``); grayscale
pixels are kept as they are (the conversion of a gray pixel, r = g = b, gives it back unchanged). Labels are
given ids by ``image_splits.label_ids``. What a reader would refuse is found first by ``image_checks``
(the same check the config check makes), so that ``prepare`` says it in the same words.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnbench.tasks.base import DataError
from attnbench.tasks.lib.image_checks import (
    IMAGE_SUFFIXES,
    class_folders,
    deep_image,
    image_files,
    source_kind,
    source_problems,
)

# tf.image.rgb_to_grayscale weights, as LRA's input pipeline uses
LUMA = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)
#: what the conversion of RGB pixels is called in the data's description
RGB_CONVERSION = "RGB converted to grayscale as LRA (tf.image.rgb_to_grayscale)"


def to_grayscale(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) uint8 luma exactly as ``tf.image.rgb_to_grayscale`` on uint8 images:
    ``convert_image_dtype`` to float32 (x * (1/255)), the luma weights in float32, and back to uint8
    by ``convert_image_dtype``: x * 255.5 cast to an integer, which truncates (it does not round).
    A 2-D array is one grayscale image, returned as it is."""
    if rgb.ndim == 2:
        return rgb.astype(np.uint8)
    scaled = rgb[..., :3].astype(np.float32) * np.float32(1.0 / 255.0)
    gray = scaled @ LUMA
    return np.clip(np.trunc(gray * np.float32(255.5)), 0, 255).astype(np.uint8)


def image_pixels(image: Any, where: str) -> tuple[np.ndarray, int]:
    """A Pillow image's (H, W) uint8 grayscale pixels and its channels (1: grayscale, kept as it is; 3: colour,
    ``to_grayscale``); a 16-bit or floating-point image is a DataError naming ``where``."""
    if image.mode in ("1", "L", "LA"):
        return np.asarray(image.convert("L"), dtype=np.uint8), 1
    if image.mode.startswith(("I", "F")):
        raise DataError(deep_image(where, image.mode))
    return to_grayscale(np.asarray(image.convert("RGB"))), 3


def channels_text(channels: set[int]) -> str:
    """How the images' channels are described: grayscale, RGB (converted), or both."""
    if channels == {1}:
        return "grayscale"
    return RGB_CONVERSION if channels == {3} else f"grayscale and {RGB_CONVERSION}"


@dataclass
class ImageSet:
    """The images of one file or folder: grayscale pixel rows and their labels as the source holds them."""

    path: Path
    form: str  # "CSV file", ".npz file", "folder of class folders"
    pixels: np.ndarray  # (n, H * W) uint8
    labels: list[Any]  # ints or strings (a class folder's name)
    size: tuple[int, int]  # (H, W)
    channels: set[int] = field(default_factory=set)  # of the source's images: 1 grayscale, 3 RGB

    @property
    def origin(self) -> str:
        return f"local {self.form} {self.path}"


def read_images(path: Path, *, name: str, channels: int = 1, label_column: str = "label") -> ImageSet:
    """The images at ``path`` (a CSV, an .npz or a folder of class folders); ``name`` names the config key of
    the path in messages. What ``image_checks.source_problems`` finds is a DataError, in the same words."""
    path = Path(path).expanduser()
    problems, _ = source_problems(path, name, channels=channels, label_column=label_column)
    if problems:
        raise DataError(problems[0])
    kind = source_kind(path)
    if kind == "csv":
        return _read_csv(path, name, channels, label_column)
    if kind == "npz":
        return _read_npz(path, name)
    return _read_folder(path, name)


# ---------------------------------------------------------------- CSV of pixels

def _not_integer(values: Any) -> Any:
    """A boolean Series: the values of a pandas column that are not integers (text, blanks, fractions)."""
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce")
    return numbers.isna() | (numbers != numbers.round())


def _read_csv(path: Path, name: str, channels: int, label_column: str) -> ImageSet:
    import pandas as pd

    from attnbench.tasks.lib.local_file_checks import local_error

    try:
        frame = pd.read_csv(path, encoding="utf-8-sig", low_memory=False)
    except Exception as exc:  # pandas' parse errors vary: local_error names the file and the cause in one line
        raise local_error(exc, name, f"local file {path}", {"train": [path]}, [],
                          "a header line, a label column and one column per pixel") from exc
    pixel_columns = [c for c in frame.columns if c != label_column]
    for column in pixel_columns:
        if not pd.api.types.is_integer_dtype(frame[column]):
            bad = _not_integer(frame[column])
            if bad.any():
                row = int(bad.to_numpy().nonzero()[0][0])
                raise DataError(f"{name}: {path}, data row {row + 1:,}, column {column!r} is "
                                f"{frame[column].iloc[row]!r}; every pixel must be an integer 0-255")
    values = frame[pixel_columns].to_numpy(dtype=np.int64)
    _check_range(values, path, name, lambda row, col: f"data row {row + 1:,}, column {pixel_columns[col]!r}")
    side = int(round((values.shape[1] // channels) ** 0.5))
    shape = (len(values), side, side) + ((3,) if channels == 3 else ())
    pixels = values.astype(np.uint8).reshape(shape)
    gray = to_grayscale(pixels) if channels == 3 else pixels
    labels = frame[label_column]
    missing = labels.isna().to_numpy().nonzero()[0]
    if len(missing):
        raise DataError(f"{name}: {path}, data row {int(missing[0]) + 1:,} has no label in column {label_column!r} "
                        f"({len(missing):,} rows have none); give every row its class")
    raw = labels.tolist() if pd.api.types.is_numeric_dtype(labels) else [str(v) for v in labels]
    return ImageSet(path, "CSV file", gray.reshape(len(values), -1), raw, (side, side), {channels})


def _check_range(values: np.ndarray, path: Path, name: str, where: Any) -> None:
    """A DataError naming the first pixel outside 0-255 (``where(row, col)`` says where it is)."""
    bad = np.argwhere((values < 0) | (values > 255))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise DataError(f"{name}: {path}, {where(row, col)} is {int(values[row, col])}; every pixel must be an "
                        f"integer 0-255 ({len(bad):,} are not)")


# ---------------------------------------------------------------- .npz

def _read_npz(path: Path, name: str) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            images, labels = arrays["images"], arrays["labels"]
    except Exception as exc:  # a damaged archive or an object array: numpy's errors vary
        raise DataError(f"{name}: {path} cannot be read as an .npz ({type(exc).__name__}: {exc}); save it with "
                        "numpy.savez(path, images=<uint8 array>, labels=<int or str array>)") from exc
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    n = len(images)
    _check_range(images.reshape(n, -1), path, name, lambda row, col: f"images[{row}] pixel {col}")
    channels = 3 if images.ndim == 4 else 1
    gray = to_grayscale(images.astype(np.uint8)) if channels == 3 else images.astype(np.uint8)
    if labels.dtype.kind in "US":
        raw: list[Any] = [str(v) for v in labels.astype(str)]
    else:
        fraction = labels.dtype.kind == "f" and not np.all(np.mod(labels, 1) == 0)
        if fraction or labels.dtype.kind not in "biuf":
            raise DataError(f"{name}: {path}: 'labels' are {labels.dtype} values{' with fractions' if fraction else ''}"
                            "; save integer class ids 0..K-1 or class names (strings)")
        raw = [int(v) for v in labels]
    return ImageSet(path, ".npz file", gray.reshape(n, -1), raw, (int(gray.shape[1]), int(gray.shape[2])),
                    {channels})


# ---------------------------------------------------------------- a folder of class folders

def _read_folder(path: Path, name: str) -> ImageSet:
    from PIL import Image as PILImage

    pixels: list[np.ndarray] = []
    labels: list[Any] = []
    files: list[Path] = []
    channels: set[int] = set()
    for folder in class_folders(path):
        for file in image_files(folder):
            try:
                with PILImage.open(file) as image:
                    image.load()
                    gray, ch = image_pixels(image, f"{name}: {file}")
            except DataError:
                raise
            except Exception as exc:  # Pillow's errors vary (UnidentifiedImageError, OSError, truncated files)
                raise DataError(f"{name}: {file} cannot be read as an image ({type(exc).__name__}: {exc}); remove "
                                f"it or save it again as one of {', '.join(IMAGE_SUFFIXES)}") from exc
            pixels.append(gray)
            labels.append(folder.name)
            files.append(file)
            channels.add(ch)
    sizes = [p.shape for p in pixels]
    (h, w), _ = Counter(sizes).most_common(1)[0]
    odd = [i for i, s in enumerate(sizes) if s != (h, w)]
    if odd:
        oh, ow = sizes[odd[0]]
        raise DataError(f"{name}: {files[odd[0]]} is {ow} x {oh} pixels ({ow * oh:,} tokens), but most images of "
                        f"{path} are {w} x {h} ({w * h:,} tokens); every image must be one size ({len(odd):,} of "
                        f"{len(sizes):,} are not): resize or remove them")
    return ImageSet(path, "folder of class folders", np.stack(pixels).reshape(len(pixels), -1), labels, (h, w),
                    channels)
