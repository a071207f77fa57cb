"""The shape of a task's data as far as time goes: its sequence length, vocabulary, classes, pairing and the
number of examples per split. Read from the prepared data where ``data/`` has it (only its description: the
file is memory-mapped, its tensors never read), else from the task's configured settings, else guessed (and
said so): what an estimate made before ``attnbench prepare`` has to go on."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnbench.harness.core import paths

#: images in scikit-learn's digits (``tasks.image.DIGITS_IMAGES``) and CIFAR-10's train + test images
DIGITS_IMAGES, CIFAR10_SPLITS = 1797, {"train": 45_000, "val": 5_000, "test": 10_000}
#: examples per split where neither prepared data nor the settings say: a guess, and the estimate says so
GUESSED_SPLITS = {"train": 10_000, "val": 1_000, "test": 1_000}
#: the tokens of byte-level text and of 8-bit pixels (+1: the padding id)
BYTE_VOCAB = 257
#: tasks whose examples are two documents (a two-tower model: twice the tokens per example)
PAIRED_TASKS = ("retrieval",)
#: bytes of a local file read to count its rows (a larger file's count is scaled from them)
COUNT_BYTES = 64 * 2 ** 20


@dataclass(frozen=True)
class DataShape:
    """What a run's cost depends on in its data. ``source``: prepared (read from ``data/``), configured (from the
    settings) or guessed (sizes unknown until the data is prepared)."""

    seq_len: int
    vocab_size: int
    num_classes: int
    sizes: dict[str, int]
    paired: bool
    source: str


def data_shape(task: dict[str, Any]) -> DataShape:
    """The data shape of a resolved run's ``task`` section (its registered task, data settings and data key)."""
    path = paths.dataset_file(task["name"], task["data_key"])
    prepared = prepared_shape(path) if path.exists() else None
    return prepared or configured_shape(task["name"], task["data"])


def prepared_shape(path: Path) -> DataShape | None:
    """The shape a prepared data set describes (None where the file cannot be read: it is prepared again)."""
    try:
        payload = torch.load(path, weights_only=True, mmap=True)
        meta = payload["meta"]
        return DataShape(int(meta["seq_len"]), int(meta["vocab_size"]), int(meta["num_classes"]),
                         {k: int(v) for k, v in meta["sizes"].items()}, bool(meta.get("paired", False)), "prepared")
    except Exception:  # damaged, or of an older layout: the configured settings say as much
        return None


def configured_shape(task: str, params: dict[str, Any]) -> DataShape:
    """The shape a registered task's data settings give before it is prepared."""
    if "resolution" in params:  # pixel tasks: an image side
        seq_len = int(params["resolution"]) ** 2
    elif task == "image":
        seq_len = 64 if params.get("source") == "digits" else 1024
    else:
        seq_len = int(params.get("seq_len") or params.get("max_length") or 1024)
    tokenizer = params.get("tokenizer")
    vocab = int(params["vocab_size"]) if tokenizer == "subword" and "vocab_size" in params else BYTE_VOCAB
    classes = len(params.get("label_names") or ()) or 10
    sizes, source = configured_sizes(task, params)
    return DataShape(seq_len, vocab, classes, sizes, task in PAIRED_TASKS, source)


def configured_sizes(task: str, params: dict[str, Any]) -> tuple[dict[str, int], str]:
    """Examples per split and how they are known: generated counts (``n_train``, ...), the digits or CIFAR-10
    split by the fractions, a local file's rows split by them; else guessed."""
    if all(f"n_{s}" in params for s in ("train", "val", "test")):
        return {s: int(params[f"n_{s}"]) for s in ("train", "val", "test")}, "configured"
    if task == "image" and params.get("source") in ("digits", "cifar10"):
        if params["source"] == "cifar10":
            sizes = dict(CIFAR10_SPLITS)
        else:
            sizes = carve(DIGITS_IMAGES, params)
        if params.get("max_train"):
            sizes["train"] = min(sizes["train"], int(params["max_train"]))
        return sizes, "configured"
    rows = local_rows(params.get("path"))
    if rows is not None:
        sizes = carve(rows, params)
        if params.get("max_train"):
            sizes["train"] = min(sizes["train"], int(params["max_train"]))
        return sizes, "configured"
    return dict(GUESSED_SPLITS), "guessed"


def carve(total: int, params: dict[str, Any]) -> dict[str, int]:
    """``total`` examples with validation and test carved by ``val_fraction`` and ``test_fraction``."""
    val = math.ceil(total * float(params.get("val_fraction", 0.1)))
    test = math.ceil(total * float(params.get("test_fraction", 0.1)))
    return {"train": max(1, total - val - test), "val": max(1, val), "test": max(1, test)}


def local_rows(path: object) -> int | None:
    """Data rows of a local CSV/TSV/JSON-lines file (lines, less a CSV's header); None for anything else."""
    if not isinstance(path, str) or not path:
        return None
    file = Path(path).expanduser()
    if not file.is_file() or file.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".json"):
        return None
    size = file.stat().st_size
    with file.open("rb") as f:  # a large file: its lines counted in the first COUNT_BYTES, scaled to its size
        head = f.read(COUNT_BYTES)
    lines = round(head.count(b"\n") * size / max(1, len(head)))
    return max(1, lines - (file.suffix.lower() in (".csv", ".tsv")))

