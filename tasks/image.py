"""Image (LRA): classify an image from its pixel intensities read as a token sequence.

No 2-D structure is given to the model: a H x W grayscale image becomes H*W tokens
(intensity + 1; 0 is padding). Sources:

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 real images, intensities
  0-16), shipped inside the installed package, so it works offline. 64 tokens.
- ``cifar10``: CIFAR-10 through Hugging Face ``datasets`` (a hub id such as
  ``uoft-cs/cifar10`` or a local folder of its parquet/image files), converted to
  grayscale as LRA does (``tf.image.rgb_to_grayscale``: ITU-R 601 luma of the pixels scaled to
  [0, 1], back to 0-255 by ``x * 255.5`` truncated, in float32): 32 x 32 = 1,024 tokens,
  train[:90%] / train[90%:] / test, as LRA's 45k / 5k / 10k. Every image must be the size of
  most training images (an image is H * W tokens): another size is refused, naming its file.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from attnbench.harness.core.registry import param
from attnbench.tasks.base import TASKS, DataError, PreparedData, Task
from attnbench.tasks.lib.hf_source import DatasetDict, load_source, missing_source
from attnbench.tasks.lib.local_file_checks import folder_files

#: images in scikit-learn's digits (``load_digits``), split by ``test_fraction`` and ``val_fraction``
DIGITS_IMAGES = 1797
# tf.image.rgb_to_grayscale weights, as LRA's input pipeline uses
LUMA = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)


@dataclass(frozen=True)
class ImageConfig:
    """Images as pixel-intensity token sequences."""

    source: Literal["digits", "cifar10"] = param("digits", "digits: scikit-learn's 8x8 digits (offline); cifar10: "
                                                 "CIFAR-10 via `datasets`")
    path: str = param("uoft-cs/cifar10", "cifar10 only: a Hugging Face dataset id, or a local folder with its files")
    val_fraction: float = param(0.1, "share of the training split held out for validation (LRA: 0.1); digits: "
                                "at least one of its 1,797 images (above 0.5 / 1797)", exclusiveMinimum=0.0,
                                maximum=0.5)
    test_fraction: float = param(0.2, "digits only (it has no test split): share held out for testing, at least one "
                                 "of its 1,797 images (above 0.5 / 1797)", exclusiveMinimum=0.0, maximum=0.5)
    max_train: int = param(0, "use at most this many training images (0 = all)", minimum=0)
    data_seed: int = param(0, "seed of the digits split")

    def problems(self, key: Callable[[str], str] = repr) -> list[str]:
        """Fractions that leave a split of the digits empty (training evaluates on val and test),
        one line each; ``key`` names a field in the message (the config check passes one giving
        its full key). CIFAR-10's size is known only when it is read."""
        if self.source != "digits":
            return []
        return [f"{key(name)} is {fraction:g}; of the digits' {DIGITS_IMAGES:,} images that is "
                f"round({DIGITS_IMAGES} * {fraction:g}) = 0 for {split}, and training evaluates on that split, so it "
                f"must be above 0.5 / {DIGITS_IMAGES} ({0.5 / DIGITS_IMAGES:.6f})"
                for name, split, fraction in (("val_fraction", "validation", self.val_fraction),
                                              ("test_fraction", "testing", self.test_fraction))
                if round(DIGITS_IMAGES * fraction) < 1]


def to_grayscale(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) uint8 luma exactly as ``tf.image.rgb_to_grayscale`` on uint8 images:
    ``convert_image_dtype`` to float32 (x * (1/255)), the luma weights in float32, and back to uint8
    by ``convert_image_dtype``: x * 255.5 cast to an integer, which truncates (it does not round)."""
    if rgb.ndim == 2:
        return rgb.astype(np.uint8)
    scaled = rgb[..., :3].astype(np.float32) * np.float32(1.0 / 255.0)
    gray = scaled @ LUMA
    return np.clip(np.trunc(gray * np.float32(255.5)), 0, 255).astype(np.uint8)


def _digits() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    from sklearn.datasets import load_digits  # scikit-learn takes seconds to import: only when used

    d = load_digits()
    return {"all": d.data.astype(np.int64)}, {"all": d.target.astype(np.int64)}, 16


def _cifar10(path: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    # a hub id, or a local folder of its files; offline mode honoured, a DataError with the way out
    ds, _ = load_source(str(path), what="CIFAR-10", config_key="tasks.image.data.path",
                        expected="an 'img' (or 'image') and a 'label' column", default_hub_id="uoft-cs/cifar10",
                        local_form="a local folder holding its train/test parquet files, with an 'img' "
                                   "(or 'image') and a 'label' column")
    pixels: dict[str, list[np.ndarray]] = {}
    sizes: dict[str, list[tuple[int, int]]] = {}
    columns: dict[str, str] = {}
    for split in ("train", "test"):
        if split not in ds:
            raise DataError(f"CIFAR-10 at {path!r} has no {split!r} split (found {list(ds)})")
        part = ds[split]
        col = next((c for c in ("img", "image") if c in part.column_names), None)
        if col is None or "label" not in part.column_names:
            raise DataError(f"CIFAR-10 at {path!r}: expected an 'img' (or 'image') and a 'label' column, "
                            f"found {part.column_names}")
        pixels[split], sizes[split], columns[split] = [], [], col
        for im in part[col]:  # decoded one by one, once
            sizes[split].append(im.size)
            pixels[split].append(to_grayscale(np.asarray(im.convert("RGB"))).reshape(-1))
    _check_sizes(sizes, ds, columns, path)
    images = {s: np.stack(p).astype(np.int64) for s, p in pixels.items()}
    labels = {s: np.asarray(ds[s]["label"], dtype=np.int64) for s in pixels}
    return images, labels, 255


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


def _check_sizes(sizes: dict[str, list[tuple[int, int]]], ds: DatasetDict, columns: dict[str, str], path: str) -> None:
    """Every image (``sizes``: split -> (width, height) per image) the size of most training images (an image
    is H * W tokens, so one size for all splits); a DataError names the first other one's file and both sizes."""
    common = Counter(sizes["train"]).most_common(1)
    if not common:
        raise DataError(f"CIFAR-10 at {path!r}: the train split has no images")
    want = common[0][0]
    for split, these in sizes.items():
        odd = [i for i, size in enumerate(these) if size != want]
        if odd:
            (w, h), (ww, wh) = these[odd[0]], want
            raise DataError(
                f"CIFAR-10 at {path!r}: {split} image {odd[0]} ({_image_file(ds, split, columns[split], odd[0], path)})"
                f" is {w} x {h} pixels ({w * h:,} tokens), but the training images are {ww} x {wh} ({ww * wh:,} "
                f"tokens); every image must be one size ({len(odd):,} of {split}'s {len(these):,} images are not): "
                "resize or remove them")


@TASKS.register("image", ImageConfig)
class Image(Task):
    """Image: pixel-intensity sequences, 10 classes (LRA uses grayscale CIFAR-10)."""

    cfg: ImageConfig
    data_version = 2  # 2: CIFAR-10's grayscale truncated as TF's, no longer rounded
    zero_token = 1  # a black pixel (intensity 0 + 1)

    @classmethod
    def tiny_params(cls, folder: Path) -> dict[str, Any]:
        """20 train and 5 test 32 x 32 RGB images of random pixels in CIFAR-10's hub layout
        (``plain_text/{train,test}-00000-of-00001.parquet``, columns ``img``, ``label``)."""
        import datasets  # with Pillow: only this test set-up writes CIFAR-like files
        from PIL import Image as PILImage

        rng = np.random.default_rng(0)
        features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
        folder = Path(folder) / "cifar10"
        (folder / "plain_text").mkdir(parents=True, exist_ok=True)
        for split, n in (("train", 20), ("test", 5)):
            images = [PILImage.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
            datasets.Dataset.from_dict({"img": images, "label": [i % 10 for i in range(n)]}, features=features
                                       ).to_parquet(str(folder / "plain_text" / f"{split}-00000-of-00001.parquet"))
        return {"source": "cifar10", "path": str(folder)}

    def missing_sources(self) -> list[str]:
        if self.cfg.source == "digits":
            return []
        return missing_source(self.cfg.path, what="CIFAR-10", config_key="tasks.image.data",
                              default_hub_id="uoft-cs/cifar10")

    def prepare(self, workdir: Path) -> PreparedData:
        cfg = self.cfg
        if cfg.source == "digits":
            images, labels, max_value = _digits()
            order = np.random.default_rng(cfg.data_seed).permutation(len(labels["all"]))
            n = len(order)
            n_test, n_val = round(n * cfg.test_fraction), round(n * cfg.val_fraction)
            parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
            x = {s: images["all"][idx] for s, idx in parts.items()}
            y = {s: labels["all"][idx] for s, idx in parts.items()}
            source = "scikit-learn digits (8x8, UCI optical recognition test set)"
        else:
            images, labels, max_value = _cifar10(cfg.path)
            n_train = len(labels["train"])
            cut = n_train - round(n_train * cfg.val_fraction)  # LRA: train[:90%], train[90%:]
            x = {"train": images["train"][:cut], "val": images["train"][cut:], "test": images["test"]}
            y = {"train": labels["train"][:cut], "val": labels["train"][cut:], "test": labels["test"]}
            source = f"CIFAR-10 grayscale from {cfg.path}"
        if cfg.max_train:
            x["train"], y["train"] = x["train"][: cfg.max_train], y["train"][: cfg.max_train]
        splits = {s: {"tokens": torch.from_numpy(x[s] + 1), "labels": torch.from_numpy(y[s])}
                  for s in ("train", "val", "test")}
        return PreparedData(splits=splits, seq_len=int(x["train"].shape[1]), vocab_size=max_value + 2,
                            num_classes=10, label_names=[str(i) for i in range(10)], source=source)
