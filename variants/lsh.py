"""Reformer LSH attention: shared-QK attention within hash buckets (Kitaev et al. 2020).

Algorithm (per head; B batch, H heads, N tokens, d = head dim, R = ``n_hashes``,
c = ``chunk_size``, W = 1 + ``chunks_before`` + ``chunks_after``):

1. one projection ``qk`` (no bias) gives the shared query/key vectors, ``v`` (no bias) the
   values: (B, H, N, d) each;
2. angular LSH: random rotations (H, d, R, n_buckets/2) applied to the detached shared
   vectors; bucket = argmax([xR, -xR]) -> (B, H, R, N). Padded tokens get bucket
   ``n_buckets`` (their own, sorted last);
3. per round, a stable sort by (bucket, position) -> permutation (B, H, R, N) and its
   inverse; the sorted length is padded to Np = ceil(N / c) * c with masked slots;
4. gather into sorted order and split into chunks: queries (B, H, R, Np/c, c, d), keys
   (the shared vectors L2-normalised) and values over the window of each chunk: itself,
   ``chunks_before`` previous and ``chunks_after`` following chunks of the same round,
   without wraparound (missing chunks are masked) -> (B, H, R, Np/c, W*c, d);
5. scores q.k / sqrt(d) -> (B, H, R, Np/c, c, W*c); the query's own position gets an
   offset of -1e5 (so a token attends to itself only when nothing else is valid),
   padded keys and empty slots get -1e9 (finite: no NaN, zero weight);
6. per round: out_r = softmax(scores) V and lse_r = logsumexp(scores), unsorted back to
   (B, H, R, N, d) and (B, H, R, N);
7. rounds combined as out = sum_r softmax_r(lse_r) * out_r (a key found in several rounds
   counts once per round, as in the HF and trax defaults).

Steps 3-7 run through the CPU flash kernel where it applies (variants/lib/lsh_chunks.py: CPU, no
attention dropout): the same function with no score tensor built or kept for the backward pass,
and the rounds combined from the kernel's log-sum-exp. Elsewhere (CUDA, attention dropout) the
explicit path below computes them; tests/variants/test_lsh_flash_path.py holds the two equal.

Time and memory O(R * N * c * W) for scores; nothing of size N x N is built. The real
tokens' buckets, order and chunks do not depend on how much padding follows them (fixed
``n_buckets``, rotations independent of N, pads sorted last, no wraparound), so padding
leaves their outputs unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.harness.core.registry import param
from attnbench.variants.base import VARIANTS, Attention, padding_mask_or_none
from attnbench.variants.lib import flash_cpu, kernels, lsh_chunks
from attnbench.variants.lib.flash_cpu import MASK_VALUE
from attnbench.variants.lib.lsh_chunks import SELF_OFFSET


@dataclass(frozen=True)
class LSHConfig:
    """Reformer LSH attention: shared QK, angular-LSH buckets, chunked attention, rounds combined by logsumexp."""

    chunk_size: int = param(64, "tokens per chunk of the sorted sequence (c)", minimum=1)
    n_hashes: int = param(2, "hash rounds (R); cost grows linearly, error against full shared-QK attention falls",
                          minimum=1)
    n_buckets: int = param(
        32,
        "hash buckets per round (even). Fixed, independent of the sequence length so that padding does not "
        "change the real tokens' buckets; for balanced chunks choose about 2 * N / chunk_size for the task's "
        "length N (32 suits N = 1024 with chunk_size 64; use 64 at N = 2048, 128 at N = 4096)",
        minimum=2)
    chunks_before: int = param(1, "previous chunks (same round) each chunk also attends to", minimum=0)
    chunks_after: int = param(0, "following chunks (same round) each chunk also attends to", minimum=0)
    eval_seed: int = param(0, "seed of the fixed rotations used in eval mode (mixed with a per-layer offset)",
                           minimum=0)


def gather_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) gathered along N by idx (B, H, R, M) -> (B, H, R, M, d); grads flow to ``t``."""
    b, h, _, d = t.shape
    r, m = idx.shape[2], idx.shape[3]
    return t.gather(2, idx.reshape(b, h, r * m, 1).expand(b, h, r * m, d)).view(b, h, r, m, d)


def _permute_rounds(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """(B, H, R, N, ...) reordered along N by perm (B, H, R, N), round by round."""
    idx = perm.view(*perm.shape, *([1] * (t.dim() - perm.dim()))).expand_as(t)
    return t.gather(3, idx)


class _Sort(torch.autograd.Function):
    """(B, H, N, d) -> (B, H, R, N, d) in each round's sorted order. The index is a permutation,
    so the backward pass is a gather with its inverse (summed over rounds), not a scatter."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, sort_idx: torch.Tensor, undo_idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(undo_idx)
        return gather_rows(t, sort_idx)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        undo_idx: torch.Tensor
        (undo_idx,) = ctx.saved_tensors
        return _permute_rounds(grad, undo_idx).sum(dim=2), None, None


class _Unsort(torch.autograd.Function):
    """(B, H, R, N, ...) sorted -> original order; the backward pass gathers with the sort order."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, undo_idx: torch.Tensor, sort_idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(sort_idx)
        return _permute_rounds(t, undo_idx)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        sort_idx: torch.Tensor
        (sort_idx,) = ctx.saved_tensors
        return _permute_rounds(grad, sort_idx), None, None


def unsort_rows(t: torch.Tensor, undo: torch.Tensor, sort_idx: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, R, N, ...) in sorted order -> original order, with undo (B, H, R, N) the inverse
    permutation (and ``sort_idx``, the permutation itself, for a scatter-free backward pass)."""
    if sort_idx is None:
        return _permute_rounds(t, undo)
    return cast(torch.Tensor, _Unsort.apply(t, undo, sort_idx))  # type: ignore[no-untyped-call]  # untyped in torch


#: elements of rotated vectors per block of tokens when hashing on the CPU (1 MiB of float32):
#: small enough for the max and min passes to read it from cache
HASH_BLOCK = 1 << 18


def angular_buckets(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) vectors, (H, d, R, K) rotations -> (B, H, R, N) buckets: argmax over
    [xR, -xR] per round, without building the concatenation. The bucket is the larger of max(xR)
    and -min(xR), the first index on ties (max and min return the first, as argmax over the
    concatenation would). On the CPU in blocks of tokens whose rotated vectors stay in cache."""
    b, h, n, d = x.shape
    r, k = rot.shape[2], rot.shape[3]
    flat = rot.reshape(h, d, r * k)
    step = n if x.device.type != "cpu" else max(1, HASH_BLOCK // (b * h * r * k))
    buckets = torch.empty(b, h, r, n, dtype=torch.long, device=x.device)
    for start in range(0, n, step):
        rotated = torch.matmul(x[:, :, start:start + step], flat).view(b, h, -1, r, k)
        top, top_idx = rotated.max(dim=-1)
        bottom, bottom_idx = rotated.min(dim=-1)
        buckets[:, :, :, start:start + step] = torch.where(top >= -bottom, top_idx, bottom_idx + k).transpose(2, 3)
    return buckets


def lsh_sort(buckets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each round by (bucket, position).

    buckets (B, H, R, N) int64 -> (sort_idx, undo_idx), both (B, H, R, N): ``sort_idx[..., j]`` is the
    position at sorted slot j, ``undo_idx[..., i]`` is the sorted slot of position i.
    """
    n = buckets.shape[-1]
    pos = torch.arange(n, device=buckets.device)
    sort_idx = (buckets * n + pos).argsort(dim=-1)
    undo_idx = torch.empty_like(sort_idx).scatter_(-1, sort_idx, pos.expand_as(sort_idx))
    return sort_idx, undo_idx


def _windows(t: torch.Tensor, before: int, after: int, fill: float) -> torch.Tensor:
    """(B, H, R, C, c, ...) -> (B, H, R, C, W*c, ...): each chunk with its neighbours, no wraparound."""
    n_chunks = t.shape[3]
    if before == 0 and after == 0:
        return t
    pad_before = t.new_full((*t.shape[:3], before, *t.shape[4:]), fill)
    pad_after = t.new_full((*t.shape[:3], after, *t.shape[4:]), fill)
    tp = torch.cat([pad_before, t, pad_after], dim=3)
    return torch.cat([tp[:, :, :, i:i + n_chunks] for i in range(before + 1 + after)], dim=4)


def _filler_mask(n_chunks: int, before: int, after: int, c: int, device: torch.device) -> torch.Tensor:
    """(C, 1, W*c) True where chunk j's window holds a filler chunk (beyond the round's ends)."""
    j = torch.arange(n_chunks, device=device)[:, None]
    src = j - before + torch.arange(before + 1 + after, device=device)[None, :]
    return ((src < 0) | (src >= n_chunks)).repeat_interleave(c, dim=1)[:, None, :]


@VARIANTS.register("lsh", LSHConfig)
class LSHAttention(Attention):
    """Reformer LSH attention (shared QK, hashed buckets sorted into chunks; approximate)."""

    complexity = ("O(n_hashes * N * chunk_size * (1 + chunks_before + chunks_after)) time and memory, "
                  "plus an O(n_hashes * N log N) sort")
    exact = False
    # peak RSS of one fwd+bwd (B=1, H=4, d=64, defaults), fresh process: see tests/variants/test_lsh.py docstring
    linear_memory = True
    small_params = {"chunk_size": 4, "n_buckets": 4, "n_hashes": 2}
    lra_model = "Reformer"

    cfg: LSHConfig
    #: the fixed rotations of eval mode, (H, d, R, n_buckets / 2): a buffer, saved with the weights
    eval_rotations: torch.Tensor

    def __init__(self, dim: int, heads: int, cfg: LSHConfig, max_len: int, dropout: float = 0.0):
        super().__init__(dim, heads, cfg, max_len, dropout)
        if cfg.n_buckets % 2 or cfg.n_buckets < 2:
            raise ValueError(f"lsh: n_buckets must be even and >= 2, got {cfg.n_buckets}")
        self.layer_offset = self.draw_layer_seed()
        gen = torch.Generator().manual_seed(self.fixed_seed(cfg.eval_seed, self.layer_offset))
        rot = torch.randn(self._rotation_shape(), generator=gen)
        # saved with the weights, so a reloaded checkpoint evaluates with the same hashes
        self.register_buffer("eval_rotations", rot)

    def build_projections(self) -> None:
        """Shared QK: one projection for queries and keys, one for values (no biases, as
        Reformer), and the output projection."""
        self.qk = nn.Linear(self.dim, self.dim, bias=False)
        self.v = nn.Linear(self.dim, self.dim, bias=False)
        self.out = nn.Linear(self.dim, self.dim)

    def _rotation_shape(self) -> tuple[int, int, int, int]:
        return (self.heads, self.head_dim, self.cfg.n_hashes, self.cfg.n_buckets // 2)

    def hash(self, qk: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, H, N, d) -> buckets (B, H, R, N) int64; padded tokens in bucket ``n_buckets``."""
        x = qk.detach()
        if self.training:
            rot = torch.randn(self._rotation_shape(), device=x.device, dtype=x.dtype)
        else:
            rot = self.eval_rotations.to(device=x.device, dtype=x.dtype)
        buckets = angular_buckets(x, rot)
        if key_padding_mask is not None:
            buckets = buckets.masked_fill(~key_padding_mask[:, None, None, :], self.cfg.n_buckets)
        return buckets

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, dim = x.shape
        h, d = self.heads, self.head_dim
        key_padding_mask = padding_mask_or_none(key_padding_mask)
        # the shared projection, hashing, scores and softmax in float32 at least, whatever autocast
        # says: the buckets are an argmax that bfloat16 rounding of q would change (a different
        # bucket is a different attention pattern, not a small error), and the mask value -1e9
        # overflows float16
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            xw = x.to(work)
            qk = F.linear(xw, self.qk.weight.to(work)).view(b, n, h, d)  # (B, N, H, d)
            v = F.linear(xw, self.v.weight.to(work)).view(b, n, h, d)
            if flash_cpu.usable(qk, self.dropout if self.training else 0.0):
                kernels.note("cpu-flash", "CPU, float32/64, no attention dropout: each chunk and its neighbours "
                             "through torch's CPU flash kernel (variants/lib/lsh_chunks.py)")
                o = self.flash_attention(qk, v, key_padding_mask)
            else:
                kernels.note("explicit", "chunked score tensors (on CUDA, or with attention dropout): the CPU "
                             "flash path runs on a CPU without dropout only")
                o = self.shared_qk_attention(qk.transpose(1, 2), v.transpose(1, 2), key_padding_mask).transpose(1, 2)
        return cast(torch.Tensor, self.out(o.to(x.dtype).reshape(b, n, dim)))

    def flash_attention(self, qk: torch.Tensor, v: torch.Tensor,
                        key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """The same as ``shared_qk_attention`` through the CPU flash kernel (variants/lib/lsh_chunks.py),
        in (B, N, H, d) layout: no score tensor built or kept."""
        cfg = self.cfg
        sort_idx, undo_idx = lsh_sort(self.hash(qk.transpose(1, 2), key_padding_mask))
        n_valid = None if key_padding_mask is None else key_padding_mask.sum(dim=1)
        return lsh_chunks.chunked_attention(qk, F.normalize(qk, dim=-1), v, sort_idx, undo_idx, cfg.chunk_size,
                                            cfg.chunks_before, cfg.chunks_after, n_valid)

    def shared_qk_attention(self, qk: torch.Tensor, v: torch.Tensor,
                            key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Steps 2-7 of the module doc: (B, H, N, d) shared query/key vectors and values -> (B, H, N, d)."""
        b, h, n, d = qk.shape
        c, before, after = self.cfg.chunk_size, self.cfg.chunks_before, self.cfg.chunks_after
        r = self.cfg.n_hashes

        buckets = self.hash(qk, key_padding_mask)  # (B, H, R, N)
        sort_idx, undo_idx = lsh_sort(buckets)

        # sort (grads flow through the gathers, not the indices), pad the sorted length to a
        # multiple of c with empty slots, and chunk
        n_chunks = -(-n // c)
        extra = n_chunks * c - n
        shape = (b, h, r, n_chunks, c)
        # (B, H, R, N, d); torch leaves Function.apply untyped
        q_s, v_s = (cast(torch.Tensor, _Sort.apply(t, sort_idx, undo_idx)) for t in (qk, v))  # type: ignore[no-untyped-call]
        if extra:
            q_s, v_s = F.pad(q_s, (0, 0, 0, extra)), F.pad(v_s, (0, 0, 0, extra))
        q_s, v_s = q_s.view(*shape, d), v_s.view(*shape, d)
        k_s = F.normalize(q_s, dim=-1)  # keys: the shared vectors at unit length
        k_w = _windows(k_s, before, after, 0.0)  # (B, H, R, C, W*c, d)
        v_w = _windows(v_s, before, after, 0.0)

        scores = (q_s @ k_w.transpose(-1, -2)) * (1.0 / math.sqrt(d))  # (B, H, R, C, c, W*c)
        # within a round every position has one slot, so a query meets itself exactly on the
        # diagonal of its own chunk's block of the window: offset it in place
        scores[..., before * c:(before + 1) * c].diagonal(dim1=-2, dim2=-1).add_(SELF_OFFSET)
        if key_padding_mask is None and not extra:
            # every slot is real: only the filler chunks beyond each round's ends are invalid,
            # and only the first `before` and last `after` chunks' windows hold any
            filler = _filler_mask(n_chunks, before, after, c, qk.device)
            if before:
                scores[:, :, :, :before].masked_fill_(filler[:before], MASK_VALUE)
            if after:
                scores[:, :, :, n_chunks - after:].masked_fill_(filler[n_chunks - after:], MASK_VALUE)
        else:
            slot_real = torch.arange(n_chunks * c, device=qk.device) < n
            if key_padding_mask is None:
                valid = slot_real.expand(b, h, r, n_chunks * c)
            else:
                kpm = key_padding_mask[:, None, None, :].expand(b, h, r, n)
                valid = F.pad(kpm.gather(3, sort_idx), (0, extra), value=False)
            valid_w = _windows(valid.reshape(shape), before, after, False)
            scores.masked_fill_(~valid_w[..., None, :], MASK_VALUE)
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        probs = torch.exp(scores - lse)
        if self.training and self.dropout > 0:
            probs = F.dropout(probs, self.dropout)
        out = probs @ v_w  # (B, H, R, C, c, d)

        # back to original order, then combine the rounds by their logsumexp
        out = unsort_rows(out.reshape(b, h, r, n_chunks * c, d)[:, :, :, :n], undo_idx, sort_idx)  # (B, H, R, N, d)
        lse = unsort_rows(lse.reshape(b, h, r, n_chunks * c)[:, :, :, :n], undo_idx, sort_idx)  # (B, H, R, N)
        weights = torch.softmax(lse, dim=2)
        return (weights.unsqueeze(-1) * out).sum(dim=2)  # (B, H, N, d)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError("lsh uses shared QK: call forward(x, key_padding_mask)")

    def projection_flops(self, batch: int, seq_len: int) -> int:
        """qk and v projections (no separate key projection) plus the output projection."""
        return 2 * batch * seq_len * 3 * self.dim * self.dim

    def flops(self, batch: int, seq_len: int) -> int:
        cfg = self.cfg
        bh = batch * self.heads
        window = cfg.chunk_size * (1 + cfg.chunks_before + cfg.chunks_after)
        padded = -(-seq_len // cfg.chunk_size) * cfg.chunk_size
        hashing = 2 * bh * seq_len * self.head_dim * cfg.n_hashes * (cfg.n_buckets // 2)
        # q.k scores and probs.v over each chunk's window, every round
        chunked = 2 * 2 * bh * cfg.n_hashes * padded * window * self.head_dim
        combine = 2 * bh * cfg.n_hashes * seq_len * self.head_dim
        return self.projection_flops(batch, seq_len) + hashing + chunked + combine
