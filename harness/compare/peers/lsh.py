"""Peers of ``lsh``: HF transformers' Reformer ``LSHSelfAttention`` and lucidrains' ``reformer-pytorch``."""
from __future__ import annotations

import torch
from torch import nn

from attnbench.harness.compare.adapters import mask_of, pad_to
from attnbench.harness.compare.registry import Params, Peer, Shape, register_peer


class HFReformerLSH(nn.Module):
    """``LSHSelfAttention`` (shared QK, no-bias projections) plus an output projection."""

    def __init__(self, dim: int, heads: int, settings: Params, n: int):
        from transformers import ReformerConfig
        from transformers.models.reformer.modeling_reformer import LSHSelfAttention

        super().__init__()
        c = settings["lsh_attn_chunk_length"]
        cfg = ReformerConfig(hidden_size=dim, num_attention_heads=heads, attention_head_size=dim // heads,
                             attn_layers=["lsh"], lsh_attn_chunk_length=c, num_hashes=settings["num_hashes"],
                             num_buckets=settings["num_buckets"],
                             lsh_num_chunks_before=settings["lsh_num_chunks_before"],
                             lsh_num_chunks_after=settings["lsh_num_chunks_after"],
                             lsh_attention_probs_dropout_prob=0.0, is_decoder=False, hash_seed=None,
                             max_position_embeddings=max(n, 4096), axial_pos_embds=False)  # one layer: attn_layers
        self.attn = LSHSelfAttention(cfg, layer_idx=0)
        self.out = nn.Linear(dim, dim)
        self.chunk = c

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[1]
        xp, maskp = pad_to(x, mask_of(x, key_padding_mask), self.chunk)  # ReformerModel pads to a multiple of it
        am = None if bool(maskp.all()) else maskp.long()
        out = self.attn(hidden_states=xp, attention_mask=am).hidden_states
        result: torch.Tensor = self.out(out[:, :n])
        return result


def _match_hf_lsh(s: Shape, d: Params) -> tuple[Params, Params]:
    c, r = int(d["chunk_size"]), int(d["n_hashes"])
    before, after = int(d["chunks_before"]), int(d["chunks_after"])
    nb = max(2, 2 * (-(-s.n // c)))  # HF's own rule for num_buckets=None: about 2 N / chunk
    nb += nb % 2
    return ({"chunk_size": c, "n_hashes": r, "n_buckets": nb, "chunks_before": before, "chunks_after": after},
            {"lsh_attn_chunk_length": c, "num_hashes": r, "num_buckets": nb, "lsh_num_chunks_before": before,
             "lsh_num_chunks_after": after})


register_peer(Peer(
    name="hf-reformer", variant="lsh", title="HF transformers LSHSelfAttention",
    requires=("transformers.models.reformer.modeling_reformer",), distributions=("transformers",),
    match=_match_hf_lsh,
    build=lambda s, p: HFReformerLSH(s.dim, s.heads, p, s.n),
    note="n_buckets = 2N/chunk both sides (HF's automatic choice); chunks wrap around in HF, not in ours; "
         "+ an output nn.Linear"))


class LucidrainsReformerLSH(nn.Module):
    """``reformer_pytorch.LSHSelfAttention``: its own qk/v/out projections; N padded to 2 * bucket_size."""

    def __init__(self, dim: int, heads: int, bucket_size: int, n_hashes: int):
        from reformer_pytorch import LSHSelfAttention

        super().__init__()
        self.attn = LSHSelfAttention(dim=dim, heads=heads, dim_head=dim // heads, bucket_size=bucket_size,
                                     n_hashes=n_hashes, causal=False, attn_chunks=1, dropout=0.0,
                                     post_attn_dropout=0.0)
        self.multiple = 2 * bucket_size

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[1]
        xp, maskp = pad_to(x, mask_of(x, key_padding_mask), self.multiple)  # what its Autopadder does
        out: torch.Tensor = self.attn(xp, input_mask=None if bool(maskp.all()) else maskp)
        return out[:, :n]


def _match_lucidrains_lsh(s: Shape, d: Params) -> tuple[Params, Params]:
    c, r = int(d["chunk_size"]), int(d["n_hashes"])
    n_padded = -(-s.n // (2 * c)) * 2 * c
    nb = n_padded // c  # fixed by reformer-pytorch: one bucket per chunk
    return ({"chunk_size": c, "n_hashes": r, "n_buckets": nb, "chunks_before": 1, "chunks_after": 0},
            {"bucket_size": c, "n_hashes": r, "n_buckets (fixed = N/bucket_size)": nb, "look_one_back": True})


register_peer(Peer(
    name="reformer-pytorch", variant="lsh", title="lucidrains reformer-pytorch LSHSelfAttention",
    requires=("reformer_pytorch",), distributions=("reformer-pytorch",),
    match=_match_lucidrains_lsh,
    build=lambda s, p: LucidrainsReformerLSH(s.dim, s.heads, p["bucket_size"], p["n_hashes"]),
    note="reformer-pytorch fixes n_buckets = N/bucket_size and one chunk back, so ours runs with the same"))
