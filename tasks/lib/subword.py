"""A subword tokenizer (BPE or WordPiece, the ``tokenizers`` package) trained on a task's
training texts only, cached on disk.

The cache file is named by a hash of the settings, the ``tokenizers`` version and every
training text, so a second ``prepare`` of the same data reuses the trained tokenizer and
any change of data or settings trains a new one. Id 0 is ``[PAD]`` (``tasks.base.PAD_ID``),
id 1 ``[UNK]``; no [CLS]/[SEP] are added (the model adds its own CLS token).

- ``bpe``: byte-level BPE (as GPT-2/RoBERTa): every string is representable, nothing is unknown.
- ``wordpiece``: BERT-style WordPiece (BERT normaliser and pre-tokeniser, ``##`` continuations).

``tokenizers`` is imported where it is used: only a task that trains or reads a subword
tokenizer pays for it.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from attnbench.harness.core.io import atomic_write_text
from attnbench.tasks.base import PAD_ID, pad_batch

if TYPE_CHECKING:  # imported where used at run time (see above)
    from tokenizers import Tokenizer
    from tokenizers.trainers import Trainer

PAD, UNK = "[PAD]", "[UNK]"
SPECIAL_TOKENS = (PAD, UNK)  # in id order: [PAD] is 0
#: bump when the way a tokenizer is built changes (part of the cache key)
SUBWORD_FORMAT = 1

#: how many tokenizers this process has trained (for tests: a cache hit trains none)
TRAINED = {"count": 0}


@dataclass(frozen=True)
class SubwordSettings:
    model: Literal["bpe", "wordpiece"] = "bpe"
    vocab_size: int = 8192
    min_frequency: int = 2
    lowercase: bool = False


def _build(settings: SubwordSettings) -> tuple[Tokenizer, Trainer]:
    """An untrained tokenizer and its trainer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if settings.model == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        steps = [normalizers.NFC()] + ([normalizers.Lowercase()] if settings.lowercase else [])
        tok.normalizer = normalizers.Sequence(steps)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer: trainers.Trainer = trainers.BpeTrainer(
            vocab_size=settings.vocab_size, min_frequency=settings.min_frequency,
            special_tokens=list(SPECIAL_TOKENS), show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif settings.model == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        tok.normalizer = normalizers.BertNormalizer(lowercase=settings.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=settings.vocab_size, min_frequency=settings.min_frequency,
                                            special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    else:
        raise ValueError(f"unknown subword model {settings.model!r}; known: bpe, wordpiece")
    return tok, trainer


def cache_key(texts: Sequence[str], settings: SubwordSettings) -> str:
    """Hash of the settings, the ``tokenizers`` version and the training texts (in order)."""
    import tokenizers

    h = hashlib.sha256(json.dumps({"settings": asdict(settings), "format": SUBWORD_FORMAT,
                                   "tokenizers": tokenizers.__version__}, sort_keys=True).encode())
    h.update(len(texts).to_bytes(8, "little"))
    for text in texts:
        b = text.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:16]


class SubwordTokenizer:
    """A trained tokenizer: ``encode`` gives (n, seq_len) padded id tensors."""

    def __init__(self, tokenizer: Tokenizer, settings: SubwordSettings, path: Path | None = None,
                 reused: bool = False) -> None:
        self.tokenizer, self.settings, self.path, self.reused = tokenizer, settings, path, reused
        if tokenizer.token_to_id(PAD) != PAD_ID:
            raise ValueError(f"subword tokenizer {path}: {PAD} is id {tokenizer.token_to_id(PAD)}, expected {PAD_ID}")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, texts: Sequence[str], seq_len: int) -> torch.Tensor:
        """The first ``seq_len`` token ids of each text, right-padded with ``PAD_ID``."""
        return pad_batch([ids[:seq_len] for ids in self.ids(texts)], seq_len)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) != PAD_ID])

    def describe(self) -> str:
        return (f"{self.settings.model} subword tokenizer, {self.vocab_size} ids"
                + (" (lowercased)" if self.settings.lowercase else "") + ", trained on the train split")


def train(texts: Sequence[str], settings: SubwordSettings) -> SubwordTokenizer:
    tok, trainer = _build(settings)
    tok.train_from_iterator(list(texts), trainer=trainer, length=len(texts))
    TRAINED["count"] += 1
    return SubwordTokenizer(tok, settings)


def load_or_train(texts: Sequence[str], settings: SubwordSettings, cache_dir: Path) -> SubwordTokenizer:
    """The tokenizer trained on ``texts`` with ``settings``: read from ``cache_dir`` when it was
    trained before, else trained now and saved there."""
    from tokenizers import Tokenizer

    path = Path(cache_dir) / f"subword-{settings.model}-{cache_key(texts, settings)}.json"
    if path.exists():
        try:
            return SubwordTokenizer(Tokenizer.from_file(str(path)), settings, path, reused=True)
        except Exception:  # a corrupt cache file is trained again
            path.unlink(missing_ok=True)
    trained = train(texts, settings)
    atomic_write_text(path, trained.tokenizer.to_str())
    trained.path = path
    return trained
