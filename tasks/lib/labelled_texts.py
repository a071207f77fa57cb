"""Labelled texts: the train/val/test texts and label ids of a source (``load_labelled_texts``), and the
source settings the text tasks (``text``, ``textcls``) share (``TextSourceConfig``).

The source is loaded by ``hf_source.load_source`` (a hub id, a local folder, one local file, or
``data_files``). Split rules: a source's own validation split (``validation``/``valid``/``val``/``dev``) is
used when it has one, else validation is carved from train with a seeded permutation;
test is the source's test split, carved from train only when the source has none (or its
labels are hidden, as SST-2's are). Nothing is ever selected on the test split.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from attnbench.harness.core.registry import param
from attnbench.tasks.base import DataError
from attnbench.tasks.lib.hf_source import Dataset, DatasetDict, load_source

#: a source's split names -> ours; other splits (IMDb's ``unsupervised``) are left out
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}
#: values of a ``split_column`` -> our split; a boolean column is fastai's ``is_valid``
SPLIT_VALUES = {**SPLIT_NAMES, "true": "val", "false": "train"}


def our_splits(ds: DatasetDict, notes: list[str]) -> Iterator[tuple[str, str, Dataset]]:
    """(our split name, the source's, that split) for each split of ``ds`` that ``SPLIT_NAMES`` maps, the first
    of each of ours; every other split is noted in ``notes`` as not used."""
    taken: set[str] = set()
    for name in ds:
        ours = SPLIT_NAMES.get(name)
        if ours is None or ours in taken:
            notes.append(f"split {name!r} not used")
            continue
        taken.add(ours)
        yield ours, name, ds[name]

PATH_HELP = ("a Hugging Face dataset id, a local folder (splits from file names), or one local "
             ".csv/.tsv/.json/.jsonl/.parquet file (one pool: validation and test are carved from it)")


@dataclass(frozen=True)
class TextSourceConfig:
    """Where labelled texts come from and how they are split (shared by the text tasks)."""

    path: str = param("stanfordnlp/imdb", PATH_HELP)
    subset: str = param("", "hub sources: the dataset's configuration name (e.g. 'sst2' for 'nyu-mll/glue')")
    data_files: dict[str, Any] = param({}, "local files per split, e.g. {train: a.csv, test: b.csv} (a file or a "
                                       "list); when set, `path` is ignored; one split must be train unless "
                                       "split_column assigns the rows")
    text_columns: tuple[str, ...] = param(("text",), "column(s) holding the text, at least one; several are joined "
                                          "with text_separator (AG News CSV: [title, description])")
    text_separator: str = param(" ", "string put between the text columns")
    label_column: str = param("label", "column holding the label (integers, booleans or strings)")
    label_names: tuple[str, ...] = param((), "class names in id order, each once; string labels map to their "
                                         "position here (empty: string labels in sorted order, integer labels keep "
                                         "their values)")
    label_offset: int = param(0, "subtracted from integer labels, e.g. 1 for AG News CSV labels 1..4")
    split_column: str = param("", "a column assigning each row to a split (values train/validation/valid/val/dev/test, "
                              "or booleans as fastai's is_valid: True = validation); empty: the source's own splits")
    val_fraction: float = param(0.1, "share of the training rows held out for validation when the source has no "
                                "validation split; with test_fraction below 1 in all (the rest is for training)",
                                exclusiveMinimum=0.0, maximum=0.5)
    test_fraction: float = param(0.1, "share of the training rows held out for testing, only when the source has no "
                                 "(labelled) test split; with val_fraction below 1 in all (the rest is for training)",
                                 exclusiveMinimum=0.0, maximum=0.5)
    max_train: int = param(0, "use at most this many training rows, a seeded random subset (0 = all)", minimum=0)
    data_seed: int = param(0, "seed of the carved splits and of the max_train subset")
    seq_len: int = param(4096, "tokens per example: longer texts are cut, shorter ones padded", minimum=1)

    def problems(self, key: Callable[[str], str] = repr) -> list[str]:
        """Settings that cannot give labelled train, val and test splits, one line each; ``key`` (a
        function of a field name) names a field in the message: the config check passes one giving
        its full key, e.g. 'tasks.text.data.val_fraction'."""
        problems = []
        if self.val_fraction + self.test_fraction >= 1:
            problems.append(f"{key('val_fraction')} is {self.val_fraction:g} and {key('test_fraction')} is "
                            f"{self.test_fraction:g}; carved from the training rows together they leave none for "
                            "training, so they must sum below 1")
        if not self.text_columns:
            problems.append(f"{key('text_columns')} is []; name at least one column holding the text")
        repeated = sorted({name for name in self.label_names if self.label_names.count(name) > 1})
        if repeated:
            problems.append(f"{key('label_names')} is {list(self.label_names)}: {', '.join(map(repr, repeated))} "
                            "more than once; each class name once (its position is the label id)")
        for split, files in self.data_files.items():
            listed = [files] if isinstance(files, str) else files
            if not isinstance(listed, (list, tuple)) or not listed or not all(
                    isinstance(f, str) and f for f in listed):
                problems.append(f"{key(f'data_files.{split}')} is {files!r}; give a file path or a list of them")
        if self.data_files and not self.split_column and "train" not in map(SPLIT_NAMES.get, self.data_files):
            problems.append(f"{key('data_files')} has the splits {', '.join(map(str, self.data_files))} but no train; "
                            "name the training file(s) `train:` (or set split_column to assign each row a split)")
        return problems


@dataclass
class LabelledTexts:
    """Texts and integer labels per split (train, val, test), with where they came from."""

    texts: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    label_names: list[str]
    origin: str
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def describe(self) -> str:
        sizes = ", ".join(f"{s} {len(self.texts[s])}" for s in ("train", "val", "test"))
        return f"{self.origin} ({sizes}" + "".join(f"; {n}" for n in self.notes) + ")"


def _columns_of(part: Dataset, cfg: TextSourceConfig, split: str, origin: str, config_key: str) -> None:
    wanted = [*cfg.text_columns, cfg.label_column] + ([cfg.split_column] if cfg.split_column else [])
    missing = [c for c in wanted if c not in part.column_names]
    if missing:
        raise DataError(f"{origin}, split {split!r}: no column(s) {', '.join(map(repr, missing))}; "
                        f"columns found: {', '.join(part.column_names)}. Set {config_key}.text_columns / "
                        "label_column / split_column to the right names")


def _column(part: Dataset, name: str) -> list[Any]:
    """A column as a Python list (through Arrow: iterating a ``datasets`` column is ~100x slower)."""
    return cast(list[Any], part.with_format("arrow")[name].to_pylist())


def _join(part: Dataset, columns: tuple[str, ...], sep: str) -> list[str]:
    cols = [_column(part, c) for c in columns]
    if len(cols) == 1:
        return ["" if v is None else str(v) for v in cols[0]]
    return [sep.join("" if v is None else str(v) for v in row) for row in zip(*cols, strict=True)]


def _label_ids(raw: dict[str, list[Any]], cfg: TextSourceConfig, class_names: list[str] | None,
               where: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Labels as int64 ids 0..k-1 per split, and the class names."""
    values = [v for vs in raw.values() for v in vs]
    if any(v is None for v in values):
        raise DataError(f"{where}: some rows have no label in column {cfg.label_column!r}")
    if values and all(isinstance(v, str) for v in values):
        names = list(cfg.label_names) or sorted(set(values))
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise DataError(f"{where}: label(s) {', '.join(map(repr, unknown[:10]))} are not in label_names "
                            f"{names}")
        return {s: np.array([index[v] for v in vs], dtype=np.int64) for s, vs in raw.items()}, names
    if not all(isinstance(v, (bool, int, np.integer)) or (isinstance(v, float) and v.is_integer()) for v in values):
        kinds = sorted({type(v).__name__ for v in values})
        raise DataError(f"{where}: labels in column {cfg.label_column!r} must be all integers or all strings, "
                        f"found {', '.join(kinds)}")
    ids = {s: np.array([int(v) for v in vs], dtype=np.int64) - cfg.label_offset for s, vs in raw.items()}
    # a split whose labels are all negative is unlabelled (SST-2's test: -1); the caller drops it
    labelled = [v for s, v in ids.items() if len(v) and not (v < 0).all()]
    top = max((int(v.max()) for v in labelled), default=-1)
    names = list(cfg.label_names) or class_names or [str(i) for i in range(top + 1)]
    bad = sorted({int(x) for v in labelled for x in v if not 0 <= x < len(names)})
    if bad:
        raise DataError(f"{where}: label ids {bad[:10]} (after label_offset {cfg.label_offset}) are outside "
                        f"0..{len(names) - 1} for {len(names)} classes; set label_offset or label_names")
    return ids, names


def load_labelled_texts(cfg: TextSourceConfig, task: str, default_hub_id: str = "") -> LabelledTexts:
    """The train/val/test texts and label ids of ``cfg``'s source, split by the rules above;
    ``task`` names the config entry in messages, ``default_hub_id`` the hub copy to suggest."""
    config_key = f"tasks.{task}.data"
    expected = (f"text column(s) {', '.join(map(repr, cfg.text_columns))} and label column {cfg.label_column!r}"
                + (f" and split column {cfg.split_column!r}" if cfg.split_column else ""))
    ds, origin = load_source(cfg.path, what=f"the {task} data", config_key=f"{config_key}.path", expected=expected,
                             default_hub_id=default_hub_id,
                             subset=cfg.subset, data_files=cfg.data_files or None)
    notes: list[str] = []
    texts: dict[str, list[str]] = {}
    raw: dict[str, list[Any]] = {}
    class_names: list[str] | None = None
    if cfg.split_column:
        for name in ds:
            _columns_of(ds[name], cfg, name, origin, config_key)
        for name in ds:
            part = ds[name]
            for text, label, value in zip(_join(part, cfg.text_columns, cfg.text_separator),
                                          _column(part, cfg.label_column), _column(part, cfg.split_column),
                                          strict=True):
                key = str(value).strip().lower()
                if key not in SPLIT_VALUES:
                    raise DataError(f"{origin}: split column {cfg.split_column!r} has the value {value!r}; "
                                    f"allowed: {', '.join(sorted(SPLIT_VALUES))}")
                split = SPLIT_VALUES[key]
                texts.setdefault(split, []).append(text)
                raw.setdefault(split, []).append(label)
        notes.append(f"splits from column {cfg.split_column!r}")
    else:
        for ours, name, part in our_splits(ds, notes):
            _columns_of(part, cfg, name, origin, config_key)
            texts[ours], raw[ours] = (_join(part, cfg.text_columns, cfg.text_separator),
                                      _column(part, cfg.label_column))
            feature = part.features.get(cfg.label_column)
            if class_names is None and getattr(feature, "names", None):
                class_names = list(feature.names)
    if "train" not in texts:
        found = ", ".join(ds) if not cfg.split_column else ", ".join(texts)
        raise DataError(f"{origin} has no training split (found: {found}); point {config_key}.path at a "
                        f"single file to carve every split from it, or name the files in {config_key}.data_files")
    labels, names = _label_ids(raw, cfg, class_names, origin)
    for split in ("val", "test"):
        if split in labels and len(labels[split]) and (labels[split] < 0).all():
            notes.append(f"its {split} split has no labels (all {labels[split][0] + cfg.label_offset}): not used")
            del texts[split], labels[split]
    for split, ids in labels.items():
        if len(ids) and (ids < 0).any():
            raise DataError(f"{origin}: split {split!r} has negative label ids after label_offset {cfg.label_offset}")

    # carve what is missing from train: test first (only if absent), then validation
    rng = np.random.default_rng(cfg.data_seed)
    n = len(texts["train"])
    order = rng.permutation(n)
    cut = {}
    start = 0
    for split, fraction in (("test", cfg.test_fraction), ("val", cfg.val_fraction)):
        if split not in texts:
            k = round(n * fraction)
            cut[split] = np.sort(order[start:start + k])
            start += k
            notes.append(f"{split} carved from train ({fraction:g}, seed {cfg.data_seed})")
    rest = order[start:]
    if cfg.max_train and cfg.max_train < len(rest):
        rest = rest[: cfg.max_train]
        notes.append(f"train capped at {cfg.max_train} (seed {cfg.data_seed})")
    cut["train"] = np.sort(rest)
    pool_texts, pool_labels = texts["train"], labels["train"]
    for split, idx in cut.items():
        texts[split] = [pool_texts[i] for i in idx]
        labels[split] = pool_labels[idx]
    empty = [s for s in ("train", "val", "test") if not len(texts[s])]
    if empty:
        raise DataError(f"{origin}: split(s) {', '.join(empty)} would be empty ({n} training rows, val_fraction "
                        f"{cfg.val_fraction}, test_fraction {cfg.test_fraction}); use more data or larger fractions")
    return LabelledTexts(texts={s: texts[s] for s in ("train", "val", "test")},
                         labels={s: labels[s] for s in ("train", "val", "test")},
                         label_names=names, origin=origin, notes=notes)
