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
- ``files``: local images (``tasks.lib.image_files``): a CSV of pixels (a label column and one column
  per pixel, grayscale or RGB with ``channels: 3``), an ``.npz`` (``images``, ``labels``) or a folder of
  class sub-folders of image files; any size, any number of classes; a separate test set
  (``test_path``) or one carved with ``test_fraction``; validation carved with ``val_fraction``.
- ``hf``: any image set through ``datasets`` (a hub id or a local folder), with its own image and
  label columns, class names from its ClassLabel feature; its validation and test splits where it has
  them, else carved as for ``files``.

RGB images are converted to grayscale as for CIFAR-10, grayscale ones kept as they are; classes are
named by ``label_names``, a class folder's name or the data set's own names (``tasks.lib.image_splits``),
and the data's description (the record's ``data.source``) says where it was read, the image size and
channels, the classes and the images per split. ``check-config`` reads the start of local files
(``ImageConfig.problems``, ``tasks.lib.image_checks``) and refuses what could not be prepared.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from attnbench.harness.core.registry import param
from attnbench.tasks.base import TASKS, DataError, PreparedData, Task
from attnbench.tasks.lib.hf_images import check_sizes, decode, read_hf
from attnbench.tasks.lib.hf_source import load_source, missing_source
from attnbench.tasks.lib.image_checks import FORMS, source_kind, source_problems
from attnbench.tasks.lib.image_files import LUMA as LUMA
from attnbench.tasks.lib.image_files import channels_text, read_images
from attnbench.tasks.lib.image_files import to_grayscale as to_grayscale
from attnbench.tasks.lib.image_splits import carve, describe, fraction_problems, label_ids

#: images in scikit-learn's digits (``load_digits``), split by ``test_fraction`` and ``val_fraction``
DIGITS_IMAGES = 1797
CIFAR10_HUB_ID = "uoft-cs/cifar10"
#: the settings added with ``files`` and ``hf`` (``added_later``: hashed only where set, so that the data and
#: records of digits and cifar10 configs keep their keys)
ADDED = ("test_path", "label_column", "image_column", "channels", "label_names")
#: the sources that read each of ``ADDED``
READ_BY = {"test_path": ("files",), "label_column": ("files", "hf"), "image_column": ("hf",), "channels": ("files",),
           "label_names": ("files", "hf")}
#: 8-bit pixels: intensities 0-255, tokens 1-256, 0 the padding
MAX_PIXEL = 255


@dataclass(frozen=True)
class ImageConfig:
    """Images as pixel-intensity token sequences."""

    source: Literal["digits", "cifar10", "files", "hf"] = param(
        "digits", "digits: scikit-learn's 8x8 digits (offline); cifar10: CIFAR-10 via `datasets`, LRA's way; files: "
        "local images (a CSV of pixels, an .npz, or class sub-folders); hf: any image set via `datasets`")
    path: str = param(CIFAR10_HUB_ID, "cifar10 and hf: a Hugging Face dataset id, or a local folder with its files; "
                      "files: a .csv of pixels, an .npz, or a folder with one sub-folder of images per class")
    val_fraction: float = param(0.1, "share of the training split held out for validation (LRA: 0.1); digits: "
                                "at least one of its 1,797 images (above 0.5 / 1797)", exclusiveMinimum=0.0,
                                maximum=0.5)
    test_fraction: float = param(0.2, "digits, files without test_path and hf without a test split: share held out "
                                 "for testing; digits: at least one of its 1,797 images (above 0.5 / 1797)",
                                 exclusiveMinimum=0.0, maximum=0.5)
    max_train: int = param(0, "use at most this many training images (0 = all)", minimum=0)
    data_seed: int = param(0, "seed of the carved splits (digits; files and hf where they carve)")
    test_path: str = param("", "files only: a separate test set, of the same form as path (empty: test carved from "
                           "path with test_fraction)", added_later=True)
    label_column: str = param("label", "files (a CSV) and hf: the column holding the class (integer ids 0..K-1 or "
                              "names)", added_later=True)
    image_column: str = param("", "hf only: the column holding the images (empty: 'img' or 'image')", added_later=True)
    channels: Literal[1, 3] = param(1, "files, a CSV only: 1, rows of side x side grayscale pixels; 3, rows of side "
                                    "x side x 3 RGB values (each pixel's r, g, b in turn), converted to grayscale as "
                                    "LRA does", added_later=True)
    label_names: tuple[str, ...] = param((), "files and hf: class names in id order, each once; string labels (and "
                                         "class folders) map to their position here (empty: string labels in sorted "
                                         "order, integer labels named by the data set's names or their numbers)",
                                         added_later=True)

    def problems(self, key: Callable[[str], str] = repr) -> list[str]:
        """Settings that cannot give train, val and test splits, one line each; ``key`` names a field in the
        message (the config check passes one giving its full key). A setting the source does not read; for the
        digits, fractions that leave a split empty; for local files (``files``), what the start of each file or
        folder shows that preparing it would refuse (``image_checks``: nothing is read whole), and fractions
        that carve no image where the number of images is known. CIFAR-10's and a hub set's size and columns
        are known only when they are read."""
        lines = [f"{key(name)} is {getattr(self, name)!r}, but source {self.source!r} does not read it (a setting of "
                 f"source {' and '.join(READ_BY[name])}): remove it, or set the source" for name in ADDED
                 if _set(self, name) and self.source not in READ_BY[name]]
        if self.source == "digits":
            lines += fraction_problems(DIGITS_IMAGES, {"val_fraction": self.val_fraction,
                                                       "test_fraction": self.test_fraction}, key, "the digits'")
        repeated = sorted({n for n in self.label_names if self.label_names.count(n) > 1})
        if repeated:
            lines.append(f"{key('label_names')} is {list(self.label_names)}: {', '.join(map(repr, repeated))} more "
                         "than once; each class name once (its position is the label id)")
        if self.source != "files":
            return lines
        path = Path(self.path).expanduser()
        if self.path == CIFAR10_HUB_ID:
            lines.append(f"{key('path')} is {CIFAR10_HUB_ID!r}, the hub id that source cifar10 reads; source files "
                         f"reads local data: set it to {FORMS}")
        if _set(self, "channels") and path.exists() and source_kind(path) != "csv":
            lines.append(f"{key('channels')} is {self.channels}, but {path} is no CSV: an .npz's or an image file's "
                         "own shape says its channels; remove it")
        count = None
        for name in ("path", "test_path"):
            if getattr(self, name):
                found, n = source_problems(Path(getattr(self, name)), key(name), channels=self.channels,
                                           label_column=self.label_column)
                lines += found
                count = n if name == "path" else count
        if count and not lines:
            carved = {"val_fraction": self.val_fraction} | ({} if self.test_path else
                                                            {"test_fraction": self.test_fraction})
            lines += fraction_problems(count, carved, key, f"{path}'s")
        return lines


def _set(cfg: ImageConfig, name: str) -> bool:
    """Whether setting ``name`` of ``cfg`` is other than its default."""
    return bool(getattr(cfg, name) != _DEFAULTS[name])


_DEFAULTS = {f.name: f.default for f in fields(ImageConfig)}


def _cifar_pixels(image: Any, where: str) -> tuple[np.ndarray, int]:
    return to_grayscale(np.asarray(image.convert("RGB"))), 3


def _cifar10(path: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    # a hub id, or a local folder of its files; offline mode honoured, a DataError with the way out
    ds, _ = load_source(str(path), what="CIFAR-10", config_key="tasks.image.data.path",
                        expected="an 'img' (or 'image') and a 'label' column", default_hub_id=CIFAR10_HUB_ID,
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
        pixels[split], sizes[split], _ = decode(part, col, _cifar_pixels, f"CIFAR-10 at {path!r}, {split}")
        columns[split] = col
    check_sizes(sizes, ds, columns, path)
    images = {s: np.stack(p).astype(np.int64) for s, p in pixels.items()}
    labels = {s: np.asarray(ds[s]["label"], dtype=np.int64) for s in pixels}
    return images, labels, MAX_PIXEL


@dataclass
class _Images:
    """Grayscale pixel rows and label ids per split (train, val, test), the class names, and a description."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    names: list[str]
    source: str


@TASKS.register("image", ImageConfig)
class Image(Task):
    """Image: pixel-intensity sequences (LRA uses grayscale CIFAR-10); digits, CIFAR-10, local files, any image set."""

    cfg: ImageConfig
    data_version = 2  # 2: CIFAR-10's grayscale truncated as TF's, no longer rounded
    zero_token = 1  # a black pixel (intensity 0 + 1)
    spt_mask_rate = 0.5  # Amos et al. 2024's rate for the pixel tasks

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

    def key(self, name: str) -> str:
        """A data setting's config key, as messages name it."""
        return f"'tasks.{self.name}.data.{name}'"

    def missing_sources(self) -> list[str]:
        cfg = self.cfg
        if cfg.source == "digits":
            return []
        if cfg.source == "files":
            return [f"the image data: {Path(value).expanduser()} does not exist ({self.key(name)}); expected {FORMS}"
                    for name, value in (("path", cfg.path), ("test_path", cfg.test_path))
                    if value and not Path(value).expanduser().exists()]
        cifar = cfg.source == "cifar10"
        return missing_source(cfg.path, what="CIFAR-10" if cifar else "the image data",
                              config_key=f"tasks.{self.name}.data", default_hub_id=CIFAR10_HUB_ID if cifar else "")

    def prepare(self, workdir: Path) -> PreparedData:
        cfg = self.cfg
        if cfg.source in ("files", "hf"):
            data = self._files() if cfg.source == "files" else self._hf()
            x, y, names, source, max_value = data.x, data.y, data.names, data.source, MAX_PIXEL
        elif cfg.source == "digits":
            images, labels, max_value = _digits()
            parts = carve(len(labels), {"test": cfg.test_fraction, "val": cfg.val_fraction}, cfg.data_seed)
            x = {s: images[idx] for s, idx in parts.items()}
            y = {s: labels[idx] for s, idx in parts.items()}
            names, source = [str(i) for i in range(10)], "scikit-learn digits (8x8, UCI optical recognition test set)"
        else:
            images_of, labels_of, max_value = _cifar10(cfg.path)
            n_train = len(labels_of["train"])
            cut = n_train - round(n_train * cfg.val_fraction)  # LRA: train[:90%], train[90%:]
            x = {"train": images_of["train"][:cut], "val": images_of["train"][cut:], "test": images_of["test"]}
            y = {"train": labels_of["train"][:cut], "val": labels_of["train"][cut:], "test": labels_of["test"]}
            names, source = [str(i) for i in range(10)], f"CIFAR-10 grayscale from {cfg.path}"
        if cfg.max_train:
            x["train"], y["train"] = x["train"][: cfg.max_train], y["train"][: cfg.max_train]
        splits = {s: {"tokens": torch.from_numpy(x[s].astype(np.int64) + 1), "labels": torch.from_numpy(y[s])}
                  for s in ("train", "val", "test")}
        return PreparedData(splits=splits, seq_len=int(x["train"].shape[1]), vocab_size=max_value + 2,
                            num_classes=len(names), label_names=names, source=source)

    def _carved(self, pixels: np.ndarray, ids: np.ndarray, fractions: dict[str, float],
                notes: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The splits of ``fractions`` carved from the training images, train the rest (``max_train`` of them)."""
        cfg = self.cfg
        parts = carve(len(ids), fractions, cfg.data_seed)
        notes += [f"{s} carved from train ({f:g}, seed {cfg.data_seed})" for s, f in fractions.items()]
        if cfg.max_train and cfg.max_train < len(parts["train"]):
            parts["train"] = parts["train"][: cfg.max_train]
            notes.append(f"train capped at {cfg.max_train:,}")
        return {s: pixels[i] for s, i in parts.items()}, {s: ids[i] for s, i in parts.items()}

    def _files(self) -> _Images:
        """Source ``files``: ``path`` (and ``test_path``), the splits it lacks carved from it."""
        cfg = self.cfg
        pool = read_images(Path(cfg.path), name=self.key("path"), channels=cfg.channels, label_column=cfg.label_column)
        test = (read_images(Path(cfg.test_path), name=self.key("test_path"), channels=cfg.channels,
                            label_column=cfg.label_column) if cfg.test_path else None)
        origin = pool.origin + (f", test from {test.origin}" if test else "")
        if test and test.size != pool.size:
            raise DataError(f"{origin}: the test images are {test.size[1]} x {test.size[0]} pixels, the training "
                            f"images {pool.size[1]} x {pool.size[0]}; every image must be one size (an image is "
                            "H * W tokens): resize one set")
        ids, names = label_ids({"train": pool.labels, **({"test": test.labels} if test else {})}, cfg.label_names,
                               [], origin)
        notes: list[str] = []
        fractions = ({} if test else {"test": cfg.test_fraction}) | {"val": cfg.val_fraction}
        x, y = self._carved(pool.pixels, ids["train"], fractions, notes)
        if test:
            x["test"], y["test"] = test.pixels, ids["test"]
        channels = pool.channels | (test.channels if test else set())
        sizes = {s: len(v) for s, v in y.items()}
        return _Images(x, y, names, describe(origin, pool.size, channels_text(channels), names, sizes, notes))

    def _hf(self) -> _Images:
        """Source ``hf``: a ``datasets`` image set; the splits it lacks carved from its training split."""
        cfg = self.cfg
        data = read_hf(cfg.path, image_column=cfg.image_column, label_column=cfg.label_column,
                       config_key=f"tasks.{self.name}.data")
        ids, names = label_ids(data.labels, cfg.label_names, data.class_names, data.origin)
        notes = list(data.notes)
        fractions = {s: f for s, f in (("test", cfg.test_fraction), ("val", cfg.val_fraction)) if s not in ids}
        x, y = self._carved(data.pixels["train"], ids["train"], fractions, notes)
        for split in ("val", "test"):
            if split in data.pixels:
                x[split], y[split] = data.pixels[split], ids[split]
        sizes = {s: len(v) for s, v in y.items()}
        return _Images(x, y, names, describe(data.origin, data.size, channels_text(data.channels), names, sizes,
                                             notes))


def _digits() -> tuple[np.ndarray, np.ndarray, int]:
    from sklearn.datasets import load_digits  # scikit-learn takes seconds to import: only when used

    d = load_digits()
    return d.data.astype(np.int64), d.target.astype(np.int64), 16
