"""Peers of ``full``: ``torch.nn.MultiheadAttention`` (a sanity peer) and a plain SDPA layer (the floor a
full-attention layer can reach); both in torch itself."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnbench.harness.compare.adapters import all_real
from attnbench.harness.compare.registry import Peer, register_peer


class TorchMHA(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        kpm = None if key_padding_mask is None or all_real(key_padding_mask) else ~key_padding_mask  # True = masked
        out: torch.Tensor = self.mha(x, x, x, key_padding_mask=kpm, need_weights=False)[0]
        return out


register_peer(Peer(
    name="torch-mha", variant="full", title="torch.nn.MultiheadAttention (sanity peer)",
    requires=("torch",), distributions=("torch",),
    match=lambda s, d: ({}, {"dropout": 0.0, "need_weights": False}),
    build=lambda s, p: TorchMHA(s.dim, s.heads),
    note="full softmax attention both sides; MHA also dispatches to SDPA"))


class PlainSDPA(nn.Module):
    """The least a full-attention layer can be: a fused q/k/v ``nn.Linear``, torch's
    ``scaled_dot_product_attention`` restricted to its flash kernel when no mask is needed (the kernel
    torch picks on a CPU for float32 without a mask), and an output ``nn.Linear``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if key_padding_mask is None or all_real(key_padding_mask):
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_padding_mask[:, None, None, :])
        out: torch.Tensor = self.out(o.transpose(1, 2).reshape(b, n, d))
        return out


register_peer(Peer(
    name="torch-sdpa", variant="full", title="plain SDPA layer (fused qkv Linear, flash kernel)",
    requires=("torch",), distributions=("torch",),
    match=lambda s, d: ({}, {"kernel": "flash (no mask)", "projections": "fused qkv Linear + out Linear"}),
    build=lambda s, p: PlainSDPA(s.dim, s.heads),
    note="full softmax attention both sides: the floor a full-attention layer can reach"))
