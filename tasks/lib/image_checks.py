"""What ``image_files`` could not read of a local image source, found by reading only the start of it.

``source_problems`` reads a CSV's header and first rows, an .npz's array headers (not the arrays), a
folder's listing and the header of the first image of each class folder: cheap enough for the config check
(``ImageConfig.problems``), which runs it on every config load, and run again first when the data is
prepared. Each problem is one line naming the file and what to do. A path that does not exist is not a
problem here: ``Task.missing_sources`` says so when the pipeline is planned (an ``optional`` task is then
left out).
"""
from __future__ import annotations

import csv
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

#: image files of a class folder, by suffix (any case): what Pillow reads
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: the forms of a local image source, as messages describe them
FORMS = ("a .csv of pixels (a label column and one column per pixel), an .npz (arrays 'images' and 'labels') or "
         "a folder with one sub-folder of images per class")
#: the data rows of a CSV whose pixels the check reads
FIRST_ROWS = 5


def deep_image(where: str, mode: str) -> str:
    """Why an image of Pillow mode ``mode`` (16- or 32-bit, or floating-point: 'I', 'I;16', 'F') is refused."""
    return (f"{where} is a {mode!r} image (16- or 32-bit or floating-point pixels), which has no 0-255 intensities; "
            "save it as 8-bit grayscale or RGB")


def source_kind(path: Path) -> str:
    """'csv', 'npz' or 'folder' (a directory); '' for anything else."""
    if path.is_dir():
        return "folder"
    return {".csv": "csv", ".npz": "npz"}.get(path.suffix.lower(), "")


def class_folders(path: Path) -> list[Path]:
    """The class sub-folders of ``path``, by name (hidden ones left out)."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, by name (hidden ones left out)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def source_problems(path: Path, name: str, *, channels: int = 1,
                    label_column: str = "label") -> tuple[list[str], int | None]:
    """(What ``image_files.read_images`` could not read at ``path``, one line each; the number of images when
    it is known without reading them: an .npz's or a folder's). ``name`` is the config key of the path."""
    path = Path(path).expanduser()
    if not path.exists():
        return [], None
    kind = source_kind(path)
    if kind == "csv":
        return _csv_problems(path, name, channels, label_column), None
    if kind == "npz":
        return _npz_problems(path, name)
    if kind == "folder":
        return _folder_problems(path, name)
    return [f"{name}: {path} is neither a .csv, an .npz nor a folder; expected {FORMS}"], None


# ---------------------------------------------------------------- CSV

def _square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _pixel_count_problem(n: int, channels: int) -> str:
    """Why ``n`` pixel columns are no square image of ``channels`` channels, and what would fit; '' if they are."""
    if n % channels == 0 and _square(n // channels):
        return ""
    want = "side x side (a square number, e.g. 784 = 28 x 28)" if channels == 1 else \
        "side x side x 3 (RGB, e.g. 3,072 = 32 x 32 x 3)"
    hints = []
    if channels == 1 and n % 3 == 0 and _square(n // 3):
        hints.append(f"{n:,} = {math.isqrt(n // 3)} x {math.isqrt(n // 3)} x 3: if the rows are RGB, set channels: 3")
    if channels == 3 and _square(n):
        hints.append(f"{n:,} = {math.isqrt(n)} x {math.isqrt(n)}: if the rows are grayscale, set channels: 1")
    if any(_square(m // channels) and m % channels == 0 for m in (n - 1, n - 2)):
        hints.append("one or two columns too many: drop the columns that are not pixels (an id, an index) or set "
                     "label_column to the one holding the class")
    return (f"{n:,} pixel columns, but {'a grayscale' if channels == 1 else 'an RGB'} image needs {want}; "
            + ("; ".join(hints) if hints else "drop the columns that are not pixels, or set channels"))


def _pixel_value(text: str) -> bool:
    """Whether a CSV field is a pixel value: an integer 0-255 (written as one, or as 12.0)."""
    try:
        value = float(text)
    except ValueError:
        return False
    return value.is_integer() and 0 <= value <= 255


def _csv_problems(path: Path, name: str, channels: int, label_column: str) -> list[str]:
    rows: list[tuple[int, list[str]]] = []  # (line, fields) of the header and the first data rows
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for fields in reader:
                if any(v.strip() for v in fields):
                    rows.append((reader.line_num, fields))
                if len(rows) > FIRST_ROWS:
                    break
    except (UnicodeDecodeError, csv.Error) as exc:
        return [f"{name}: {path} cannot be read as UTF-8 CSV near its start ({type(exc).__name__}: {exc}); save it "
                "as a UTF-8 CSV with a header line"]
    if not rows:
        return [f"{name}: {path} is empty: no header and no rows; expected a header line, then one image per row"]
    (_, header), data = rows[0], rows[1:]
    if label_column not in header:
        shown = ", ".join(map(repr, header[:5])) + (f" and {len(header) - 5:,} more" if len(header) > 5 else "")
        return [f"{name}: {path} has no column {label_column!r} (label_column) in its header ({shown}); set "
                "label_column to the column holding the class, or add a header line naming it"]
    if not data:
        return [f"{name}: {path} has no rows: only a header line; add one row per image"]
    pixels = [i for i, column in enumerate(header) if column != label_column]
    count = _pixel_count_problem(len(pixels), channels)
    if count:
        return [f"{name}: {path} has {len(header):,} columns: label column {label_column!r} and {count}"]
    for line, fields in data:
        if len(fields) != len(header):
            return [f"{name}: {path}, line {line} has {len(fields):,} fields, but the header has {len(header):,}; "
                    "every row needs a label and every pixel"]
        for i in pixels:
            if not _pixel_value(fields[i]):
                return [f"{name}: {path}, line {line}, column {header[i]!r} is {fields[i]!r}; every pixel must be "
                        "an integer 0-255 (rescale values in [0, 1] by 255 and round them)"]
    return []


# ---------------------------------------------------------------- .npz

def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """The shape and dtype of each array of an .npz, read from the array headers, not the arrays."""
    out = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            out[member.removesuffix(".npy")] = (tuple(int(v) for v in shape), np.dtype(dtype))
    return out


def _npz_problems(path: Path, name: str) -> tuple[list[str], int | None]:
    save = "save it with numpy.savez(path, images=<uint8 (n, H, W) or (n, H, W, 3)>, labels=<(n,) ints or strings>)"
    try:
        arrays = _npz_headers(path)
    except Exception as exc:  # not a zip archive, or a damaged array header: zipfile's and numpy's errors vary
        return [f"{name}: {path} cannot be read as an .npz ({type(exc).__name__}: {exc}); {save}"], None
    missing = [a for a in ("images", "labels") if a not in arrays]
    if missing:
        return [f"{name}: {path} has no array {' and no array '.join(map(repr, missing))} (its arrays: "
                f"{', '.join(map(repr, arrays)) or 'none'}); {save}"], None
    (shape, dtype), (label_shape, label_dtype) = arrays["images"], arrays["labels"]
    rgb_ok = len(shape) == 4 and shape[-1] in (1, 3)
    if len(shape) != 3 and not rgb_ok:
        return [f"{name}: {path}: 'images' has shape {shape}, not (n, H, W) grayscale or (n, H, W, 3) RGB; "
                f"{save}"], None
    if dtype.kind not in "ui":
        return [f"{name}: {path}: 'images' are {dtype}, not integers 0-255; scale them to 0-255 and save them as "
                "uint8"], None
    n = shape[0]
    problems = []
    if not n or not shape[1] or not shape[2]:
        problems.append(f"{name}: {path}: 'images' has shape {shape}: no images, or images of no pixels; {save}")
    if label_shape != (n,):
        problems.append(f"{name}: {path}: 'labels' has shape {label_shape}, but 'images' holds {n:,} images: one "
                        "label per image, shape (n,)")
    if label_dtype.kind not in "biufUS":
        problems.append(f"{name}: {path}: 'labels' are {label_dtype} (read only with pickle); save them as integers "
                        "or strings")
    return problems, n


# ---------------------------------------------------------------- a folder of class folders

def _folder_problems(path: Path, name: str) -> tuple[list[str], int | None]:
    from PIL import Image as PILImage

    classes = class_folders(path)
    if not classes:
        loose = image_files(path)
        found = (f"{len(loose):,} image files but no sub-folder: put each class's images in a sub-folder named after "
                 "the class" if loose else "no sub-folders: give it one sub-folder of images per class")
        return [f"{name}: {path} has {found}"], None
    files = {folder: image_files(folder) for folder in classes}
    empty = [folder.name for folder, fs in files.items() if not fs]
    if empty:
        return [f"{name}: {path}: class folder(s) {', '.join(map(repr, empty))} hold no image files "
                f"({', '.join(IMAGE_SUFFIXES)}); add their images or remove them"], None
    if len(classes) < 2:
        return [f"{name}: {path} has one class folder ({classes[0].name!r}); a classification data set needs at least "
                "two, one sub-folder per class"], None
    for fs in files.values():
        try:
            with PILImage.open(fs[0]) as image:  # reads the header only
                mode = image.mode
        except Exception as exc:  # Pillow's errors vary (UnidentifiedImageError, OSError)
            return [f"{name}: {fs[0]} cannot be read as an image ({type(exc).__name__}: {exc}); remove it or save "
                    f"it again as one of {', '.join(IMAGE_SUFFIXES)}"], None
        if mode.startswith(("I", "F")):
            return [deep_image(f"{name}: {fs[0]}", mode)], None
    return [], sum(len(fs) for fs in files.values())
