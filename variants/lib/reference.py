"""Plain explicit softmax attention: the reference the tests compare variants against.

Not registered as a variant; it materialises the N x N score matrix on purpose.
"""
from __future__ import annotations

import math

import torch


def explicit_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               key_padding_mask: torch.Tensor | None = None,
                               attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) + mask) V for (B, H, N, D) inputs.

    ``key_padding_mask`` (B, N) and ``attn_mask`` (N, N) or (B, H, N, N) are bool, True = attend.
    Query rows with no key to attend to return zeros.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = torch.ones_like(scores, dtype=torch.bool)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    if attn_mask is not None:
        allowed = allowed & attn_mask
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # rows with every key masked
    return probs @ v
