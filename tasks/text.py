"""Text (LRA): byte-level IMDb sentiment, 2 classes.

LRA reads TFDS ``imdb_reviews`` (25k train, 25k test) as UTF-8 bytes cut to ``max_length``
(4K in the paper, 1000 in the released ``base_tc_config``: ``seq_len`` selects) and uses
the test split for validation too. Here validation is carved from train instead (seeded,
``val_fraction``): the test split is only ever the test split.

This is ``textcls`` with IMDb defaults and byte tokens only. Sources: the hub id
``stanfordnlp/imdb`` (``text``/``label``; ``unsupervised`` is left out) or local
CSV/JSON lines/Parquet files, e.g. fastai's IMDB_SAMPLE ``texts.csv`` (labels
negative/positive, ``split_column: is_valid`` for its own train/valid split; a single file
without a test split has its test carved from train, said in the data's ``source``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from attnbench.tasks.base import TASKS, tiny_texts
from attnbench.tasks.lib.hf_source import write_csv
from attnbench.tasks.lib.labelled_texts import TextSourceConfig
from attnbench.tasks.textcls import TextCls


@dataclass(frozen=True)
class TextConfig(TextSourceConfig):
    """IMDb reviews (hub id or local files) as UTF-8 byte sequences (LRA Text)."""


@TASKS.register("text", TextConfig)
class Text(TextCls):
    """Text: byte-level IMDb sentiment, 2 classes (LRA)."""

    hub_id: ClassVar[str] = "stanfordnlp/imdb"

    @classmethod
    def tiny_params(cls, folder: Path) -> dict[str, Any]:
        """40 rows in the layout of fastai's IMDB_SAMPLE ``texts.csv`` (``label,text,is_valid``,
        labels negative/positive, every fifth row validation), test carved from train."""
        rows = [("positive" if i % 2 else "negative", text, i % 5 == 0) for i, text in enumerate(tiny_texts(40))]
        path = write_csv(Path(folder) / "imdb_sample" / "texts.csv", ["label", "text", "is_valid"], rows)
        return {"path": str(path), "split_column": "is_valid", "seq_len": 48}

    def tokenizer_kind(self) -> str:
        return "bytes"
