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
   without wraparound (missing chunks are masked; ``wrap``: see below) -> (B, H, R, Np/c, W*c, d);
5. scores q.k / sqrt(d) -> (B, H, R, Np/c, c, W*c); the query's own position gets an
   offset of -1e5 (so a token attends to itself only when nothing else is valid),
   padded keys and empty slots get -1e9 (finite: no NaN, zero weight);
6. per round: out_r = softmax(scores) V and lse_r = logsumexp(scores), unsorted back to
   (B, H, R, N, d) and (B, H, R, N); a query row with no valid key in its window (a padded
   token far behind the last real one) gets out_r = 0;
7. rounds combined as out = sum_r softmax_r(lse_r) * out_r (a key found in several rounds
   counts once per round, as in the HF and trax defaults).

The scale of step 5 (``scale: paper``) is the paper's: keys at unit length, then the usual
1/sqrt(d). Reformer's own code (trax, ``efficient_attention.attend``: ``length_normalized(k) /
sqrt(d)``) scores q.k/|k| without the 1/sqrt(d) (``scale: trax``): an exact reparametrisation,
logits sqrt(d) times larger (8x at d = 64), which changes initialisation and training dynamics, not
what the layer can express. LRA's Reformer scores q.k * sqrt(d) on keys not normalised
(``scale: lra``).

LRA's Reformer (google-research/long-range-arena, lra_benchmarks/models/reformer/
reformer_attention.py) differs in more than the scale; each difference is a parameter, off by
default: ``n_chunks: 10`` (the rounds, sorted together, cut into ``n_hashes * n_buckets`` chunks,
:145, :176-178: ``n_buckets`` chunks of N/10 tokens per round with its 1 hash and 10 buckets, not
chunks of a fixed size; equal where n_buckets divides the padded length, as 10 always does there),
``wrap: true`` (``look_one_back``, :23-32, :186-188: chunk 0 sees the last chunk; the rounds' sorted
sequences taken as one cycle), ``self_mask: false`` (the scores of :191 reach the softmax unmasked,
:199-201), ``fixed_rotations: true`` (one set of rotations from ``PRNGKey(0)``, :149-150, the same for
every head, layer and step, training included), ``out_projection: false`` (the heads' outputs are the
layer's, :337-339) and ``pad_multiple: 10`` (``chunk_len``, :308-312: the input is padded with 1 to 10
zero tokens to a multiple of 10, which are hashed into bucket 0 and attended to like any token, logit 0
and value 0, and cut off at :338). LRA passes no padding mask to it either (model
``mask_padding: false``). With ``wrap`` the self offset stays on the query's own slot: a copy of
itself met in another round's chunk (or in its own chunk seen twice, when the cycle is shorter than
a window) is not offset, where trax masks by position. ``n_chunks``, ``wrap`` and
``pad_multiple`` make the chunks depend on the whole length, padding included, so appended padding
changes the real tokens' outputs: such a layer sets ``supports_padding_mask = False`` on itself
(the conformance checks then skip the padding checks, which it does not pass by design; it still
gives masked keys no weight when given a mask). With ``n_chunks`` the chunks grow with N, so time
and memory are O(N^2 / n_chunks) (``linear_memory`` False on such a layer).

Steps 3-7 run through the CPU flash kernel where it applies (variants/lib/lsh_chunks.py: CPU, no
attention dropout): the same function with no score tensor built or kept for the backward pass,
and the rounds combined from the kernel's log-sum-exp. Elsewhere (CUDA, attention dropout) the
explicit path below computes them; tests/variants/test_lsh_flash_path.py holds the two equal.

Time and memory O(R * N * c * W) for scores; nothing of size N x N is built. The real
tokens' buckets, order and chunks do not depend on how much padding follows them (fixed
``n_buckets``, rotations independent of N, pads sorted last, no wraparound), so padding
leaves their outputs unchanged (not so with ``n_chunks``, ``wrap`` or ``pad_multiple``: above).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, cast

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
    n_chunks: int = param(
        0, "chunks per hash round: 0 cuts the sorted round into chunks of chunk_size; k > 0 into k chunks of "
        "ceil(N / k) tokens, chunk_size unused (LRA's code: n_hashes * n_buckets chunks over all rounds, so "
        "n_buckets per round, reformer_attention.py:145, :176-178)", minimum=0, added_later=True)
    wrap: bool = param(False, "the first chunks see the previous round's last ones (round 0: the last round's) "
                       "and the last chunks the next round's first, instead of nothing (LRA's code: look_one_back, "
                       "reformer_attention.py:23-32, :186-188)", added_later=True)
    scale: Literal["paper", "trax", "lra"] = param(
        "paper", "scores: paper q.k/|k|/sqrt(d); trax q.k/|k| (Reformer's own code); lra q.k*sqrt(d), keys not "
        "normalised (LRA's code, reformer_attention.py:191)", added_later=True)
    self_mask: bool = param(True, "a query's own position gets -1e5 (attends to itself only when nothing else is "
                            "valid); false: no self-mask (LRA's code, reformer_attention.py:191-201)",
                            added_later=True)
    fixed_rotations: bool = param(False, "one set of rotations from eval_seed, the same for every head and layer, "
                                  "in training too (LRA's code: PRNGKey(0), reformer_attention.py:149-150)",
                                  added_later=True)
    out_projection: bool = param(True, "the output projection; false: the heads' outputs concatenated are the "
                                 "layer's output (LRA's code, reformer_attention.py:337-339)", added_later=True)
    pad_multiple: int = param(
        0, "k > 0: append k - N mod k (1..k) zero tokens, hashed and attended like the others (bucket 0, logit 0, "
        "value 0), outputs dropped (LRA's code: chunk_len=10, reformer_attention.py:308-312, :338)", minimum=0,
        added_later=True)


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


def _windows(t: torch.Tensor, before: int, after: int, fill: float, wrap: bool = False) -> torch.Tensor:
    """(B, H, R, C, c, ...) -> (B, H, R, C, W*c, ...): each chunk with its neighbours, missing ones
    ``fill``; with ``wrap`` the rounds' chunks are one cycle (chunk 0 of round r sees round r - 1's last)."""
    if before == 0 and after == 0:
        return t
    if wrap:
        b, h, r, n_chunks = t.shape[:4]
        cycle = t.reshape(b, h, r * n_chunks, *t.shape[4:])
        parts = [cycle.roll(-i, dims=2) for i in range(-before, after + 1)]  # part i: chunk g + i
        return torch.cat(parts, dim=3).view(b, h, r, n_chunks, -1, *t.shape[5:])
    n_chunks = t.shape[3]
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
                  "plus an O(n_hashes * N log N) sort (with n_chunks k > 0: chunks of N / k, O(N^2 / k))")
    exact = False
    # peak RSS of one fwd+bwd (B=1, H=4, d=64, defaults), fresh process: see tests/variants/test_lsh.py docstring
    linear_memory = True
    small_params = {"chunk_size": 4, "n_buckets": 4, "n_hashes": 2}
    lra_model = "Reformer"
    paper_values = {"n_chunks": 0, "wrap": False, "scale": "paper", "self_mask": True, "fixed_rotations": False,
                    "out_projection": True, "pad_multiple": 0}

    cfg: LSHConfig
    #: the fixed rotations of eval mode, (H, d, R, n_buckets / 2): a buffer, saved with the weights
    eval_rotations: torch.Tensor

    def __init__(self, dim: int, heads: int, cfg: LSHConfig, max_len: int, dropout: float = 0.0):
        super().__init__(dim, heads, cfg, max_len, dropout)
        if cfg.n_buckets % 2 or cfg.n_buckets < 2:
            raise ValueError(f"lsh: n_buckets must be even and >= 2, got {cfg.n_buckets}")
        self.layer_offset = self.draw_layer_seed()
        if cfg.fixed_rotations:
            # LRA: one draw for every head and layer (PRNGKey(0) in each layer's call)
            gen = torch.Generator().manual_seed(cfg.eval_seed)
            rot = torch.randn(self._rotation_shape()[1:], generator=gen).expand(self._rotation_shape()).clone()
        else:
            gen = torch.Generator().manual_seed(self.fixed_seed(cfg.eval_seed, self.layer_offset))
            rot = torch.randn(self._rotation_shape(), generator=gen)
        # saved with the weights, so a reloaded checkpoint evaluates with the same hashes
        self.register_buffer("eval_rotations", rot)
        if cfg.n_chunks or cfg.wrap or cfg.pad_multiple:
            # the chunks depend on the whole length, padding included (module doc): by design, appended
            # padding changes the real tokens' outputs, and with n_chunks the chunks grow with N. The flags
            # are class-level defaults that this layer's parameters override; the conformance checks read
            # them from the layer (harness/conformance/checks.py), which mypy's ClassVar rule does not foresee
            self.supports_padding_mask = False  # type: ignore[misc]
            self.linear_memory = not cfg.n_chunks  # type: ignore[misc]

    def build_projections(self) -> None:
        """Shared QK: one projection for queries and keys, one for values (no biases, as
        Reformer), and the output projection (none with ``out_projection: false``, as LRA)."""
        self.qk = nn.Linear(self.dim, self.dim, bias=False)
        self.v = nn.Linear(self.dim, self.dim, bias=False)
        if self.cfg.out_projection:
            self.out = nn.Linear(self.dim, self.dim)

    def _rotation_shape(self) -> tuple[int, int, int, int]:
        return (self.heads, self.head_dim, self.cfg.n_hashes, self.cfg.n_buckets // 2)

    def chunk_len(self, n: int) -> int:
        """Tokens per chunk at sorted length ``n`` (``n_chunks`` > 0: ceil(n / n_chunks))."""
        return -(-n // self.cfg.n_chunks) if self.cfg.n_chunks else self.cfg.chunk_size

    def score_scale(self, d: int) -> float:
        """The factor on q.k (``scale``): 1/sqrt(d) on unit keys, 1 on unit keys, sqrt(d) on raw keys."""
        return {"paper": 1.0 / math.sqrt(d), "trax": 1.0, "lra": math.sqrt(d)}[self.cfg.scale]

    def shared_keys(self, qk: torch.Tensor) -> torch.Tensor:
        """The keys from the shared vectors: at unit length, or (``scale: lra``) as they are."""
        return qk if self.cfg.scale == "lra" else F.normalize(qk, dim=-1)

    def hash(self, qk: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, H, N, d) -> buckets (B, H, R, N) int64; padded tokens in bucket ``n_buckets``."""
        x = qk.detach()
        if self.training and not self.cfg.fixed_rotations:
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
            qk = F.linear(xw, self.qk.weight.to(work))
            v = F.linear(xw, self.v.weight.to(work))
            m = n
            if self.cfg.pad_multiple:
                # LRA's zero tokens: its inputs padded before the (bias-free) projections, so qk = v = 0
                m = n + self.cfg.pad_multiple - n % self.cfg.pad_multiple
                qk, v = F.pad(qk, (0, 0, 0, m - n)), F.pad(v, (0, 0, 0, m - n))
                if key_padding_mask is not None:
                    key_padding_mask = F.pad(key_padding_mask, (0, m - n), value=True)
            qk, v = qk.view(b, m, h, d), v.view(b, m, h, d)  # (B, N, H, d)
            if flash_cpu.usable(qk, self.dropout if self.training else 0.0):
                kernels.note("cpu-flash", "CPU, float32/64, no attention dropout: each chunk and its neighbours "
                             "through torch's CPU flash kernel (variants/lib/lsh_chunks.py)")
                o = self.flash_attention(qk, v, key_padding_mask)
            else:
                kernels.note("explicit", "chunked score tensors (on CUDA, or with attention dropout): the CPU "
                             "flash path runs on a CPU without dropout only")
                o = self.shared_qk_attention(qk.transpose(1, 2), v.transpose(1, 2), key_padding_mask).transpose(1, 2)
            if m != n:
                o = o[:, :n]
        y = o.to(x.dtype).reshape(b, n, dim)
        return cast(torch.Tensor, self.out(y)) if self.cfg.out_projection else y

    def flash_attention(self, qk: torch.Tensor, v: torch.Tensor,
                        key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """The same as ``shared_qk_attention`` through the CPU flash kernel (variants/lib/lsh_chunks.py),
        in (B, N, H, d) layout: no score tensor built or kept."""
        cfg = self.cfg
        sort_idx, undo_idx = lsh_sort(self.hash(qk.transpose(1, 2), key_padding_mask))
        n_valid = None if key_padding_mask is None else key_padding_mask.sum(dim=1)
        scale = None if cfg.scale == "paper" else self.score_scale(qk.shape[-1])
        return lsh_chunks.chunked_attention(qk, self.shared_keys(qk), v, sort_idx, undo_idx,
                                            self.chunk_len(qk.shape[1]), cfg.chunks_before, cfg.chunks_after,
                                            n_valid, wrap=cfg.wrap, self_mask=cfg.self_mask, scale=scale)

    def shared_qk_attention(self, qk: torch.Tensor, v: torch.Tensor,
                            key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Steps 2-7 of the module doc: (B, H, N, d) shared query/key vectors and values -> (B, H, N, d)."""
        b, h, n, d = qk.shape
        before, after, wrap = self.cfg.chunks_before, self.cfg.chunks_after, self.cfg.wrap
        c = self.chunk_len(n)
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
        k_s = self.shared_keys(q_s)  # keys: the shared vectors at unit length (scale lra: as they are)
        k_w = _windows(k_s, before, after, 0.0, wrap)  # (B, H, R, C, W*c, d)
        v_w = _windows(v_s, before, after, 0.0, wrap)

        scores = (q_s @ k_w.transpose(-1, -2)) * self.score_scale(d)  # (B, H, R, C, c, W*c)
        if self.cfg.self_mask:
            # within a round every position has one slot, so a query meets itself exactly on the
            # diagonal of its own chunk's block of the window: offset it in place
            scores[..., before * c:(before + 1) * c].diagonal(dim1=-2, dim2=-1).add_(SELF_OFFSET)
        no_key = None  # (B, H, R, C): chunks whose window holds no valid key (padded queries only)
        if key_padding_mask is None and not extra:
            # every slot is real: only the filler chunks beyond each round's ends are invalid,
            # and only the first `before` and last `after` chunks' windows hold any (none with wrap)
            filler = _filler_mask(n_chunks, before, after, c, qk.device) if not wrap else None
            if before and filler is not None:
                scores[:, :, :, :before].masked_fill_(filler[:before], MASK_VALUE)
            if after and filler is not None:
                scores[:, :, :, n_chunks - after:].masked_fill_(filler[n_chunks - after:], MASK_VALUE)
        else:
            slot_real = torch.arange(n_chunks * c, device=qk.device) < n
            if key_padding_mask is None:
                valid = slot_real.expand(b, h, r, n_chunks * c)
            else:
                kpm = key_padding_mask[:, None, None, :].expand(b, h, r, n)
                valid = F.pad(kpm.gather(3, sort_idx), (0, extra), value=False)
            valid_w = _windows(valid.reshape(shape), before, after, False, wrap)
            if key_padding_mask is not None:
                no_key = ~valid_w.any(dim=-1)
            scores.masked_fill_(~valid_w[..., None, :], MASK_VALUE)
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        probs = torch.exp(scores - lse)
        if self.training and self.dropout > 0:
            probs = F.dropout(probs, self.dropout)
        out = probs @ v_w  # (B, H, R, C, c, d)
        if no_key is not None:  # rows with no valid key: zeros, not an average of masked values
            out = out.masked_fill(no_key[..., None, None], 0.0)

        # back to original order, then combine the rounds by their logsumexp
        out = unsort_rows(out.reshape(b, h, r, n_chunks * c, d)[:, :, :, :n], undo_idx, sort_idx)  # (B, H, R, N, d)
        lse = unsort_rows(lse.reshape(b, h, r, n_chunks * c)[:, :, :, :n], undo_idx, sort_idx)  # (B, H, R, N)
        weights = torch.softmax(lse, dim=2)
        return (weights.unsqueeze(-1) * out).sum(dim=2)  # (B, H, N, d)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError("lsh uses shared QK: call forward(x, key_padding_mask)")

    def projection_flops(self, batch: int, seq_len: int) -> int:
        """qk and v projections (no separate key projection) plus the output projection (if any)."""
        return 2 * batch * seq_len * (3 if self.cfg.out_projection else 2) * self.dim * self.dim

    def flops(self, batch: int, seq_len: int) -> int:
        cfg = self.cfg
        bh = batch * self.heads
        n = seq_len + cfg.pad_multiple - seq_len % cfg.pad_multiple if cfg.pad_multiple else seq_len
        c = self.chunk_len(n)
        window = c * (1 + cfg.chunks_before + cfg.chunks_after)
        padded = -(-n // c) * c
        hashing = 2 * bh * n * self.head_dim * cfg.n_hashes * (cfg.n_buckets // 2)
        # q.k scores and probs.v over each chunk's window, every round
        chunked = 2 * 2 * bh * cfg.n_hashes * padded * window * self.head_dim
        combine = 2 * bh * cfg.n_hashes * n * self.head_dim
        return self.projection_flops(batch, seq_len) + hashing + chunked + combine

