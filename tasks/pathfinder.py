"""Pathfinder (LRA): are the two markers in the image joined by one dashed path?

The image is read pixel by pixel as a sequence: a R x R grayscale image becomes R*R tokens
(intensity + 1; 0 is padding; 257 ids), 2 classes: 0 = disconnected, 1 = connected (the
two markers sit at the two ends of the same path). LRA's Pathfinder is 32 x 32
(1,024 tokens); Path-X (``tasks/pathx.py``) is the same task at 128 x 128 (16,384 tokens).

Sources, both read by the same reader of the LRA release layout:

- ``files``: ``<path>/pathfinder<R>/<difficulty>/`` from ``lra_release.gz``, holding
  ``imgs/<k>/sample_<i>.png`` and ``metadata/<k>.npy``. Despite the name, a metadata file
  is plain text, one whitespace-separated row per image: ``imgs/<k> sample_<i>.png index
  label ...``; the label is field 3. Metadata files are read in numeric order of ``k`` and
  their rows sorted by (folder, file) in numeric order, so the result does not depend on
  the file system; ``max_examples`` keeps the first rows of that order. Empty (0-byte) or
  undecodable PNGs and all-black images are skipped and counted in
  ``PreparedData.source`` (the release has one: ``pathfinder32/curv_baseline/imgs/0/
  sample_172.png``). The remaining images are split 80/10/10 (``val_fraction``,
  ``test_fraction``) by a permutation seeded with ``data_seed``, as LRA's
  160,000 / 20,000 / 20,000.
- ``generate`` (default, offline): ``n_train + n_val + n_test`` images drawn by the seeded
  generator (``tasks/lib/pathfinder_draw.py``) are written into the work folder in the release
  layout and read back through the reader above, then split by the same function with
  fractions ``n_val / n`` and ``n_test / n`` (so the sizes are exactly ``n_val`` and
  ``n_test``). ``val_fraction`` and ``test_fraction`` apply to ``files`` only; the
  generator's shape settings apply to ``generate`` only, 0 (-1 for ``n_distractors``)
  meaning scaled to the resolution and the difficulty.
"""
from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from attnbench.harness.core.registry import param
from attnbench.tasks.base import SPLITS, TASKS, DataError, PreparedData, Task, build_task, lra_release_hint
from attnbench.tasks.lib.pathfinder_draw import write_release
from attnbench.tasks.lib.pathfinder_settings import (
    DIFFICULTY_LENGTH,
    DrawSettings,
    cannot_fit,
    draw_settings,
    out_of_range,
    resolved_settings,
)

Difficulty = Literal["curv_baseline", "curv_contour_length_9", "curv_contour_length_14"]
VOCAB_SIZE = 257  # pixel intensity 0-255, + 1; 0 is padding
LABEL_NAMES = ["disconnected", "connected"]
assert set(get_args(Difficulty)) == set(DIFFICULTY_LENGTH)  # one list of difficulties
def download_hint(task: str, resolution: int) -> str:
    return lra_release_hint(f"lra_release/lra_release/pathfinder{resolution}/", f"tasks.{task}.data.path",
                            point_at="the folder holding it (lra_release/lra_release)") + ", or use source: generate"


#: the most generated images per split: they are drawn and held in memory by one prepare job
#: (LRA's release has 160,000 training images); more is a typo, not a data set
MAX_EXAMPLES = 10_000_000
_COUNT_HELP = f" (at most {MAX_EXAMPLES:,}: drawn in memory by one job)"


@dataclass(frozen=True)
class PathfinderConfig:
    """Pathfinder images as pixel-intensity token sequences: generated, or the LRA release files."""

    source: Literal["generate", "files"] = param("generate", "generate with the seeded generator (offline), or read "
                                                 "the LRA release PNGs from `path`")
    path: str = param("", "files only: the folder holding pathfinder{resolution}/ (lra_release/lra_release in the "
                      "LRA archive)")
    resolution: int = param(32, "image side in pixels (LRA: 32 for Pathfinder, 128 for Path-X); seq_len = resolution^2",
                            minimum=8)
    difficulty: Difficulty = param("curv_contour_length_14", "release folder (easy, intermediate, hard = LRA's "
                                   "choice); generate: sets the path length (6, 9 or 14 dashes) unless path_length "
                                   "is given")
    max_examples: int = param(0, "read at most this many metadata rows, in sorted order, before splitting (0 = all); "
                              "generate: the first max_examples of the n_train + n_val + n_test images, split in "
                              "the same proportions, each split keeping at least one", minimum=0)
    val_fraction: float = param(0.1, "files only: share of the images for validation (LRA: 0.1); with test_fraction "
                                "below 1 in all, the rest is for training", exclusiveMinimum=0.0, maximum=0.5)
    test_fraction: float = param(0.1, "files only: share of the images for testing (LRA: 0.1); with val_fraction "
                                 "below 1 in all, the rest is for training", exclusiveMinimum=0.0, maximum=0.5)
    data_seed: int = param(0, "seed of the split permutation and of the generator (the training seed does not "
                           "change the data)")
    n_train: int = param(2_000, "generate only: training images (LRA's files: 160,000)" + _COUNT_HELP, minimum=1,
                         maximum=MAX_EXAMPLES)
    n_val: int = param(250, "generate only: validation images (at least 1: training evaluates on them)" + _COUNT_HELP,
                       minimum=1, maximum=MAX_EXAMPLES)
    n_test: int = param(500, "generate only: test images" + _COUNT_HELP, minimum=1, maximum=MAX_EXAMPLES)
    path_length: int = param(0, "generate only: dashes per target path (0 = from difficulty: 6, 9, 14); two target "
                             "paths and their four markers must fit inside the image's 1-pixel border", minimum=0)
    dash_length: int = param(0, "generate only: pixels per dash along its axis (0 = max(2, round(resolution/16)))",
                             minimum=0)
    gap: int = param(0, "generate only: background pixels between consecutive dashes; distinct paths stay farther "
                     "apart (0 = max(1, round(resolution/64)))", minimum=0)
    n_distractors: int = param(-1, "generate only: distractor paths drawn if they fit (-1 = round(5*resolution/32))",
                               minimum=-1)
    distractor_length: int = param(0, "generate only: dashes per distractor path (0 = max(2, path_length // 3))",
                                   minimum=0)
    marker_size: int = param(0, "generate only: side of the square markers, odd, at least 3 "
                             "(0 = 2*max(1, round(0.75*resolution/32))+1: 3 at 32, 7 at 128); marker_size + gap + "
                             "dash_length must be at most resolution - 2 (a marker, a gap and a dash in a row)",
                             minimum=0)
    max_turn: float = param(45.0, "generate only: largest change of direction between two dashes, degrees, in whole "
                            "steps of 5 (below 2.5: straight paths, which must fit across the image)",
                            minimum=0.0, maximum=90.0)

    def problems(self, key: Callable[[str], str] = repr) -> list[str]:
        """Settings that cannot give three non-empty splits, or (generate) images the drawing cannot
        make, one line each; ``key`` names a field in the message (the config check passes one giving
        its full key). The drawing's own range check (``out_of_range``) and its fit bounds
        (``cannot_fit``) are said here, before anything is drawn."""
        if self.source == "files":
            total = self.val_fraction + self.test_fraction
            if total >= 1:
                return [f"{key('val_fraction')} is {self.val_fraction:g} and {key('test_fraction')} is "
                        f"{self.test_fraction:g}; together they take a share of {total:g} of the images, which "
                        "leaves none for training, so they must sum below 1"]
            return []
        values = resolved_settings(self.resolution, self.difficulty, path_length=self.path_length,
                                   dash_length=self.dash_length, gap=self.gap, n_distractors=self.n_distractors,
                                   distractor_length=self.distractor_length, marker_size=self.marker_size,
                                   max_turn=self.max_turn)

        def given(name: str) -> str:
            value, resolved = getattr(self, name, values[name]), values[name]
            return f"{key(name)} is {value}" + (f" (automatic: {resolved})" if value != resolved else "")

        problems = [f"{given(name)}; {allowed}" for name, allowed in out_of_range(values)]
        problems = problems or [f"{given(name)}: {why}" for name, why in cannot_fit(DrawSettings(**values))]
        n = self.n_train + self.n_val + self.n_test
        used = min(n, self.max_examples) if self.max_examples else n
        sizes = split_sizes(used, self.n_val / n, self.n_test / n)
        empty = [{"train": "training", "val": "validation"}.get(s, s) for s in SPLITS if sizes[s] < 1]
        if empty and used < n:
            problems.append(f"{key('max_examples')} is {self.max_examples}: of the {n} images (n_train + n_val + "
                            f"n_test) only the first {used} are drawn, split {sizes['train']} / {sizes['val']} / "
                            f"{sizes['test']} in the same proportions, which leaves the {' and '.join(empty)} "
                            f"split{'s' * (len(empty) > 1)} empty; raise max_examples or set it to 0 (all)")
        return problems


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """How many of ``n`` images ``split_indices`` puts in each split: test ``round(n * test_fraction)``,
    val ``round(n * val_fraction)``, train the rest (negative: they do not fit)."""
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    return {"train": n - n_test - n_val, "val": n_val, "test": n_test}


@dataclass
class ReleaseImages:
    """Images read from a release folder, in sorted metadata order."""

    images: np.ndarray  # (n, R, R) uint8
    labels: np.ndarray  # (n,) int64
    names: list[str]    # "imgs/<k>/sample_<i>.png" per image
    skipped: dict[str, list[str]]  # reason -> names: "empty file", "unreadable", "all black"
    rows: int           # metadata rows read

    def skipped_summary(self) -> str:
        n = sum(len(v) for v in self.skipped.values())
        parts = ", ".join(f"{len(v)} {reason}" for reason, v in self.skipped.items() if v)
        return f"{n} skipped" + (f" ({parts})" if parts else "")


def _natural_key(text: str) -> tuple[int | str, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def release_folder(root: Path, resolution: int, difficulty: str) -> Path:
    return Path(root) / f"pathfinder{resolution}" / difficulty


def read_release(folder: Path, resolution: int, max_examples: int = 0, task: str = "pathfinder") -> ReleaseImages:
    """Read ``folder`` (``.../pathfinder<R>/<difficulty>``): its metadata rows, then each
    row's PNG, skipping (and naming) empty, undecodable and all-black images."""
    from PIL import Image, UnidentifiedImageError  # Pillow: imported only where PNGs are read

    folder = Path(folder)
    meta_dir = folder / "metadata"
    if not meta_dir.is_dir():
        hint = ""
        one_level_up = folder.parent.parent / folder.name / "metadata"  # `path` given as pathfinder<R>/ itself
        if one_level_up.is_dir():
            hint = (f" ({one_level_up} exists: `path` must be the folder that holds pathfinder{resolution}/, "
                    f"not pathfinder{resolution}/ itself)")
        raise DataError(f"Pathfinder metadata folder {meta_dir} is missing{hint}; "
                        + download_hint(task, resolution))
    meta_files = sorted((p for p in meta_dir.iterdir() if p.suffix == ".npy"), key=lambda p: _natural_key(p.name))
    if not meta_files:
        raise DataError(f"Pathfinder metadata folder {meta_dir} holds no <k>.npy files; "
                        + download_hint(task, resolution))
    rows: list[tuple[str, str, int]] = []
    for meta in meta_files:
        file_rows = []
        for lineno, line in enumerate(meta.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4 or fields[3] not in ("0", "1"):
                raise DataError(f"{meta}:{lineno}: expected 'imgs/<k> sample_<i>.png <index> <label 0/1> ...', "
                                f"found {line.strip()[:120]!r}")
            file_rows.append((fields[0], fields[1], int(fields[3])))
        rows.extend(sorted(file_rows, key=lambda r: (_natural_key(r[0]), _natural_key(r[1]))))
        if max_examples and len(rows) >= max_examples:
            break
    if max_examples:
        rows = rows[:max_examples]
    side = resolution
    images = np.empty((len(rows), side, side), dtype=np.uint8)
    labels: list[int] = []
    names: list[str] = []
    skipped: dict[str, list[str]] = {"empty file": [], "unreadable": [], "all black": []}
    for subdir, filename, label in rows:
        name = f"{subdir}/{filename}"
        path = folder / subdir / filename
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise DataError(f"Pathfinder image {path} is listed in {meta_dir} but missing; "
                            "the release is incompletely unpacked? " + download_hint(task, resolution)) from None
        if size == 0:
            skipped["empty file"].append(name)
            continue
        try:
            with Image.open(path) as im:
                pixels = np.asarray(im if im.mode == "L" else im.convert("L"))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            skipped["unreadable"].append(name)
            continue
        if pixels.shape != (side, side):
            raise DataError(f"Pathfinder image {path} is {pixels.shape[1]}x{pixels.shape[0]} pixels; "
                            f"expected {side}x{side} (resolution={resolution}; folder pathfinder{resolution})")
        if not pixels.any():
            skipped["all black"].append(name)
            continue
        images[len(labels)] = pixels
        labels.append(label)
        names.append(name)
    return ReleaseImages(images=images[:len(labels)], labels=np.asarray(labels, dtype=np.int64), names=names,
                         skipped=skipped, rows=len(rows))


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Indices of train / val / test: a seeded permutation of ``range(n)`` cut into
    test (``round(n * test_fraction)``), val (``round(n * val_fraction)``) and the rest;
    each split's indices ascending."""
    order = np.random.default_rng(seed).permutation(n)
    sizes = split_sizes(n, val_fraction, test_fraction)
    n_test, n_val = sizes["test"], sizes["val"]
    if n_test + n_val > n:
        raise DataError(f"Pathfinder: {n} images cannot give {n_val} validation and {n_test} test images")
    parts = {"train": order[n_test + n_val:], "val": order[n_test:n_test + n_val], "test": order[:n_test]}
    return {s: np.sort(parts[s]) for s in SPLITS}


@TASKS.register("pathfinder", PathfinderConfig)
class Pathfinder(Task):
    """Pathfinder: are two markers joined by a dashed path? Pixel sequences, 2 classes (LRA)."""

    cfg: PathfinderConfig
    length_param = "resolution"

    zero_token = 1  # a black pixel (intensity 0 + 1): most of a Pathfinder image
    spt_mask_rate = 0.5  # Amos et al. 2024's rate for the pixel tasks (Path-X inherits it)

    @classmethod
    def tiny_params(cls, folder: Path) -> dict[str, Any]:
        """Ten generated images (at the task's default resolution) written in the release layout
        (``pathfinder<R>/<difficulty>/{imgs,metadata}``) and read as files: 6 / 2 / 2."""
        task = build_task(cls.registered_name, {"n_train": 6, "n_val": 2, "n_test": 2})
        assert isinstance(task, Pathfinder)  # registered_name names this class (or a subclass registered anew)
        root = task.write_generated(Path(folder))
        return {"source": "files", "path": str(root), "val_fraction": 0.2, "test_fraction": 0.2}

    def generator_settings(self) -> DrawSettings:
        """The generator's settings, automatic values resolved."""
        c = self.cfg
        return draw_settings(c.resolution, c.difficulty, path_length=c.path_length, dash_length=c.dash_length,
                             gap=c.gap, n_distractors=c.n_distractors, distractor_length=c.distractor_length,
                             marker_size=c.marker_size, max_turn=c.max_turn)

    def write_generated(self, workdir: Path) -> Path:
        """Generate the images into ``workdir`` in the release layout; returns the root
        (the folder holding ``pathfinder<R>/``)."""
        c = self.cfg
        n = c.n_train + c.n_val + c.n_test
        if c.max_examples:
            n = min(n, c.max_examples)  # the first rows are the same as those of the full set
        root = Path(workdir)
        write_release(release_folder(root, c.resolution, c.difficulty), n, self.generator_settings(), c.data_seed)
        return root

    def missing_sources(self) -> list[str]:
        c = self.cfg
        if c.source == "generate":
            return []
        hint = download_hint(self.name, c.resolution)
        if not c.path:
            return [f"{self.name} source 'files' needs `path` (tasks.{self.name}.data.path); {hint}"]
        meta = release_folder(Path(c.path), c.resolution, c.difficulty) / "metadata"
        return [] if meta.is_dir() else [f"{meta} does not exist: {hint}"]

    def prepare(self, workdir: Path) -> PreparedData:
        c = self.cfg
        if c.source == "generate":
            # the images are an intermediate: drawn into a folder of this process's own (two
            # processes preparing the same data do not clobber each other), read back, removed
            Path(workdir).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=workdir, prefix="generated.") as tmp:
                n = c.n_train + c.n_val + c.n_test
                try:
                    root = self.write_generated(Path(tmp))
                except ValueError as exc:  # the shapes asked for do not fit the resolution
                    raise DataError(f"tasks.{self.name}.data: {exc}") from None
                return self.read_and_split(root, c.n_val / n, c.n_test / n)
        if not c.path:
            raise DataError(f"{self.name} source 'files' needs `path`: the folder holding "
                            f"pathfinder{c.resolution}/{c.difficulty}/metadata; "
                            + download_hint(self.name, c.resolution))
        return self.read_and_split(Path(c.path), c.val_fraction, c.test_fraction)

    def read_and_split(self, root: Path, val_fraction: float, test_fraction: float) -> PreparedData:
        """Read the release layout under ``root`` and split it."""
        c = self.cfg
        folder = release_folder(root, c.resolution, c.difficulty)
        data = read_release(folder, c.resolution, c.max_examples, task=self.name)
        if not len(data.labels):
            raise DataError(f"no usable Pathfinder images in {folder} ({data.rows} metadata rows, "
                            f"{data.skipped_summary()})")
        parts = split_indices(len(data.labels), val_fraction, test_fraction, c.data_seed)
        tokens = data.images.reshape(len(data.labels), -1)
        splits = {}
        for s, idx in parts.items():
            ids = tokens[idx].astype(np.int64)
            ids += 1  # in place: Path-X images are 16,384 tokens each
            splits[s] = {"tokens": torch.from_numpy(ids), "labels": torch.from_numpy(data.labels[idx])}
        if c.source == "generate":
            what = (f"generated (seed {c.data_seed}, {self.generator_settings()}), written as LRA release files "
                    "and read back")
        else:
            what = f"LRA release files in {folder}"
        source = f"{what}: {len(data.labels)} images of {data.rows} metadata rows, {data.skipped_summary()}"
        return PreparedData(splits=splits, seq_len=c.resolution ** 2, vocab_size=VOCAB_SIZE, num_classes=2,
                            label_names=list(LABEL_NAMES), source=source)

