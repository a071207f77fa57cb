"""Peers of the later variants (linformer, nystrom, sinkhorn, local), registered into ``peers.PEERS``.

Imported by the package (``attnbench.harness.compare``), so every process that reads the registry
(``attnbench compare`` and its fresh worker processes) has them. Same conventions as ``peers``:
random weights, the same model dim, heads, head dim and mechanism settings as ours, our layer
interface ``forward(x (B, N, D), key_padding_mask (B, N) bool, True = real) -> (B, N, D)``, the
packages imported only when a peer is built (all optional: ``pip install .[peers]``).

| variant | peer | package |
|---|---|---|
| linformer | ``LinformerSelfAttention`` | linformer (lucidrains) |
| linformer | ``MHAttention`` (Linformer heads) | linformer-pytorch |
| nystrom | ``NystromAttention`` | nystrom-attention |
| sinkhorn | ``SinkhornSelfAttention`` (Sinkhorn sorting, learned sort net) | sinkhorn-transformer |
| local | ``LocalAttention`` (non-overlapping windows, no look-around) | local-attention |

No peer for ``synthesizer``: there is no maintained PyPI package of the Synthesizer (Tay et al.
2021) attention layer.
"""
from __future__ import annotations

import torch
from torch import nn

from attnbench.harness.compare.peers import Peer, Shape, _all_real, _pad_to, _QKVOut, register_peer


def _mask_of(x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    if key_padding_mask is not None:
        return key_padding_mask
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


# --- linformer: lucidrains linformer -------------------------------------------------------------

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

    def forward(self, x, key_padding_mask=None):
        if not _all_real(key_padding_mask):
            x = x * key_padding_mask[..., None].to(x.dtype)
        return self.attn(x)


def _match_lucidrains_linformer(s: Shape, d: dict) -> tuple[dict, dict]:
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


# --- linformer: linformer-pytorch (tatp22) -------------------------------------------------------

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

    def forward(self, x, key_padding_mask=None):
        n = x.shape[1]
        xp, maskp = _pad_to(x, _mask_of(x, key_padding_mask), self.n) if n < self.n else \
            (x, _mask_of(x, key_padding_mask))
        if bool(maskp.all()):
            return self.attn(xp)[:, :n]
        return self.attn(xp, input_mask=maskp)[:, :n]


#: (ours per_head, ours share_kv) -> linformer-pytorch's parameter_sharing
_SHARING = {(False, False): "headwise", (False, True): "kv", (True, False): "none"}


def _match_linformer_pytorch(s: Shape, d: dict) -> tuple[dict, dict]:
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


# --- nystrom: lucidrains nystrom-attention -------------------------------------------------------

class LucidrainsNystrom(nn.Module):
    """``nystrom_attention.NystromAttention``: its own q/k/v (no bias) and output projections.

    It pads N at the front to a multiple of the landmarks; its padding is masked only when a mask is
    given, so the adapter passes one whenever N is not a multiple of the landmarks (or there is padding).
    """

    def __init__(self, dim: int, heads: int, landmarks: int, iterations: int, conv_kernel: int):
        from nystrom_attention import NystromAttention

        super().__init__()
        self.landmarks = landmarks
        self.attn = NystromAttention(dim=dim, dim_head=dim // heads, heads=heads, num_landmarks=landmarks,
                                     pinv_iterations=iterations, residual=conv_kernel > 0,
                                     residual_conv_kernel=conv_kernel or 33, dropout=0.0)

    def forward(self, x, key_padding_mask=None):
        if _all_real(key_padding_mask) and x.shape[1] % self.landmarks == 0:
            return self.attn(x)
        return self.attn(x, mask=_mask_of(x, key_padding_mask))


def _match_nystrom(s: Shape, d: dict) -> tuple[dict, dict]:
    m, it, ck = int(d["landmarks"]), int(d["pinv_iterations"]), int(d["conv_kernel"])
    return ({"landmarks": m, "pinv_iterations": it, "conv_kernel": ck},
            {"num_landmarks": m, "pinv_iterations": it, "residual": ck > 0, "residual_conv_kernel": ck or None})


register_peer(Peer(
    name="nystrom-attention", variant="nystrom", title="lucidrains nystrom-attention NystromAttention",
    requires=("nystrom_attention",), distributions=("nystrom-attention",),
    match=_match_nystrom,
    build=lambda s, p: LucidrainsNystrom(s.dim, s.heads, p["num_landmarks"], p["pinv_iterations"],
                                         p["residual_conv_kernel"] or 0),
    note="same landmarks, pinv iterations and conv skip; its pinv init Z0 = A^T / (max col sum * max row sum) "
         "is taken over the whole batch and all heads (ours per element and head); with padding or N not a "
         "multiple of m it pads at the front and its segments are positional (ours: over the real tokens); "
         "no bias on its q/k/v projections"))


# --- sinkhorn: lucidrains sinkhorn-transformer ---------------------------------------------------

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

    def forward(self, x, key_padding_mask=None):
        n = x.shape[1]
        mask = _mask_of(x, key_padding_mask)
        xp, maskp = _pad_to(x, mask, self.length) if n < self.length else (x, mask)
        return self.attn(xp, input_mask=None if bool(maskp.all()) else maskp)[:, :n]


def _match_sinkhorn(s: Shape, d: dict) -> tuple[dict, dict]:
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


# --- local: lucidrains local-attention, no look-around -------------------------------------------

class LucidrainsLocalBlocks(_QKVOut):
    """``local_attention.LocalAttention`` with ``look_backward = look_forward = 0``: each query attends
    the keys of its own window of ``window_size`` tokens, i.e. non-overlapping blocks. Its autopadding is
    masked only when a mask is given, so the adapter passes one whenever N is not a multiple of the block."""

    def __init__(self, dim: int, heads: int, block: int):
        from local_attention import LocalAttention

        super().__init__(dim, heads)
        self.block = block
        self.attn = LocalAttention(window_size=block, causal=False, look_backward=0, look_forward=0, dropout=0.0,
                                   exact_windowsize=False, autopad=True, use_rotary_pos_emb=False)

    def forward(self, x, key_padding_mask=None):
        q, k, v = self.split(x)
        mask = None
        if not _all_real(key_padding_mask) or x.shape[1] % self.block:
            mask = _mask_of(x, key_padding_mask)
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
