"""Text classification: any labelled text data set as byte or subword token sequences.

Sources (``tasks.lib.hf_source``, ``tasks.lib.labelled_texts``): Hugging Face ids such as
``fancyzhx/ag_news`` (the default), ``stanfordnlp/imdb`` or ``stanfordnlp/sst2``
(``text_columns: [sentence]``), or local CSV/TSV/JSON lines/Parquet files with configurable
text and label columns; e.g. the AG News CSV: ``text_columns: [title, description]``,
``label_offset: 1``.

Tokens: ``bytes`` (``tasks.lib.byte_text``: UTF-8 bytes + 1, 257 ids) or ``subword`` (BPE or
WordPiece trained on the train split only, cached under the task's work folder:
``tasks.lib.subword``). Texts longer than ``seq_len`` tokens are cut (the head is kept).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from attnbench.harness.core.registry import param
from attnbench.tasks.base import TASKS, PreparedData, Task, tiny_texts
from attnbench.tasks.lib.byte_text import BYTE_VOCAB, encode_texts
from attnbench.tasks.lib.hf_source import missing_source, write_csv
from attnbench.tasks.lib.labelled_texts import PATH_HELP, LabelledTexts, TextSourceConfig, load_labelled_texts
from attnbench.tasks.lib.subword import SubwordSettings, load_or_train


@dataclass(frozen=True)
class TextClsConfig(TextSourceConfig):
    """Labelled texts (hub id or local files) as byte or subword token sequences."""

    path: str = param("fancyzhx/ag_news", PATH_HELP)
    seq_len: int = param(512, "tokens per example: longer texts are cut (the head is kept), shorter ones padded",
                         minimum=1)
    tokenizer: Literal["bytes", "subword"] = param("subword", "bytes: UTF-8 bytes (257 ids); subword: a tokenizer "
                                                   "trained on the train split")
    subword_model: Literal["bpe", "wordpiece"] = param("bpe", "subword only: byte-level BPE or BERT-style WordPiece")
    vocab_size: int = param(8192, "subword only: vocabulary size to train (special tokens included; a small corpus "
                            "may give fewer)", minimum=16)
    min_frequency: int = param(2, "subword only: a merge or piece must occur this often in the train split", minimum=1)
    lowercase: bool = param(False, "subword only: lowercase texts before tokenising")


@TASKS.register("textcls", TextClsConfig)
class TextCls(Task):
    """Text classification: labelled texts (AG News by default) as byte or subword tokens."""

    #: the task's settings; ``text``'s config holds the source settings alone, and a Text reads only
    #: those (its tokens are bytes: the subword settings are never read)
    cfg: TextClsConfig
    length_param = "seq_len"

    #: the Hugging Face copy suggested when a local source is missing
    hub_id: ClassVar[str] = "fancyzhx/ag_news"

    @classmethod
    def tiny_params(cls, folder: Path) -> dict[str, Any]:
        """40 rows in the AG News CSV layout (``label,title,description``, labels 1-4), val and
        test carved from them; a small BPE vocabulary trained on train."""
        titles, texts = tiny_texts(40, seed=1, max_words=3), tiny_texts(40, seed=2)
        path = write_csv(Path(folder) / "ag_news" / "train.csv", ["label", "title", "description"],
                         [(1 + i % 4, t, d) for i, (t, d) in enumerate(zip(titles, texts, strict=True))])
        return {"path": str(path), "text_columns": ["title", "description"], "label_offset": 1,
                "label_names": ["World", "Sports", "Business", "Sci/Tech"], "seq_len": 32,
                "tokenizer": "subword", "vocab_size": 300, "min_frequency": 1}

    def tokenizer_kind(self) -> str:
        return self.cfg.tokenizer

    def missing_sources(self) -> list[str]:
        c = self.cfg
        return missing_source(c.path, what=f"the {self.name} data", config_key=f"tasks.{self.name}.data",
                              default_hub_id=self.hub_id, subset=c.subset, data_files=c.data_files or None)

    def load(self) -> LabelledTexts:
        return load_labelled_texts(self.cfg, self.name, self.hub_id)

    def encode(self, data: LabelledTexts, workdir: Path) -> tuple[dict[str, torch.Tensor], int, str]:
        """Token tensors per split, the vocabulary size, and a description of the tokens."""
        seq_len = self.cfg.seq_len
        if self.tokenizer_kind() == "bytes":
            tokens = {s: encode_texts(t, seq_len) for s, t in data.texts.items()}
            return tokens, BYTE_VOCAB, f"UTF-8 bytes, seq_len {seq_len}"
        settings = SubwordSettings(model=self.cfg.subword_model, vocab_size=self.cfg.vocab_size,
                                   min_frequency=self.cfg.min_frequency, lowercase=self.cfg.lowercase)
        tok = load_or_train(data.texts["train"], settings, Path(workdir) / "tokenizers")
        tokens = {s: tok.encode(t, seq_len) for s, t in data.texts.items()}
        return tokens, tok.vocab_size, f"{tok.describe()}, seq_len {seq_len}"

    def prepare(self, workdir: Path) -> PreparedData:
        data = self.load()
        tokens, vocab_size, how = self.encode(data, Path(workdir))
        splits = {s: {"tokens": tokens[s], "labels": torch.from_numpy(data.labels[s])} for s in tokens}
        return PreparedData(splits=splits, seq_len=self.cfg.seq_len, vocab_size=vocab_size,
                            num_classes=data.num_classes, label_names=data.label_names,
                            source=f"{data.describe()}; {how}")
