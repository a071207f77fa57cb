"""Retrieval (LRA): byte-level document matching on the ACL Anthology Network (AAN).

Does paper 1 cite paper 2? A two-tower task: each example is two documents, both read by
the same encoder with no cross-attention (tokens ``(n, 2, seq_len)``, ``paired=True``); the
model's dual head compares the two pooled vectors (``model.interaction``).

Source: the LRA release files ``new_aan_pairs.{train,eval,test}.tsv`` (under
``lra_release/tsv_data/``): no header, five tab-separated columns ``label id1 id2 text1
text2``, the label written as a float (``0.0``/``1.0``); quotes are ordinary characters (LRA
reads them with ``use_quote_delim=False``), so lines are split on tabs only. Each text is cut
to ``max_chars`` characters and then to ``seq_len`` bytes, as LRA does (10,000 and 4,000).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnbench.harness.core.registry import param
from attnbench.tasks.base import SPLITS, TASKS, DataError, PreparedData, Task, lra_release_hint, tiny_texts
from attnbench.tasks.lib.byte_text import BYTE_VOCAB, encode_texts

#: our split name -> the release's file suffix
FILE_SPLITS = {"train": "train", "val": "eval", "test": "test"}
HOW_TO_GET = lra_release_hint("lra_release/lra_release/tsv_data/", "tasks.retrieval.data.path")


@dataclass(frozen=True)
class RetrievalConfig:
    """AAN document pairs from the LRA release TSVs, as byte tokens."""

    path: str = param("", "folder holding {prefix}.{train,eval,test}.tsv, e.g. lra_release/tsv_data")
    prefix: str = param("new_aan_pairs", "file name prefix of the TSVs")
    seq_len: int = param(4000, "bytes kept per document (LRA: 4000, so 8K per pair)", minimum=1)
    max_chars: int = param(10_000, "characters kept per document before byte encoding (LRA: 10,000)", minimum=1)
    max_examples: int = param(0, "read at most this many pairs per split (0 = all)", minimum=0)


def read_pairs(path: Path, max_examples: int = 0) -> tuple[list[str], list[str], list[int]]:
    """(text1s, text2s, labels) of one AAN TSV; a malformed line is an error naming it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Retrieval file {path} is missing; {HOW_TO_GET}")
    first, second, labels = [], [], []
    with open(path, encoding="utf-8", newline="\n") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 5:
                raise DataError(f"{path}:{lineno}: expected 5 tab-separated columns "
                                f"(label, id1, id2, text1, text2), found {len(fields)}")
            try:
                label = float(fields[0])
            except ValueError:
                raise DataError(f"{path}:{lineno}: the label {fields[0]!r} is not a number") from None
            if label not in (0.0, 1.0):
                raise DataError(f"{path}:{lineno}: the label {fields[0]!r} is not 0 or 1")
            labels.append(int(label))
            first.append(fields[3])
            second.append(fields[4])
            if max_examples and len(labels) >= max_examples:
                break
    if not labels:
        raise DataError(f"{path} holds no document pairs")
    return first, second, labels


@TASKS.register("retrieval", RetrievalConfig)
class Retrieval(Task):
    """Retrieval: AAN citation matching of two byte-level documents, 2 classes (LRA)."""

    cfg: RetrievalConfig
    length_param = "seq_len"

    @classmethod
    def tiny_params(cls, folder: Path) -> dict[str, Any]:
        """8 / 4 / 4 pairs in the release layout (``tsv_data/new_aan_pairs.{train,eval,test}.tsv``)."""
        folder = Path(folder) / "tsv_data"
        folder.mkdir(parents=True, exist_ok=True)
        for k, (suffix, n) in enumerate(zip(FILE_SPLITS.values(), (8, 4, 4), strict=True)):
            texts = tiny_texts(2 * n, seed=k)
            lines = [f"{i % 2}.0\t{suffix}{i}a\t{suffix}{i}b\t{texts[2 * i]}\t{texts[2 * i + 1]}\n" for i in range(n)]
            (folder / f"new_aan_pairs.{suffix}.tsv").write_text("".join(lines), encoding="utf-8")
        return {"path": str(folder), "seq_len": 48, "max_chars": 40}

    def split_files(self) -> dict[str, Path]:
        if not self.cfg.path:
            raise DataError(f"retrieval needs `path`, the folder holding {self.cfg.prefix}.{{train,eval,test}}.tsv; "
                            + HOW_TO_GET)
        return {s: Path(self.cfg.path) / f"{self.cfg.prefix}.{FILE_SPLITS[s]}.tsv" for s in SPLITS}

    def missing_sources(self) -> list[str]:
        try:
            files = self.split_files()
        except DataError as exc:
            return [str(exc)]
        missing = [str(p) for p in files.values() if not p.exists()]
        return [f"{', '.join(missing)}: {HOW_TO_GET}"] if missing else []

    def prepare(self, workdir: Path) -> PreparedData:
        cfg, splits = self.cfg, {}
        for split, path in self.split_files().items():
            first, second, labels = read_pairs(path, cfg.max_examples)
            towers = [encode_texts((t[: cfg.max_chars] for t in texts), cfg.seq_len) for texts in (first, second)]
            splits[split] = {"tokens": torch.stack(towers, dim=1),
                             "labels": torch.tensor(labels, dtype=torch.int64)}
        return PreparedData(splits=splits, seq_len=cfg.seq_len, vocab_size=BYTE_VOCAB, num_classes=2,
                            label_names=["no citation", "citation"], paired=True,
                            source=f"LRA release AAN pairs in {cfg.path}")
