"""Public PyTorch implementations of our variants' mechanisms ("peers"), behind our layer
interface, for ``attnbench compare``.

Each peer is built with random weights (no hub downloads) and the same model dim, heads, head
dim and mechanism settings as ours; ``forward(x (B, N, D), key_padding_mask (B, N) bool,
True = real) -> (B, N, D)``. Peers that only implement the attention core get the same
``nn.Linear`` input/output projections as ours, so both sides do the same projection work.
Peers are optional (``pip install .[peers]``).

Peers (``PEERS``; more can be registered from a module given with ``--peer-module``):

| variant | peer | package |
|---|---|---|
| window | ``LongformerSelfAttention`` | transformers |
| window | ``LocalAttention`` (exact window) | local-attention |
| sparse | ``BigBirdBlockSparseAttention`` | transformers |
| sparse | the same, mechanism alone (no dense N x N probabilities) | transformers |
| lsh | ``LSHSelfAttention`` (HF) | transformers |
| lsh | ``LSHSelfAttention`` (lucidrains) | reformer-pytorch |
| linear | ``SelfAttention`` (FAVOR+) | performer-pytorch |
| linear | ``AttentionLayer(LinearAttention)`` | pytorch-fast-transformers if installed, else re-implemented here |
| full | ``torch.nn.MultiheadAttention`` (sanity peer) | torch |
| linformer | ``LinformerSelfAttention`` (``zoo_peers``) | linformer |
| linformer | ``MHAttention`` (``zoo_peers``) | linformer-pytorch |
| nystrom | ``NystromAttention`` (``zoo_peers``) | nystrom-attention |
| sinkhorn | ``SinkhornSelfAttention`` (``zoo_peers``) | sinkhorn-transformer |
| local | ``LocalAttention``, no look-around (``zoo_peers``) | local-attention |

The peers of the later variants are in ``zoo_peers``, which the package imports, so they are in
``PEERS`` whenever ``attnbench.harness.compare`` is imported. No peer for ``synthesizer``: no
maintained PyPI package.

``pytorch-fast-transformers`` is not in the ``peers`` extra: it compiles C++ extensions at install
time (minutes; on a machine whose ``nvcc`` is a broken stub, only with that ``nvcc`` off PATH).
Without it the linear variant is compared with fast-transformers' non-causal formulation
re-implemented below (elu+1 features, padded keys' features zeroed, eps 1e-6, einsums), labelled
as such in the table.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from attnbench.variants import VARIANTS
from attnbench.variants.lib.blocks import real_lengths, resolve_positions


@dataclasses.dataclass(frozen=True)
class Shape:
    """What both sides of a comparison share."""

    n: int
    batch: int = 1
    heads: int = 4
    head_dim: int = 64

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim


@dataclasses.dataclass(frozen=True)
class Peer:
    """A public implementation of one of our variants' mechanisms.

    ``match(shape, defaults)`` returns (our variant's params, the peer's settings) for the same
    mechanism; ``defaults`` are our variant's config defaults. ``build(shape, settings)`` returns an
    ``nn.Module`` with ``forward(x (B, N, D), key_padding_mask (B, N) bool, True = real) -> (B, N, D)``,
    or a (module, label) pair when the label depends on what was importable.
    """

    name: str
    variant: str
    title: str
    requires: tuple[str, ...]
    distributions: tuple[str, ...]
    match: Callable[[Shape, dict], tuple[dict, dict]]
    build: Callable[[Shape, dict], Any]
    note: str = ""


PEERS: dict[str, Peer] = {}


def register_peer(peer: Peer) -> Peer:
    PEERS[peer.name] = peer
    return peer


def missing_modules(peer: Peer) -> list[str]:
    """The modules of ``peer.requires`` that cannot be imported (not installed or broken)."""
    missing = []
    for mod in peer.requires:
        try:
            importlib.import_module(mod)
        except Exception as exc:  # ImportError, or a package that fails while importing
            missing.append(f"{mod} ({type(exc).__name__}: {exc})")
    return missing


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _defaults(variant: str) -> dict:
    cfg = VARIANTS.get(variant).config
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
            for f in dataclasses.fields(cfg)}


def _all_real(mask: torch.Tensor | None) -> bool:
    return mask is None or bool(mask.all())


def _pad_to(x: torch.Tensor, mask: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = (-x.shape[1]) % multiple
    if not extra:
        return x, mask
    x = torch.nn.functional.pad(x, (0, 0, 0, extra))
    mask = torch.nn.functional.pad(mask, (0, extra), value=False)
    return x, mask


class _QKVOut(nn.Module):
    """Projections shaped like ours (``qkv``: D -> 3D, ``out``: D -> D) around a peer's attention core."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        return self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, N, d) x3

    def merge(self, o: torch.Tensor) -> torch.Tensor:
        b, h, n, d = o.shape
        return self.out(o.transpose(1, 2).reshape(b, n, h * d))


# --- full: torch.nn.MultiheadAttention (sanity peer) -------------------------------------------

class TorchMHA(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)

    def forward(self, x, key_padding_mask=None):
        kpm = None if _all_real(key_padding_mask) else ~key_padding_mask  # MHA: True = masked
        return self.mha(x, x, x, key_padding_mask=kpm, need_weights=False)[0]


register_peer(Peer(
    name="torch-mha", variant="full", title="torch.nn.MultiheadAttention (sanity peer)",
    requires=("torch",), distributions=("torch",),
    match=lambda s, d: ({}, {"dropout": 0.0, "need_weights": False}),
    build=lambda s, p: TorchMHA(s.dim, s.heads),
    note="full softmax attention both sides; MHA also dispatches to SDPA"))


# --- full: a plain SDPA layer (the floor full attention is measured against) ----------------------

class PlainSDPA(nn.Module):
    """The least a full-attention layer can be: a fused q/k/v ``nn.Linear``, torch's
    ``scaled_dot_product_attention`` restricted to its flash kernel when no mask is needed (the kernel
    torch picks on a CPU for float32 without a mask), and an output ``nn.Linear``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, key_padding_mask=None):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if _all_real(key_padding_mask):
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_padding_mask[:, None, None, :])
        return self.out(o.transpose(1, 2).reshape(b, n, d))


register_peer(Peer(
    name="torch-sdpa", variant="full", title="plain SDPA layer (fused qkv Linear, flash kernel)",
    requires=("torch",), distributions=("torch",),
    match=lambda s, d: ({}, {"kernel": "flash (no mask)", "projections": "fused qkv Linear + out Linear"}),
    build=lambda s, p: PlainSDPA(s.dim, s.heads),
    note="full softmax attention both sides: the floor a full-attention layer can reach"))


# --- window: HF Longformer ---------------------------------------------------------------------

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

    def forward(self, x, key_padding_mask=None):
        b, n, _ = x.shape
        mask = key_padding_mask if key_padding_mask is not None else torch.ones(b, n, dtype=torch.bool, device=x.device)
        xp, maskp = _pad_to(x, mask, self.multiple)
        enc = torch.zeros(maskp.shape, dtype=x.dtype, device=x.device).masked_fill(~maskp, -10000.0)
        idx, ok = resolve_positions(self.global_tokens, real_lengths(mask))  # our semantics of positions
        for i in range(b):
            enc[i, idx[i][ok[i]]] = 10000.0
        is_masked, is_global = enc < 0, enc > 0
        out = self.attn(xp, attention_mask=enc, is_index_masked=is_masked, is_index_global_attn=is_global,
                        is_global_attn=bool(is_global.any()))[0]
        return self.out(out[:, :n])


def _match_longformer(s: Shape, d: dict) -> tuple[dict, dict]:
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


# --- window: lucidrains local-attention ----------------------------------------------------------

class LucidrainsLocal(_QKVOut):
    """``local_attention.LocalAttention`` with ``exact_windowsize`` (|i - j| <= w), no rotary embedding."""

    def __init__(self, dim: int, heads: int, window: int):
        from local_attention import LocalAttention

        super().__init__(dim, heads)
        self.window = window
        self.attn = LocalAttention(window_size=window, causal=False, look_backward=1, look_forward=1,
                                   dropout=0.0, exact_windowsize=True, autopad=True, use_rotary_pos_emb=False)

    def forward(self, x, key_padding_mask=None):
        q, k, v = self.split(x)
        mask = None if _all_real(key_padding_mask) else key_padding_mask
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


# --- sparse: HF BigBird block-sparse -------------------------------------------------------------

class HFBigBird(nn.Module):
    """``BigBirdBlockSparseAttention`` (ITC: first and last block global, 3 sliding, r random blocks)."""

    def __init__(self, dim: int, heads: int, block: int, random_blocks: int, n: int):
        from transformers import BigBirdConfig
        from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention

        super().__init__()
        cfg = BigBirdConfig(hidden_size=dim, num_attention_heads=heads, attention_type="block_sparse",
                            block_size=block, num_random_blocks=random_blocks, attention_probs_dropout_prob=0.0,
                            max_position_embeddings=max(4096, n), num_hidden_layers=1)
        self.attn = BigBirdBlockSparseAttention(cfg, seed=0)
        self.out = nn.Linear(dim, dim)
        self.block, self.random_blocks = block, random_blocks

    def forward(self, x, key_padding_mask=None):
        from transformers.models.big_bird.modeling_big_bird import BigBirdModel

        b, n, _ = x.shape
        limit = (5 + 2 * self.random_blocks) * self.block
        if n <= limit:
            raise ValueError(f"HF BigBird block-sparse needs N > (5 + 2r) * block = {limit}; "
                             f"BigBirdModel switches to full attention at N = {n}")
        mask = key_padding_mask if key_padding_mask is not None else torch.ones(b, n, dtype=torch.bool, device=x.device)
        xp, maskp = _pad_to(x, mask, self.block)
        blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(maskp.to(x.dtype),
                                                                                             self.block)
        out, _ = self.attn(xp, band_mask=band, from_mask=from_mask, to_mask=to_mask,
                           from_blocked_mask=blocked, to_blocked_mask=blocked)
        return self.out(out[:, :n])


def _match_bigbird(s: Shape, d: dict) -> tuple[dict, dict]:
    b, r = int(d["block_size"]), int(d["random_blocks"])
    return ({"block_size": b, "window_blocks": 1, "global_blocks": (0, -1), "random_blocks": r, "strided_every": 0},
            {"attention_type": "block_sparse", "block_size": b, "num_random_blocks": r,
             "layout": "ITC: global first and last block, 3 sliding blocks, r random blocks"})


register_peer(Peer(
    name="hf-bigbird", variant="sparse", title="HF transformers BigBirdBlockSparseAttention",
    requires=("transformers.models.big_bird.modeling_big_bird",), distributions=("transformers",),
    match=_match_bigbird,
    build=lambda s, p: HFBigBird(s.dim, s.heads, p["block_size"], p["num_random_blocks"], s.n),
    note="random blocks drawn on the host with NumPy each forward (training mode); + an output nn.Linear"))


class _SkipDenseProbs(torch.overrides.TorchFunctionMode):
    """Drops HF BigBird's reassembly of the dense (B, H, N, N) attention-probability matrix, which
    transformers 5 builds on every forward (and the layer's caller discards): the ``torch.zeros``
    of that shape returns an empty stand-in, and the writes into it (slice assignments, views,
    scatters) are skipped. Everything that computes the output runs unchanged."""

    WRITES = {"__setitem__", "__getitem__", "view", "scatter_"}

    def __init__(self, dense_shape: tuple[int, ...]):
        super().__init__()
        self.dense_shape, self.stand_in, self.skipped = dense_shape, None, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if func is torch.zeros and tuple(args) == self.dense_shape:
            self.stand_in = torch.empty(0, dtype=kwargs.get("dtype"), device=kwargs.get("device"))
            self.skipped += 1
            return self.stand_in
        if self.stand_in is not None and name in self.WRITES and args and args[0] is self.stand_in:
            return self.stand_in
        return func(*args, **kwargs)


class HFBigBirdCore(HFBigBird):
    """HF BigBird's block-sparse mechanism alone: as ``HFBigBird``, without the dense N x N
    attention-probability matrix that transformers 5 reassembles on every forward."""

    def forward(self, x, key_padding_mask=None):
        n = x.shape[1] + (-x.shape[1]) % self.block
        mode = _SkipDenseProbs((x.shape[0], self.attn.num_attention_heads, n, n))
        with mode:
            out = super().forward(x, key_padding_mask)
        self.skipped_dense = mode.skipped
        return out


register_peer(Peer(
    name="hf-bigbird-core", variant="sparse", title="HF transformers BigBirdBlockSparseAttention, mechanism alone",
    requires=("transformers.models.big_bird.modeling_big_bird",), distributions=("transformers",),
    match=_match_bigbird,
    build=lambda s, p: HFBigBirdCore(s.dim, s.heads, p["block_size"], p["num_random_blocks"], s.n),
    note="as hf-bigbird, with its dense N x N attention-probability reassembly skipped (returned, never used)"))


# --- lsh: HF Reformer ----------------------------------------------------------------------------

class HFReformerLSH(nn.Module):
    """``LSHSelfAttention`` (shared QK, no-bias projections) plus an output projection."""

    def __init__(self, dim: int, heads: int, settings: dict, n: int):
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
                             max_position_embeddings=max(n, 4096), axial_pos_embds=False, num_hidden_layers=1)
        self.attn = LSHSelfAttention(cfg, layer_idx=0)
        self.out = nn.Linear(dim, dim)
        self.chunk = c

    def forward(self, x, key_padding_mask=None):
        b, n, _ = x.shape
        mask = key_padding_mask if key_padding_mask is not None else torch.ones(b, n, dtype=torch.bool, device=x.device)
        xp, maskp = _pad_to(x, mask, self.chunk)  # ReformerModel pads to a multiple of the chunk length
        am = None if bool(maskp.all()) else maskp.long()
        out = self.attn(hidden_states=xp, attention_mask=am).hidden_states
        return self.out(out[:, :n])


def _match_hf_lsh(s: Shape, d: dict) -> tuple[dict, dict]:
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


# --- lsh: lucidrains reformer-pytorch ------------------------------------------------------------

class LucidrainsReformerLSH(nn.Module):
    """``reformer_pytorch.LSHSelfAttention``: its own qk/v/out projections; N padded to 2 * bucket_size."""

    def __init__(self, dim: int, heads: int, bucket_size: int, n_hashes: int):
        from reformer_pytorch import LSHSelfAttention

        super().__init__()
        self.attn = LSHSelfAttention(dim=dim, heads=heads, dim_head=dim // heads, bucket_size=bucket_size,
                                     n_hashes=n_hashes, causal=False, attn_chunks=1, dropout=0.0,
                                     post_attn_dropout=0.0)
        self.multiple = 2 * bucket_size

    def forward(self, x, key_padding_mask=None):
        b, n, _ = x.shape
        mask = key_padding_mask if key_padding_mask is not None else torch.ones(b, n, dtype=torch.bool, device=x.device)
        xp, maskp = _pad_to(x, mask, self.multiple)  # what reformer-pytorch's Autopadder does
        out = self.attn(xp, input_mask=None if bool(maskp.all()) else maskp)
        return out[:, :n]


def _match_lucidrains_lsh(s: Shape, d: dict) -> tuple[dict, dict]:
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


# --- linear: performer-pytorch -------------------------------------------------------------------

class PerformerFavor(nn.Module):
    """``performer_pytorch.SelfAttention``: FAVOR+ with ``nb_features`` orthogonal random features."""

    def __init__(self, dim: int, heads: int, n_features: int):
        from performer_pytorch import SelfAttention

        super().__init__()
        self.attn = SelfAttention(dim=dim, heads=heads, dim_head=dim // heads, nb_features=n_features,
                                  causal=False, dropout=0.0, qkv_bias=True, attn_out_bias=True)

    def forward(self, x, key_padding_mask=None):
        return self.attn(x, mask=None if _all_real(key_padding_mask) else key_padding_mask)


def _match_performer(s: Shape, d: dict) -> tuple[dict, dict]:
    m = int(d.get("n_features") or 0) or int(s.head_dim * math.log(s.head_dim))
    return ({"feature_map": "favor", "n_features": m, "redraw": False},
            {"nb_features": m, "generalized_attention": False, "qkv_bias": True, "feature_redraw": "none"})


register_peer(Peer(
    name="performer-pytorch", variant="linear", title="lucidrains performer-pytorch SelfAttention (FAVOR+)",
    requires=("performer_pytorch",), distributions=("performer-pytorch",),
    match=_match_performer,
    build=lambda s, p: PerformerFavor(s.dim, s.heads, p["nb_features"]),
    note="ours with feature_map=favor and the same number of features"))


# --- linear: fast-transformers -------------------------------------------------------------------

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

    def forward(self, x, key_padding_mask=None):
        b, n, dim = x.shape
        h = self.heads
        queries = self.query_projection(x).view(b, n, h, -1)
        keys = self.key_projection(x).view(b, n, h, -1)
        values = self.value_projection(x).view(b, n, h, -1)
        q = torch.nn.functional.elu(queries) + 1
        k = torch.nn.functional.elu(keys) + 1
        lengths = (key_padding_mask if key_padding_mask is not None
                   else torch.ones(b, n, dtype=torch.bool, device=x.device)).to(x.dtype)
        k = k * lengths[:, :, None, None]
        kv = torch.einsum("nshd,nshm->nhmd", k, values)
        z = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + self.eps)
        v = torch.einsum("nlhd,nhmd,nlh->nlhm", q, kv, z)
        return self.out_projection(v.contiguous().view(b, n, -1))


class FastTransformersPackage(nn.Module):
    """The installed package: ``AttentionLayer(LinearAttention(d, eps))`` with length masks."""

    def __init__(self, dim: int, heads: int, eps: float = 1e-6):
        from fast_transformers.attention import AttentionLayer, LinearAttention

        super().__init__()
        self.layer = AttentionLayer(LinearAttention(dim // heads, eps=eps), dim, heads)

    def forward(self, x, key_padding_mask=None):
        from fast_transformers.masking import FullMask, LengthMask

        b, n, _ = x.shape
        lengths = (key_padding_mask.sum(1) if key_padding_mask is not None
                   else torch.full((b,), n, dtype=torch.long, device=x.device))
        lm = LengthMask(lengths, max_len=n, device=x.device)
        return self.layer(x, x, x, FullMask(n, device=x.device), lm, lm)


FAST_TRANSFORMERS_REIMPLEMENTED = "fast-transformers formulation (re-implemented)"


def _build_fast_transformers(s: Shape, p: dict):
    try:
        importlib.import_module("fast_transformers.attention")
    except Exception:  # not installed (it compiles C++ at install time): the formulation, labelled so
        return FastTransformersLinear(s.dim, s.heads, p["eps"]), FAST_TRANSFORMERS_REIMPLEMENTED
    return (FastTransformersPackage(s.dim, s.heads, p["eps"]),
            f"fast-transformers {_version('pytorch-fast-transformers')} AttentionLayer(LinearAttention)")


register_peer(Peer(
    name="fast-transformers", variant="linear",
    title="fast-transformers LinearAttention (the package if installed, else its formulation re-implemented)",
    requires=(), distributions=("pytorch-fast-transformers",),
    match=lambda s, d: ({"feature_map": "elu", "eps": 1e-6},
                        {"feature_map": "elu+1", "eps": 1e-6, "key_padding": "phi(K) * length mask"}),
    build=_build_fast_transformers,
    note="ours with feature_map=elu, eps=1e-6"))
