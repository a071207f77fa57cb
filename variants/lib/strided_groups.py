"""LRA's released block reshape: the strided groups of ``local`` (``groups: strided``) and ``sinkhorn``
(``form: lra_released``).

LRA's local and Sinkhorn layers (``lra_benchmarks/models/local/local_attention.py:318-323``,
``models/sinkhorn_transformer/sinkhorn_attention.py:343-348``) cut a sequence of L = nb * b positions
into "blocks" of b by reshaping (batch, L, heads, d) to (batch, b, nb, heads, d) and attend along the
b axis. So group g (0 <= g < nb) holds the positions g, nb + g, 2 nb + g, ... (equal i mod nb), its slot
s being position s nb + g: b tokens spread evenly over the sequence, not b consecutive ones.

Their padding mask (batch, L) is reshaped to (batch * nb, b) instead (local_attention.py:342-343,
sinkhorn_attention.py:403-404): its group g is the contiguous positions g b, ..., g b + b - 1. Query slot s and
key slot t of group g are masked by the entries of positions g b + s and g b + t, which are other
positions than the query s nb + g and the key t nb + g whenever nb > 1 (``contiguous_cut``).

Masked (query, key) pairs get a bias of -1e10 added to their logits. In LRA's float32 that absorbs the
logit (the spacing of float32 numbers near 1e10 is 1024), so a masked pair has weight 0 next to an allowed
one, and a query row with no allowed key at all attends uniformly to its group's b keys.
``lra_group_attention`` computes exactly that in any dtype: such a row's query is zeroed and all its keys
allowed, so its logits are all 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def group_strided(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, H, L, D) -> (B * nb, H, block, D) with nb = L / block: row g of element b holds the positions
    equal to g mod nb (LRA's reshape of (batch, L, heads, d) to (batch, block, nb, heads, d))."""
    bsz, heads, n, d = x.shape
    nb = n // block
    return x.reshape(bsz, heads, block, nb, d).permute(0, 3, 1, 2, 4).reshape(bsz * nb, heads, block, d)


def ungroup_strided(y: torch.Tensor, batch: int) -> torch.Tensor:
    """The inverse of ``group_strided``: (B * nb, H, block, D) -> (B, H, nb * block, D)."""
    rows, heads, block, d = y.shape
    nb = rows // batch
    return y.reshape(batch, nb, heads, block, d).permute(0, 2, 3, 1, 4).reshape(batch, heads, block * nb, d)


def contiguous_cut(mask: torch.Tensor, block: int) -> torch.Tensor:
    """(B, L) bool -> (B, nb, block): the padding mask cut as LRA cuts it, in consecutive runs of ``block``
    (entry [b, g, s] is position g block + s), although the groups it is applied to are strided."""
    return mask.reshape(mask.shape[0], mask.shape[1] // block, block)


def lra_pair_mask(cut: torch.Tensor) -> torch.Tensor:
    """(B, nb, b) cut mask -> (B * nb, 1, b, b): LRA's ``make_padding_mask`` of the cut with itself, query
    slot s and key slot t of group g allowed when both entries g b + s and g b + t are True."""
    bsz, nb, b = cut.shape
    return (cut[..., :, None] & cut[..., None, :]).reshape(bsz * nb, 1, b, b)


def lra_group_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None,
                        dropout: float) -> torch.Tensor:
    """Softmax attention of each group's queries over its keys, (R, H, b, D) x3, as LRA's
    ``local_dot_product_attention`` under a -1e10 bias: ``allowed`` (R, 1, b, b) bool or None; a query row
    with no allowed key weights every key of its group equally (weights, dropout included, as LRA's)."""
    if allowed is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    empty = ~allowed.any(-1, keepdim=True)  # (R, 1, b, 1)
    q = torch.where(empty, 0.0, q)  # logits 0 everywhere in the row: uniform weights over its keys
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | empty, dropout_p=dropout)
