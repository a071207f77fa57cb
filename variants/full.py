"""Full softmax attention through ``torch.nn.functional.scaled_dot_product_attention`` (or
xformers' kernel when the efficiency sweep selects it, see ``variants/lib/sdpa.py``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnbench.variants.base import VARIANTS, Attention, padding_mask_or_none
from attnbench.variants.lib.sdpa import attention


@dataclass(frozen=True)
class FullConfig:
    """Full attention has no hyper-parameters of its own."""


@VARIANTS.register("full", FullConfig)
class FullAttention(Attention):
    """Full softmax attention (SDPA: flash/efficient kernels where available)."""

    complexity = "O(N^2) time; O(N) memory with fused kernels"
    exact = True
    lra_model = "Transformer"

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        mask = padding_mask_or_none(key_padding_mask)
        if mask is not None:
            mask = mask[:, None, None, :]  # (B, 1, 1, N), True = attend
        p = self.dropout if self.training else 0.0
        return attention(q, k, v, attn_mask=mask, dropout_p=p)

    def flops(self, batch: int, seq_len: int) -> int:
        # QK^T and PV: 2 matmuls of N x N x Dh per head, 2 FLOPs per multiply-add
        attn = 2 * 2 * batch * self.heads * seq_len * seq_len * self.head_dim
        return attn + self.projection_flops(batch, seq_len)
