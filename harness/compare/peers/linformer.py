"""Peers of ``linformer``: lucidrains' ``linformer`` ``LinformerSelfAttention`` and tatp22's
``linformer-pytorch`` ``MHAttention``."""
from __future__ import annotations

import torch
from torch import nn

from attnbench.harness.compare.adapters import mask_of, pad_to
from attnbench.harness.compare.registry import Params, Peer, Shape, register_peer


class LucidrainsLinformer(nn.Module):
    """``linformer.LinformerSelfAttention``: E, F (seq_len, k) shared by the heads, separate for K and V.

    It takes no mask: padded rows of x are zeroed, so (its q/k/v projections have no bias) padded keys
    and values are zero before the length projection, which is what ours does with the mask.
    """

    def __init__(self, dim: int, heads: int, n: int, k: int):
        from linformer import LinformerSelfAttention

        super().__init__()
        self.attn = LinformerSelfAttention(dim, seq_len=n, k=k, heads=heads, dim_head=dim // heads,
                                           one_kv_head=False, share_kv=False, dropout=0.0)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if key_padding_mask is not None and not bool(key_padding_mask.all()):
            x = x * key_padding_mask[..., None].to(x.dtype)
        out: torch.Tensor = self.attn(x)
        return out


def _match_lucidrains_linformer(s: Shape, d: Params) -> tuple[Params, Params]:
    k = min(int(d["k"]), s.n)  # ours reduces k to max_len = N
    return ({"k": k, "share_kv": False, "per_head": False},
            {"seq_len": s.n, "k": k, "one_kv_head": False, "share_kv": False})


register_peer(Peer(
    name="linformer", variant="linformer", title="lucidrains linformer LinformerSelfAttention",
    requires=("linformer",), distributions=("linformer",),
    match=_match_lucidrains_linformer,
    build=lambda s, p: LucidrainsLinformer(s.dim, s.heads, p["seq_len"], p["k"]),
    note="E, F shared by the heads, separate for K and V, U(+-1/sqrt(k)) init, as ours; its share_kv also "
         "shares the key/value projection, so both sides run without sharing; no bias on its q/k/v projections; "
         "no mask in its API (the adapter zeroes padded rows)"))


class LinformerPytorch(nn.Module):
    """``linformer_pytorch.MHAttention`` (one layer of Linformer heads), its ``input_mask`` for padding.

    E and F are ``nn.Linear(input_size, k)``: N must be ``input_size``, so shorter inputs are padded to it
    and the padding masked (it zeroes masked keys and values before the projection, as ours).
    """

    def __init__(self, dim: int, heads: int, n: int, k: int, sharing: str):
        from linformer_pytorch.linformer_pytorch import MHAttention

        super().__init__()
        self.n = n
        self.attn = MHAttention(input_size=n, dim=dim // heads, channels=dim, dim_k=k, nhead=heads, dropout=0.0,
                                checkpoint_level="C0", parameter_sharing=sharing, E_proj=None, F_proj=None,
                                full_attention=False, causal_mask=None, method="learnable")

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[1]
        mask = mask_of(x, key_padding_mask)
        xp, maskp = pad_to(x, mask, self.n) if n < self.n else (x, mask)
        out: torch.Tensor = self.attn(xp) if bool(maskp.all()) else self.attn(xp, input_mask=maskp)
        return out[:, :n]


#: (ours per_head, ours share_kv) -> linformer-pytorch's parameter_sharing
_SHARING = {(False, False): "headwise", (False, True): "kv", (True, False): "none"}


def _match_linformer_pytorch(s: Shape, d: Params) -> tuple[Params, Params]:
    k = min(int(d["k"]), s.n)
    per_head, share_kv = bool(d["per_head"]), bool(d["share_kv"])
    if (per_head, share_kv) not in _SHARING:  # per head and shared K/V: no such mode there
        share_kv = False
    return ({"k": k, "share_kv": share_kv, "per_head": per_head},
            {"input_size": s.n, "dim_k": k, "parameter_sharing": _SHARING[per_head, share_kv],
             "method": "learnable"})


register_peer(Peer(
    name="linformer-pytorch", variant="linformer", title="linformer-pytorch MHAttention",
    requires=("linformer_pytorch.linformer_pytorch",), distributions=("linformer-pytorch",),
    match=_match_linformer_pytorch,
    build=lambda s, p: LinformerPytorch(s.dim, s.heads, p["input_size"], p["dim_k"], p["parameter_sharing"]),
    note="same E/F sharing as ours (headwise: shared by the heads, E != F); its E, F are nn.Linear with a bias "
         "and xavier-normal init (ours: no bias, U(+-1/sqrt(k))); a Python loop over heads with per-head q/k/v "
         "nn.Linear without bias"))
