"""Peers of ``linear``: lucidrains' ``performer-pytorch`` (FAVOR+) and fast-transformers'
``LinearAttention``.

``pytorch-fast-transformers`` is not in the ``peers`` extra: it compiles C++ extensions at install time
(minutes; on a machine whose ``nvcc`` is a broken stub, only with that ``nvcc`` off PATH). Without it the
linear variant is compared with fast-transformers' non-causal formulation re-implemented here (elu+1
features, padded keys' features zeroed, eps 1e-6, einsums), labelled as such in the table.
"""
from __future__ import annotations

import importlib
import math

import torch
from torch import nn

from attnbench.harness.compare.adapters import all_real, mask_of
from attnbench.harness.compare.registry import Built, Params, Peer, Shape, register_peer
from attnbench.harness.results.environment import distribution_version


class PerformerFavor(nn.Module):
    """``performer_pytorch.SelfAttention``: FAVOR+ with ``nb_features`` orthogonal random features."""

    def __init__(self, dim: int, heads: int, n_features: int):
        from performer_pytorch import SelfAttention

        super().__init__()
        self.attn = SelfAttention(dim=dim, heads=heads, dim_head=dim // heads, nb_features=n_features,
                                  causal=False, dropout=0.0, qkv_bias=True, attn_out_bias=True)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        out: torch.Tensor = self.attn(x, mask=None if all_real(key_padding_mask) else key_padding_mask)
        return out


def _match_performer(s: Shape, d: Params) -> tuple[Params, Params]:
    m = int(d.get("n_features") or 0) or int(s.head_dim * math.log(s.head_dim))
    return ({"feature_map": "favor", "n_features": m, "redraw": False},
            {"nb_features": m, "generalized_attention": False, "qkv_bias": True, "feature_redraw": "none"})


register_peer(Peer(
    name="performer-pytorch", variant="linear", title="lucidrains performer-pytorch SelfAttention (FAVOR+)",
    requires=("performer_pytorch",), distributions=("performer-pytorch",),
    match=_match_performer,
    build=lambda s, p: PerformerFavor(s.dim, s.heads, p["nb_features"]),
    note="ours with feature_map=favor and the same number of features"))


class FastTransformersLinear(nn.Module):
    """fast-transformers' ``AttentionLayer(LinearAttention)``, non-causal, re-implemented.

    The formulation of ``fast_transformers/attention/linear_attention.py`` (0.4.0): separate q/k/v/out
    projections with bias, phi(x) = elu(x) + 1, phi(K) multiplied by the key length mask,
    KV = einsum("nshd,nshm->nhmd"), Z = 1 / (einsum("nlhd,nhd->nlh", phi(Q), sum_s phi(K)) + eps),
    V' = einsum("nlhd,nhmd,nlh->nlhm", phi(Q), KV, Z).
    """

    def __init__(self, dim: int, heads: int, eps: float = 1e-6):
        super().__init__()
        self.heads, self.eps = heads, eps
        self.query_projection = nn.Linear(dim, dim)
        self.key_projection = nn.Linear(dim, dim)
        self.value_projection = nn.Linear(dim, dim)
        self.out_projection = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, dim = x.shape
        h = self.heads
        queries = self.query_projection(x).view(b, n, h, -1)
        keys = self.key_projection(x).view(b, n, h, -1)
        values = self.value_projection(x).view(b, n, h, -1)
        q = torch.nn.functional.elu(queries) + 1
        k = torch.nn.functional.elu(keys) + 1
        lengths = mask_of(x, key_padding_mask).to(x.dtype)
        k = k * lengths[:, :, None, None]
        kv = torch.einsum("nshd,nshm->nhmd", k, values)
        z = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + self.eps)
        v = torch.einsum("nlhd,nhmd,nlh->nlhm", q, kv, z)
        out: torch.Tensor = self.out_projection(v.contiguous().view(b, n, -1))
        return out


class FastTransformersPackage(nn.Module):
    """The installed package: ``AttentionLayer(LinearAttention(d, eps))`` with length masks."""

    def __init__(self, dim: int, heads: int, eps: float = 1e-6):
        from fast_transformers.attention import AttentionLayer, LinearAttention

        super().__init__()
        self.layer = AttentionLayer(LinearAttention(dim // heads, eps=eps), dim, heads)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        from fast_transformers.masking import FullMask, LengthMask

        b, n, _ = x.shape
        lengths = (key_padding_mask.sum(1) if key_padding_mask is not None
                   else torch.full((b,), n, dtype=torch.long, device=x.device))
        lm = LengthMask(lengths, max_len=n, device=x.device)
        out: torch.Tensor = self.layer(x, x, x, FullMask(n, device=x.device), lm, lm)
        return out


FAST_TRANSFORMERS_REIMPLEMENTED = "fast-transformers formulation (re-implemented)"


def build_fast_transformers(s: Shape, p: Params) -> Built:
    """The package's layer if it imports, else the formulation re-implemented, with a label saying which."""
    try:
        importlib.import_module("fast_transformers.attention")
    except Exception:  # not installed (it compiles C++ at install time): the formulation, labelled so
        return FastTransformersLinear(s.dim, s.heads, p["eps"]), FAST_TRANSFORMERS_REIMPLEMENTED
    return (FastTransformersPackage(s.dim, s.heads, p["eps"]),
            f"fast-transformers {distribution_version('pytorch-fast-transformers')} AttentionLayer(LinearAttention)")


register_peer(Peer(
    name="fast-transformers", variant="linear",
    title="fast-transformers LinearAttention (the package if installed, else its formulation re-implemented)",
    requires=(), distributions=("pytorch-fast-transformers",),
    match=lambda s, d: ({"feature_map": "elu", "eps": 1e-6},
                        {"feature_map": "elu+1", "eps": 1e-6, "key_padding": "phi(K) * length mask"}),
    build=build_fast_transformers,
    note="ours with feature_map=elu, eps=1e-6"))
