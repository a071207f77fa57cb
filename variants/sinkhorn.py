"""Sparse Sinkhorn attention (Tay et al. 2020; LRA's "Sinkhorn Trans.").

Per head (B batch, H heads, N tokens, Dh head dim, b = ``block_size``, nb = N / b blocks):

1. the sequence is cut into blocks of b tokens (padded to a multiple of b, the padding masked);
   padded keys and values are zeroed;
2. sorting network: each block's summary is the sum of its keys (LRA sums the keys of a block;
   the sum runs over real tokens only), s (B, H, nb, Dh). A learned matrix W (Dh, nb_max), shared
   by the heads and without bias as in LRA (``DenseGeneral`` with ``max_num_blocks`` outputs,
   cut to the blocks present), gives the logits R[i, j] = s_i . W[:, j] of sending block j to
   block i's sorted slot. nb_max = ceil(max_len / b), so the layer refuses longer inputs;
3. Gumbel-Sinkhorn (Mena et al. 2018): in training, Gumbel noise from torch's global generator is
   added to R; then R / ``temperature`` goes through ``sinkhorn_iterations`` rounds of log-domain
   row then column normalisation, and P = exp(.) is a soft permutation (nb x nb, doubly
   stochastic over the real blocks). In eval mode no noise is added, so evaluation is
   deterministic and there is no eval seed;
4. the sorted keys and values of block i are P[i] @ (key blocks), (B, H, nb, b, Dh): slot t of
   sorted block i mixes slot t of every block. A sorted slot whose mixture holds no real key
   (sum_j P[i, j] m_j[t] = 0, e.g. the tail of a partly padded only block) is masked;
5. each query block attends to its own block and, separately, to its sorted block: two softmaxes
   over b keys each, scaled by 1/sqrt(Dh), and the two outputs are averaged. A half with no
   allowed key counts as absent (the other half alone; zeros if neither).

Faithfulness. The paper and LRA's code add the two attentions, softmax(Q K_own^T) V_own +
softmax(Q K_sorted^T) V_sorted; here they are averaged, which is the same up to a factor 2 that the output
projection absorbs, and makes the one-block limit exact: with one block P = [[1]] exactly, the sorted block
is the block itself, both halves are full softmax attention and their mean is too (keys counted in both
halves count once per half, as in the reference; nothing is double-counted within a softmax). LRA's
Sinkhorn operator (which its default sort activation never calls) clips the log-matrix to [-1, 1] before
exp; not done here (P stays doubly stochastic). lucidrains' sinkhorn-transformer (temperature 0.75, Gumbel
noise also at eval, ReLU sort net from queries and keys, one softmax over the concatenated blocks, top-1
hard reordering) is the source of the temperature and iteration defaults.

Padding. Appended padding adds whole padding blocks and may pad the tail of the last real
block. Summaries count real tokens only; in the logits the (real, pad) and (pad, real) entries
are -inf and the (pad, pad) block is the identity (0 on the diagonal, -inf elsewhere), so the
matrix is block diagonal and log-domain Sinkhorn normalises the real x real sub-matrix exactly
as without padding (exp(-inf) adds exact zeros); padded keys are masked in both softmaxes. A
batch element without a real token is all padding (P = I) and gives zeros. In training the
noise is drawn for the padded shape, so a training forward with more padding draws different
(equally distributed) noise.

Precision: fp16/bf16 inputs are computed in float32 (autocast is switched off inside
``attend``: the Sinkhorn normalisation and both softmaxes) and cast back; float64 stays float64.

Cost per head: the attention is O(N b) time and memory; the sorting matrix is O((N/b)^2) time
and memory; mixing the sorted blocks (P @ key blocks) is O(N^2 / b * Dh) time but O(N Dh)
memory. The forward reads nothing back to the host.

``form: lra_released``: what LRA's released code computes
(``lra_benchmarks/models/sinkhorn_transformer/sinkhorn_attention.py``), which sorts nothing. Its quirks
are one form, not separate options, because they only mean something together: the einsum makes the
sorting network's output irrelevant, so a choice of sort activation (Sinkhorn or LRA's softmax) has no
effect on it, while a correct permutation under LRA's softmax or strided groups is a mechanism that nobody
ran. Per element, head and group (b = ``block_size``, L a multiple of b, nb = L / b):
1. groups: LRA's reshape of (batch, L, heads, d) to (batch, b, nb, heads, d) (:343-348): group g holds the
   positions equal to g mod nb, its slot s being position s nb + g (``lib.strided_groups``);
2. the sorting network: each group's summary is the sum of its b keys (:355, padded keys included), times a
   learned (Dh, 25) matrix (LRA's ``max_num_blocks`` = 25, :216, a ``DenseGeneral`` without bias, Xavier), cut
   to the first min(nb, 25) outputs (:366), then a row softmax (``sort_activation='softmax'``, :217, :380):
   no Sinkhorn iterations, no temperature, no noise (``sinkhorn_iterations`` and ``temperature`` are
   unused);
3. the sorted keys and values: LRA's ``einsum('bskhd,bnhl->bsnhd', block_key, permutation)`` (:382-383)
   sums over the key groups k and over the permutation's columns l separately, so sorted slot s of group g
   is (sum_l P[g, l]) * (sum_k key at slot s of group k): the sum of the keys at positions s nb, ...,
   s nb + nb - 1, the same for every group, times the row sum of a softmax, 1 up to rounding. The sorting
   network is computed (its parameters exist as in LRA) but has no effect on the output and gets a
   gradient that is zero up to rounding;
4. masks: LRA cuts the padding mask (batch, L) into consecutive runs of b (:403-404), entry (g, s) being
   position g b + s although group g's slot s is position s nb + g: own-group query s and key t are allowed
   when entries (g, s) and (g, t) are True; sorted query s and key t when some group k has entries (k, s) and
   (k, t) True (the einsum over the mask, :418-419). A masked pair gets -1e10 (:447-461), so a query row with
   no allowed key attends uniformly to its b keys (``lib.strided_groups``);
5. two softmax attentions over each group's b keys, own and sorted (each with its own attention dropout,
   per weight), scaled by 1/sqrt(Dh), and their outputs ADDED (:492).
Padded keys are not zeroed; padding and the mask cut make the output depend on the padding. The
conventions of ``Attention`` on padding do not hold, so such a layer sets ``supports_padding_mask = False``
on itself (the conformance checks then skip the padding checks; ``tests/variants/test_lra_strided_groups.py``
shows it fails them). LRA needs L to be a multiple of b (its reshape fails otherwise; LRA's
Sinkhorn tasks give 2000, 1000, 4000 tokens at b = 50 and 1024 at b = 64, with MEAN pooling and no [CLS]);
here a length that is not is padded with zero tokens masked as padding (mask False), as padding tokens
appended to the input would be in LRA, and an input shorter than b is one group of its own length. In
fp16/bf16 it is computed in float32, as the paper form.
Its cost per head: O(N b) time and memory for the attention and O(N Dh) for the sums.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.functional import scaled_dot_product_attention

from attnbench.harness.core.registry import param
from attnbench.variants.base import VARIANTS, Attention, padding_mask_or_none
from attnbench.variants.lib.blocks import pad_to_multiple, real_lengths
from attnbench.variants.lib.strided_groups import (
    contiguous_cut,
    group_strided,
    lra_group_attention,
    lra_pair_mask,
    ungroup_strided,
)

#: outputs of the sorting network of LRA's released layer (``max_num_blocks``, sinkhorn_attention.py:216)
LRA_MAX_NUM_BLOCKS = 25


@dataclass(frozen=True)
class SinkhornConfig:
    """Sparse Sinkhorn attention: blocks, the sorting network and Gumbel-Sinkhorn."""

    block_size: int = param(64, "tokens per block (LRA's Sinkhorn configs: 64 on Image, 50 by default)",
                            minimum=1)
    sinkhorn_iterations: int = param(8, "rounds of row and column normalisation of the sorting matrix",
                                     minimum=1)
    temperature: float = param(0.75, "Gumbel-Sinkhorn temperature: the logits (and noise) are divided by it",
                               exclusiveMinimum=0)
    form: Literal["paper", "lra_released"] = param(
        "paper", "paper: Gumbel-Sinkhorn sorting of contiguous blocks; lra_released: LRA's released code "
        "(sinkhorn_transformer/sinkhorn_attention.py:216-217, :343-492): strided groups, softmax sort, the einsum "
        "(:382) that adds every group's keys instead of sorting, the padding mask cut contiguously, halves added",
        added_later=True)


def gumbel_noise(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Standard Gumbel samples -log(-log(u)), u uniform from torch's global generator, kept finite."""
    u = torch.rand(shape, dtype=dtype, device=device)
    u = u.clamp(min=torch.finfo(dtype).tiny, max=1.0 - torch.finfo(dtype).eps)
    return -torch.log(-torch.log(u))


def block_diagonal_logits(logits: torch.Tensor, real_blocks: torch.Tensor) -> torch.Tensor:
    """(B, H, nb, nb) logits and (B, nb) bool real blocks -> logits on real x real, -inf between
    real and padding blocks, and the identity (0 diagonal, -inf elsewhere) on padding x padding."""
    nb = logits.shape[-1]
    both = (real_blocks[:, :, None] & real_blocks[:, None, :])[:, None]
    eye = torch.eye(nb, dtype=torch.bool, device=logits.device)
    pad_diag = ((~real_blocks)[:, :, None] & eye)[:, None]
    fill = torch.where(pad_diag, 0.0, float("-inf")).to(logits.dtype)
    return torch.where(both, logits, fill)


def log_sinkhorn(log_alpha: torch.Tensor, iterations: int) -> torch.Tensor:
    """``iterations`` rounds of row then column normalisation in the log domain, then exp.

    Every row and column must hold a finite entry (``block_diagonal_logits`` sees to it), so no
    logsumexp is taken over -inf alone and nothing is NaN; -inf entries come out exactly 0.
    """
    for _ in range(iterations):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-2, keepdim=True)
    return torch.exp(log_alpha)


def _block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None,
                     dropout: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each query block against its own b keys: q, k, v (B, H, nb, b, Dh), allowed (B, 1 or H, nb, b)
    bool or None. Returns the output (B, H, nb, b, Dh), zeros in blocks with no allowed key, and
    (B, 1 or H, nb) whether each block had one (None: all had)."""
    bsz, heads, nb, blk, d = q.shape
    mask = has_key = None
    if allowed is not None:
        has_key = allowed.any(-1)
        # a block without an allowed key attends to all of them and its output is then replaced by
        # zeros: no kernel sees a fully masked row (NaN in some kernels' forward or backward), and the
        # discarded rows send no gradient back
        mask = (allowed | ~has_key[..., None]).expand(bsz, heads, nb, blk).reshape(bsz, heads * nb, 1, blk)
    out = scaled_dot_product_attention(q.reshape(bsz, heads * nb, blk, d), k.reshape(bsz, heads * nb, blk, d),
                                       v.reshape(bsz, heads * nb, blk, d), attn_mask=mask, dropout_p=dropout)
    out = out.view(bsz, heads, nb, blk, d)
    if has_key is None:
        return out, None
    return torch.where(has_key[..., None, None], out, 0.0), has_key


@VARIANTS.register("sinkhorn", SinkhornConfig)
class SinkhornAttention(Attention):
    """Sparse Sinkhorn attention: each block attends to itself and to a learned soft permutation of the blocks."""

    complexity = ("O(N b) attention time and memory, plus O((N/b)^2) for the sorting matrix and "
                  "O(N^2 Dh / b) time (O(N Dh) memory) to mix the sorted blocks")
    exact = False
    linear_memory = True
    small_params = {"block_size": 4}
    lra_model = "Sinkhorn Trans."
    paper_values = {"form": "paper"}

    cfg: SinkhornConfig

    def __init__(self, dim: int, heads: int, cfg: SinkhornConfig, max_len: int, dropout: float = 0.0):
        super().__init__(dim, heads, cfg, max_len, dropout)
        if cfg.block_size < 1 or cfg.sinkhorn_iterations < 1 or not cfg.temperature > 0:
            raise ValueError(f"sinkhorn: block_size ({cfg.block_size}) and sinkhorn_iterations "
                             f"({cfg.sinkhorn_iterations}) must be >= 1 and temperature ({cfg.temperature}) > 0")
        lra = cfg.form == "lra_released"
        self.max_blocks = LRA_MAX_NUM_BLOCKS if lra else math.ceil(self.max_len / cfg.block_size)
        if lra:
            # by design the groups and the mask cut depend on the whole length (module doc), so appended padding
            # changes the real tokens' outputs. The flag is a class-level default that this layer's parameters
            # override; the conformance checks read it from the layer, which mypy's ClassVar rule does not foresee
            self.supports_padding_mask = False  # type: ignore[misc]
        # the sorting network: block summary (Dh) -> a logit per target block, shared by the heads
        # (LRA's DenseGeneral with max_num_blocks outputs, no bias, Xavier-uniform init)
        self.sort_weight = nn.Parameter(torch.empty(self.head_dim, self.max_blocks))
        nn.init.xavier_uniform_(self.sort_weight)

    def extra_repr(self) -> str:
        if self.cfg.form == "lra_released":
            return (f"dim={self.dim}, heads={self.heads}, block_size={self.cfg.block_size}, "
                    f"max_blocks={self.max_blocks}, form=lra_released")
        return (f"dim={self.dim}, heads={self.heads}, block_size={self.cfg.block_size}, "
                f"max_blocks={self.max_blocks}, sinkhorn_iterations={self.cfg.sinkhorn_iterations}, "
                f"temperature={self.cfg.temperature}")

    def block(self, n: int) -> int:
        """Tokens per block for an input of n tokens (a shorter input is one block)."""
        return max(1, min(self.cfg.block_size, n))

    def _check_length(self, n: int) -> None:
        if n > self.max_len:
            raise ValueError(f"sinkhorn: {n} tokens, but this layer was built for at most {self.max_len} "
                             f"(its sorting network has {self.max_blocks} block outputs)")

    def soft_permutation(self, k_blocks: torch.Tensor, mask_blocks: torch.Tensor) -> torch.Tensor:
        """The sorting matrix P (B, H, nb, nb) from key blocks (B, H, nb, b, Dh), padded keys zeroed,
        and the token mask (B, nb, b): P[i, j] is the weight of block j in block i's sorted block."""
        nb, blk = mask_blocks.shape[1:]
        summary = k_blocks.sum(dim=3)  # (B, H, nb, Dh): real keys only, the padded ones are zero
        logits = summary @ self.sort_weight[:, :nb].to(summary.dtype)
        if self.training:
            logits = logits + gumbel_noise(logits.shape, logits.dtype, logits.device)
        logits = logits / self.cfg.temperature
        lengths = real_lengths(mask_blocks.reshape(mask_blocks.shape[0], nb * blk))
        real_blocks = torch.arange(nb, device=lengths.device) < ((lengths + blk - 1) // blk)[:, None]
        return log_sinkhorn(block_diagonal_logits(logits, real_blocks), self.cfg.sinkhorn_iterations)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.form == "lra_released":
            return self._attend_lra_released(q, k, v, key_padding_mask)
        bsz, heads, n, d = q.shape
        self._check_length(n)
        in_dtype = q.dtype
        compute = torch.float32 if in_dtype in (torch.float16, torch.bfloat16) else in_dtype
        blk = self.block(n)
        key_padding_mask = padding_mask_or_none(key_padding_mask)
        masked = key_padding_mask is not None or n % blk != 0
        mask = key_padding_mask if key_padding_mask is not None else \
            torch.ones(bsz, n, dtype=torch.bool, device=q.device)
        mask = pad_to_multiple(mask, 1, blk, value=False)
        nb = mask.shape[1] // blk
        mask_blocks = mask.view(bsz, nb, blk)
        dropout = self.dropout if self.training else 0.0
        with torch.autocast(device_type=q.device.type, enabled=False):
            # contiguous once: the block views then merge (batch, heads, blocks) without a copy in each
            # half's attention and in the sorting einsums (q, k, v are strided views of the fused qkv)
            q, k, v = (pad_to_multiple(t.to(compute), 2, blk).contiguous().view(bsz, heads, nb, blk, d)
                       for t in (q, k, v))
            if masked:
                keep = mask_blocks[:, None, :, :, None]
                k, v = k.masked_fill(~keep, 0.0), v.masked_fill(~keep, 0.0)
            perm = self.soft_permutation(k, mask_blocks)
            sorted_k = torch.einsum("bhij,bhjtd->bhitd", perm, k)
            sorted_v = torch.einsum("bhij,bhjtd->bhitd", perm, v)
            own_allowed: torch.Tensor | None = None
            sorted_allowed: torch.Tensor | None = None
            if masked:
                own_allowed = mask_blocks[:, None]  # (B, 1, nb, b)
                # a sorted slot is a key when its mixture holds some real key
                sorted_allowed = torch.einsum("bhij,bjt->bhit", perm, mask_blocks.to(perm.dtype)) > 0
            own, own_ok = _block_attention(q, k, v, own_allowed, dropout)
            srt, srt_ok = _block_attention(q, sorted_k, sorted_v, sorted_allowed, dropout)
            if masked:  # the mean of the halves that have a key (zeros when neither has)
                assert own_ok is not None and srt_ok is not None  # masked: both halves had a mask
                halves = own_ok.to(compute) + srt_ok.to(compute)
                out = (own + srt) / halves.clamp(min=1)[..., None, None]
            else:
                out = (own + srt) * 0.5
        return out.reshape(bsz, heads, nb * blk, d)[:, :, :n].to(in_dtype)

    def _attend_lra_released(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """``form: lra_released``: LRA's sinkhorn_attention.py as released (the module docstring, steps 1-5)."""
        bsz, heads, n = q.shape[:3]
        in_dtype = q.dtype
        compute = torch.float32 if in_dtype in (torch.float16, torch.bfloat16) else in_dtype
        blk = self.block(n)
        mask = padding_mask_or_none(key_padding_mask)
        if mask is None and n % blk:
            mask = torch.ones(bsz, n, dtype=torch.bool, device=q.device)
        dropout = self.dropout if self.training else 0.0
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k, v = (group_strided(pad_to_multiple(t.to(compute), 2, blk), blk) for t in (q, k, v))
            nb = q.shape[0] // bsz  # q, k, v: (B * nb, H, b, Dh), group g of element e at row e * nb + g
            # the sorting network on each group's key sum, a row softmax over min(nb, 25) outputs; the einsum
            # then uses only its row sums (1 up to rounding) and the sum of the keys over the groups
            summary = k.sum(dim=2)  # (B * nb, H, Dh)
            logits = summary @ self.sort_weight[:, :min(nb, self.max_blocks)].to(compute)
            row_sums = torch.softmax(logits, dim=-1).sum(dim=-1)  # (B * nb, H)
            row_sums = row_sums.view(bsz, nb, heads, 1, 1)
            # (B, nb, H, b, Dh): the same sums for every group, times the group's row sum
            sorted_k, sorted_v = ((row_sums * t.reshape(bsz, nb, heads, blk, -1).sum(dim=1)[:, None])
                                  .reshape(bsz * nb, heads, blk, -1) for t in (k, v))
            own_allowed = sorted_allowed = None
            if mask is not None:
                cut = contiguous_cut(pad_to_multiple(mask, 1, blk, value=False), blk)  # (B, nb, b)
                own_allowed = lra_pair_mask(cut)
                # sorted query slot s, key slot t: some group k has both entries (k, s) and (k, t) True
                cut_f = cut.to(compute)
                pairs = torch.einsum("bks,bkt->bst", cut_f, cut_f) > 0
                sorted_allowed = pairs[:, None, None].expand(bsz, nb, 1, blk, blk).reshape(bsz * nb, 1, blk, blk)
            out = (lra_group_attention(q, k, v, own_allowed, dropout)
                   + lra_group_attention(q, sorted_k, sorted_v, sorted_allowed, dropout))
        return ungroup_strided(out, bsz)[:, :, :n].to(in_dtype)

    def flops(self, batch: int, seq_len: int) -> int:
        """Forward FLOPs (a multiply-add = 2): summaries, sort logits, Sinkhorn, sorted blocks, two attentions."""
        blk = self.block(seq_len)
        nb = math.ceil(seq_len / blk)
        n, d, bh = nb * blk, self.head_dim, batch * self.heads
        if self.cfg.form == "lra_released":
            cols = min(nb, self.max_blocks)
            sort = bh * n * d + 2 * bh * nb * cols * d + 4 * bh * nb * cols  # summaries, logits, softmax and sum
            sums = 2 * bh * n * d + 2 * bh * n * d  # keys and values summed over the groups, then scaled
            attention = 2 * (2 * 2 * bh * n * blk * d + 5 * bh * n * blk)
            return sort + sums + attention + bh * n * d + self.projection_flops(batch, seq_len)
        summaries = bh * n * d
        logits = 2 * bh * nb * nb * d + 2 * bh * nb * nb  # s W, then noise and temperature
        # per normalisation: max, subtract, exp, sum, log, add, subtract per entry; then exp
        sinkhorn = self.cfg.sinkhorn_iterations * 2 * 7 * bh * nb * nb + bh * nb * nb
        mixing = 2 * 2 * bh * nb * nb * blk * d  # sorted keys and values
        attention = 2 * (2 * 2 * bh * n * blk * d + 5 * bh * n * blk)  # two halves: QK^T, PV, softmax
        combine = 2 * bh * n * d
        return summaries + logits + sinkhorn + mixing + attention + combine + self.projection_flops(batch, seq_len)
