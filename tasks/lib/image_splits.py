"""Labels, splits and the description of an image data set read from files or ``datasets`` (the image task's
``files`` and ``hf`` sources; ``digits`` carves its splits here too).

- ``label_ids``: the class ids 0..K-1 and the class names. String labels (class folder names included) are
  given ids by their position in ``label_names``, or in sorted order without it; integer labels keep their
  values, named by ``label_names``, else by the source's own class names (a ``datasets`` ClassLabel), else by
  their numbers.
- ``carve``: the splits a source lacks, carved from its training images by a seeded permutation (test first,
  then validation; the rest is for training), as the digits always were.
- ``describe``: the data set as the run record names it (``PreparedData.source``): where it was read, the
  image size and channels, the classes with their names and the images per split.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from attnbench.tasks.base import DataError

#: class names a description lists before it says how many more there are
SHOWN_NAMES = 10


def label_ids(raw: Mapping[str, Sequence[Any]], label_names: Sequence[str], class_names: Sequence[str],
              where: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per split the labels ``raw`` as int64 ids, and the class names (by id); ``class_names`` are the
    source's own names of integer labels ([] if none). A label that fits no class is a DataError naming
    ``where``."""
    values = [v for vs in raw.values() for v in vs]
    if values and all(isinstance(v, str) for v in values):
        names = list(label_names) or sorted(set(values))
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            shown = ", ".join(map(repr, unknown[:SHOWN_NAMES])) + (
                f" and {len(unknown) - SHOWN_NAMES:,} more" if len(unknown) > SHOWN_NAMES else "")
            raise DataError(f"{where}: label(s) {shown} are not in label_names {names}; name every class there, "
                            "or leave label_names empty (the classes in sorted order)")
        return {s: np.array([index[v] for v in vs], dtype=np.int64) for s, vs in raw.items()}, names
    integral = [isinstance(v, (bool, int, np.integer))
                or (isinstance(v, (float, np.floating)) and float(v).is_integer()) for v in values]
    if not all(integral):
        odd = values[integral.index(False)]
        raise DataError(f"{where}: the labels must be all integers or all strings; found {odd!r} "
                        f"({type(odd).__name__})")
    ids = {s: np.array([int(v) for v in vs], dtype=np.int64) for s, vs in raw.items()}
    top = max((int(v.max()) for v in ids.values() if len(v)), default=-1)
    names = list(label_names) or list(class_names) or [str(i) for i in range(top + 1)]
    bad = sorted({int(x) for v in ids.values() for x in v if not 0 <= x < len(names)})
    if bad:
        raise DataError(f"{where}: label ids {bad[:SHOWN_NAMES]} are outside 0..{len(names) - 1} for the "
                        f"{len(names)} classes {'of label_names' if label_names else 'named'}; integer labels must "
                        "be class ids 0..K-1 (or give class names as strings)")
    return ids, names


def carve(n: int, fractions: Mapping[str, float], seed: int) -> dict[str, np.ndarray]:
    """Indices into ``n`` training images: each split of ``fractions`` (split -> share, in its order: test
    before val) ``round(n * share)`` images of a seeded permutation, and train the rest, in that order."""
    order = np.random.default_rng(seed).permutation(n)
    parts, start = {}, 0
    for split, fraction in fractions.items():
        k = round(n * fraction)
        parts[split], start = order[start:start + k], start + k
    parts["train"] = order[start:]
    return parts


def fraction_problems(n: int, fractions: Mapping[str, float], key: Any, of: str) -> list[str]:
    """A line for each share of ``fractions`` (field name -> share) that carves no image of ``n`` (``of``: whose
    images, e.g. "the digits'"); training evaluates on every split."""
    splits = {"val_fraction": "validation", "test_fraction": "testing"}
    return [f"{key(name)} is {fraction:g}; of {of} {n:,} images that is round({n} * {fraction:g}) = 0 for "
            f"{splits[name]}, and training evaluates on that split, so it must be above 0.5 / {n} ({0.5 / n:.6f})"
            for name, fraction in fractions.items() if round(n * fraction) < 1]


def names_text(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES:,} more" if len(names) > SHOWN_NAMES else "")


def describe(origin: str, size: tuple[int, int], channels: str, names: Sequence[str], sizes: Mapping[str, int],
             notes: Sequence[str] = ()) -> str:
    """``origin``: W x H pixels, channels; K classes (names); train n, val n, test n (notes). ``size`` is (H, W)."""
    h, w = size
    counts = ", ".join(f"{s} {sizes[s]:,}" for s in ("train", "val", "test"))
    return (f"{origin}: {w} x {h} pixels ({h * w:,} tokens), {channels}; {len(names)} classes ({names_text(names)}); "
            f"{counts}" + (f" ({'; '.join(notes)})" if notes else ""))
