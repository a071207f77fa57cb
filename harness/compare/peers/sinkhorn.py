"""Peer of ``sinkhorn``: lucidrains' ``sinkhorn-transformer`` ``SinkhornSelfAttention``."""
from __future__ import annotations

import torch
from torch import nn

from attnbench.harness.compare.adapters import mask_of, pad_to
from attnbench.harness.compare.registry import Params, Peer, Shape, register_peer


class LucidrainsSinkhorn(nn.Module):
    """``sinkhorn_transformer.SinkhornSelfAttention``, non-causal, Gumbel-Sinkhorn sorting
    (``non_permutative=False``) with the learned sort net (``use_simple_sort_net=True``).

    Its sort net has one output per bucket of ``max_seq_len``, and N must be exactly that many
    buckets: inputs are padded to the built length and the padding masked.
    """

    def __init__(self, dim: int, heads: int, n: int, bucket: int, iterations: int, temperature: float):
        from sinkhorn_transformer import SinkhornSelfAttention

        super().__init__()
        self.length = -(-n // bucket) * bucket
        self.attn = SinkhornSelfAttention(dim, bucket_size=bucket, max_seq_len=self.length, heads=heads,
                                          dim_head=dim // heads, causal=False, non_permutative=False,
                                          sinkhorn_iter=iterations, n_sortcut=0, temperature=temperature,
                                          attn_dropout=0.0, dropout=0.0, use_simple_sort_net=True,
                                          n_local_attn_heads=0)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[1]
        mask = mask_of(x, key_padding_mask)
        xp, maskp = pad_to(x, mask, self.length) if n < self.length else (x, mask)
        out: torch.Tensor = self.attn(xp, input_mask=None if bool(maskp.all()) else maskp)
        return out[:, :n]


def _match_sinkhorn(s: Shape, d: Params) -> tuple[Params, Params]:
    b, it, t = int(d["block_size"]), int(d["sinkhorn_iterations"]), float(d["temperature"])
    return ({"block_size": b, "sinkhorn_iterations": it, "temperature": t},
            {"bucket_size": b, "sinkhorn_iter": it, "temperature": t, "non_permutative": False,
             "use_simple_sort_net": True, "n_sortcut": 0, "max_seq_len": s.n})


register_peer(Peer(
    name="sinkhorn-transformer", variant="sinkhorn", title="lucidrains sinkhorn-transformer SinkhornSelfAttention",
    requires=("sinkhorn_transformer",), distributions=("sinkhorn-transformer",),
    match=_match_sinkhorn,
    build=lambda s, p: LucidrainsSinkhorn(s.dim, s.heads, s.n, p["bucket_size"], p["sinkhorn_iter"],
                                          p["temperature"]),
    note="same bucket, Sinkhorn iterations and temperature, Gumbel noise in training both sides; its sort net "
         "is ReLU([sum q, sum k] W_head) (ours: sum k . W shared by the heads, LRA's), one softmax over the 2b "
         "sorted+own keys (ours: two softmaxes averaged), and its sorted values are the sorted keys "
         "(b_v_r = b_k_r in 0.11.4); no bias on its q/kv projections"))
