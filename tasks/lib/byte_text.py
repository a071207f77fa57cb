"""Byte-level text encoding shared by the byte-level tasks (Text, Retrieval, textcls).

A text becomes its UTF-8 bytes, each byte ``b`` the token ``b + 1`` (0 is padding), cut
to the first ``seq_len`` bytes as LRA does (LRA's ``ByteTextEncoder`` also maps each byte
to one id with a small reserved offset). The vocabulary is 257 ids.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from attnbench.tasks.base import PAD_ID

BYTE_OFFSET = 1
BYTE_VOCAB = 256 + BYTE_OFFSET


def encode_bytes(text: str, seq_len: int) -> np.ndarray:
    """The first ``seq_len`` byte tokens of ``text`` (int64 ids 1..256)."""
    raw = np.frombuffer(text.encode("utf-8")[:seq_len], dtype=np.uint8)
    return raw.astype(np.int64) + BYTE_OFFSET


def encode_texts(texts: Iterable[str], seq_len: int) -> torch.Tensor:
    """(n, seq_len) int64 byte tokens, right-padded with ``PAD_ID``, longer texts cut."""
    texts = list(texts)
    out = np.full((len(texts), seq_len), PAD_ID, dtype=np.int64)
    for i, text in enumerate(texts):
        ids = encode_bytes(text, seq_len)
        out[i, : len(ids)] = ids
    return torch.from_numpy(out)


def decode_bytes(tokens: torch.Tensor) -> str:
    """The text of one row of byte tokens (padding dropped); for tests and inspection."""
    ids = [int(t) - BYTE_OFFSET for t in tokens.tolist() if int(t) != PAD_ID]
    return bytes(ids).decode("utf-8", errors="replace")
