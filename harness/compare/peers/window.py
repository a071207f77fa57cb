"""Peers of ``window``: HF transformers' ``LongformerSelfAttention`` and lucidrains' ``local-attention``
with an exact window."""
from __future__ import annotations

import torch
from torch import nn

from attnbench.harness.compare.adapters import QKVOut, all_real, mask_of, pad_to
from attnbench.harness.compare.registry import Params, Peer, Shape, register_peer
from attnbench.variants.lib.blocks import real_lengths, resolve_positions


class HFLongformer(nn.Module):
    """``LongformerSelfAttention`` (random weights, from a config) plus an output projection.

    The layer expects the model's encoded mask (HF: padded < 0, local 0, global > 0) and a length
    that is a multiple of ``attention_window``; like ``LongformerModel`` we pad to it and slice.
    """

    def __init__(self, dim: int, heads: int, window: int, global_tokens: tuple[int, ...]):
        from transformers import LongformerConfig
        from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

        super().__init__()
        cfg = LongformerConfig(hidden_size=dim, num_attention_heads=heads, attention_window=[2 * window],
                               attention_probs_dropout_prob=0.0, num_hidden_layers=1)
        self.attn = LongformerSelfAttention(cfg, layer_id=0)
        self.out = nn.Linear(dim, dim)
        self.multiple = 2 * window
        self.global_tokens = tuple(global_tokens)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        mask = mask_of(x, key_padding_mask)
        xp, maskp = pad_to(x, mask, self.multiple)
        enc = torch.zeros(maskp.shape, dtype=x.dtype, device=x.device).masked_fill(~maskp, -10000.0)
        idx, ok = resolve_positions(self.global_tokens, real_lengths(mask))  # our semantics of positions
        for i in range(b):
            enc[i, idx[i][ok[i]]] = 10000.0
        is_masked, is_global = enc < 0, enc > 0
        out = self.attn(xp, attention_mask=enc, is_index_masked=is_masked, is_index_global_attn=is_global,
                        is_global_attn=bool(is_global.any()))[0]
        result: torch.Tensor = self.out(out[:, :n])
        return result


def _match_longformer(s: Shape, d: Params) -> tuple[Params, Params]:
    w, g = int(d["window"]), tuple(d["global_tokens"])
    return ({"window": w, "global_tokens": g},
            {"attention_window": 2 * w, "one_sided_window": w, "global_tokens": list(g)})


register_peer(Peer(
    name="hf-longformer", variant="window", title="HF transformers LongformerSelfAttention",
    requires=("transformers.models.longformer.modeling_longformer",), distributions=("transformers",),
    match=_match_longformer,
    build=lambda s, p: HFLongformer(s.dim, s.heads, p["one_sided_window"], tuple(p["global_tokens"])),
    note="attention_window = 2w; global tokens use HF's separate global q/k/v projections; "
         "+ an output nn.Linear as ours"))


class LucidrainsLocal(QKVOut):
    """``local_attention.LocalAttention`` with ``exact_windowsize`` (|i - j| <= w), no rotary embedding."""

    def __init__(self, dim: int, heads: int, window: int):
        from local_attention import LocalAttention

        super().__init__(dim, heads)
        self.window = window
        self.attn = LocalAttention(window_size=window, causal=False, look_backward=1, look_forward=1,
                                   dropout=0.0, exact_windowsize=True, autopad=True, use_rotary_pos_emb=False)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.split(x)
        mask = None if all_real(key_padding_mask) else key_padding_mask
        if mask is None and x.shape[1] % self.window:  # its autopad's zero keys are real unless masked
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.merge(self.attn(q, k, v, mask=mask))


register_peer(Peer(
    name="local-attention", variant="window", title="lucidrains local-attention LocalAttention",
    requires=("local_attention",), distributions=("local-attention",),
    match=lambda s, d: ({"window": int(d["window"]), "global_tokens": ()},
                        {"window_size": int(d["window"]), "look_backward": 1, "look_forward": 1,
                         "exact_windowsize": True, "use_rotary_pos_emb": False}),
    build=lambda s, p: LucidrainsLocal(s.dim, s.heads, p["window_size"]),
    note="no global tokens in local-attention, so ours runs without them; window blocks of w, 3w keys masked to 2w+1"))
