"""A test-only attention variant that needs ``max_len``, written as a contributor would: one file.

Keys and values are projected along the length to ``k`` rows by a learned matrix ``E`` of
shape (k, max_len), shared by keys and values and by the heads (Linformer's simplest form);
the queries attend to the k projected rows. A padded key is zeroed before the projection, so
it adds nothing. Importing this module registers it (tests/conftest.py does, so the
registry-wide tests cover it). Not the project's Linformer: see issue 14.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.harness.core.registry import param
from attnbench.variants import VARIANTS, Attention


@dataclass(frozen=True)
class LengthProjectedConfig:
    """Projection along the length."""

    k: int = param(16, "rows the keys and values are projected to", minimum=1)
    identity: bool = param(False, "E = identity (k = max_len): the limit case, equal to full attention")


@VARIANTS.register("test_length_projected", LengthProjectedConfig)
class LengthProjectedAttention(Attention):
    """Test variant: keys and values projected along the length (needs max_len)."""

    complexity = "O(N k)"
    small_params = {"k": 6}

    def __init__(self, dim: int, heads: int, cfg: LengthProjectedConfig, max_len: int, dropout: float = 0.0):
        super().__init__(dim, heads, cfg, max_len, dropout)
        if cfg.identity:
            if cfg.k != max_len:
                raise ValueError(f"identity projection needs k = max_len ({max_len}), got k = {cfg.k}")
            self.proj = nn.Parameter(torch.eye(max_len))
        else:
            self.proj = nn.Parameter(torch.randn(cfg.k, max_len) / math.sqrt(max_len))

    def attend(self, q, k, v, key_padding_mask):
        n = k.shape[2]
        if n > self.max_len:
            raise ValueError(f"{n} tokens, but this layer was built for at most {self.max_len}")
        e = self.proj[:, :n].to(k.dtype)
        if key_padding_mask is not None:
            keep = key_padding_mask[:, None, :, None].to(k.dtype)
            k, v = k * keep, v * keep
        return F.scaled_dot_product_attention(q, e @ k, e @ v)

    def flops(self, batch: int, seq_len: int) -> int:
        project = 2 * 2 * batch * self.heads * self.cfg.k * seq_len * self.head_dim
        attend = 2 * 2 * batch * self.heads * seq_len * self.cfg.k * self.head_dim
        return project + attend + self.projection_flops(batch, seq_len)
