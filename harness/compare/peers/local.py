"""Peer of ``local``: lucidrains' ``local-attention`` ``LocalAttention`` without look-around (each window
attends its own keys: non-overlapping blocks)."""
from __future__ import annotations

import torch

from attnbench.harness.compare.adapters import QKVOut, all_real, mask_of
from attnbench.harness.compare.registry import Peer, register_peer


class LucidrainsLocalBlocks(QKVOut):
    """``local_attention.LocalAttention`` with ``look_backward = look_forward = 0``: each query attends
    the keys of its own window of ``window_size`` tokens, i.e. non-overlapping blocks. Its autopadding is
    masked only when a mask is given, so the adapter passes one whenever N is not a multiple of the block."""

    def __init__(self, dim: int, heads: int, block: int):
        from local_attention import LocalAttention

        super().__init__(dim, heads)
        self.block = block
        self.attn = LocalAttention(window_size=block, causal=False, look_backward=0, look_forward=0, dropout=0.0,
                                   exact_windowsize=False, autopad=True, use_rotary_pos_emb=False)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.split(x)
        mask = None
        if not all_real(key_padding_mask) or x.shape[1] % self.block:
            mask = mask_of(x, key_padding_mask)
        return self.merge(self.attn(q, k, v, mask=mask))


register_peer(Peer(
    name="local-attention-blocks", variant="local",
    title="lucidrains local-attention LocalAttention (no look-around)",
    requires=("local_attention",), distributions=("local-attention",),
    match=lambda s, d: ({"block_size": int(d["block_size"])},
                        {"window_size": int(d["block_size"]), "look_backward": 0, "look_forward": 0,
                         "exact_windowsize": False, "use_rotary_pos_emb": False, "autopad": True}),
    build=lambda s, p: LucidrainsLocalBlocks(s.dim, s.heads, p["window_size"]),
    note="the same mechanism (windows of b, each its own keys only); + our qkv/out nn.Linear around it"))
