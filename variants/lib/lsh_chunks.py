"""LSH attention's chunk step through the CPU flash-attention kernel (steps 3-7 of variants/lsh.py).

The same mathematics as the explicit path in ``LSHAttention.shared_qk_attention``, computed
without a score tensor:

- rows are moved with ``index_select`` on (B*N*H, d) row tables (a row copy, several times
  faster on the CPU than an elementwise ``gather``), and each sort's backward pass is an
  ``index_select`` with the inverse permutation (no scatter);
- each chunk's keys and values are an overlapping view of the sorted rows
  (``flash_cpu.windows``), with ``chunks_before`` filler chunks in front and ``chunks_after``
  behind, so the windows are never copied;
- the self offset, the filler chunks, the sorted length's empty slots and padded keys are one
  additive (1, C, c, W*c) mask, the same for every batch element, head and round (padded keys
  are sorted last, so a batch element's mask depends only on its number of real tokens);
- the kernel returns each round's log-sum-exp, and the rounds are combined from it; the
  backward pass is the kernel's, given each round's share of the output gradient and the
  combined output (``flash_cpu``'s module doc says why that is exact).

- a query row whose window holds no valid key (a padded token far enough behind the last real
  one: padding is sorted last) outputs zeros and passes no gradient, as the explicit path; the
  kernel itself would average the masked keys (filler rows read token 0's row) there;
- with ``wrap`` the rounds' sorted sequences are one cycle (LRA's and trax's ``look_one_back`` /
  ``look_adjacent``): a round's first chunks see the previous round's last ones (round 0: the last
  round's), its last chunks the next round's first, instead of filler chunks.

Nothing of size (chunks x c x W*c) is kept for the backward pass: only the sorted q, k, v rows,
the combined output, the rounds' weights and log-sum-exps. Where the kernel does not
apply (``flash_cpu.usable``: CUDA, attention dropout) ``LSHAttention`` uses the explicit path.
"""
from __future__ import annotations

from typing import Any

import torch

from attnbench.variants.lib.flash_cpu import FLASH, FLASH_BACKWARD, MASK_VALUE, fold_windows, windows

#: score offset of a query's own position (Reformer's self-mask; finite, so a token with no
#: other valid key attends to itself); padded keys, fillers and empty slots get MASK_VALUE
SELF_OFFSET = -1e5


def chunk_slots(n_chunks: int, c: int, before: int, after: int, wrap: bool = False) -> torch.Tensor:
    """(C, W*c): the sorted slot of its round held by each window column of each chunk: chunk j's
    column w holds slot (j - before) * c + w, outside [0, C*c) a filler (no wrap), or with ``wrap``
    that slot modulo C*c of a neighbouring round (every round has the same slots: its real tokens
    first)."""
    col = torch.arange((before + 1 + after) * c)
    slots = (torch.arange(n_chunks)[:, None] - before) * c + col
    return slots % (n_chunks * c) if wrap else slots


def chunk_mask(n_valid: int, n_chunks: int, c: int, before: int, after: int, dtype: torch.dtype,
               wrap: bool = False, self_mask: bool = True) -> torch.Tensor:
    """(1, C, c, W*c) additive mask: query i of chunk j against window column w (``chunk_slots``).
    The query's own slot gets SELF_OFFSET (unless ``self_mask`` is False); slots outside
    [0, n_valid) (filler chunks, the sorted length's empty slots, padded keys sorted last) get
    MASK_VALUE. Built per call (a few ms at 16K tokens, against hundreds for the attention)."""
    width = (before + 1 + after) * c
    slot = chunk_slots(n_chunks, c, before, after, wrap)[:, None, :]
    mask = torch.zeros(n_chunks, c, width, dtype=dtype)
    if self_mask:
        col = torch.arange(width)[None, None, :]
        mask.masked_fill_(col == before * c + torch.arange(c)[None, :, None], SELF_OFFSET)
    mask.masked_fill_((slot < 0) | (slot >= n_valid), MASK_VALUE)
    return mask[None]


class Layout:
    """Row indices between the original tables (B, N, H[, R]) and the sorted, chunked rows
    (B, H, R, front + N + back), for one batch of sort orders.

    ``sort_idx``/``undo_idx`` (B, H, R, N) as from ``variants.lsh.lsh_sort``. Queries are laid out
    with ``front = 0`` and the sorted length's empty slots behind (``q_len = C * c``); keys and
    values with ``before * c`` slots in front and ``after * c`` more behind (``kv_len``): filler
    slots, or with ``wrap`` the neighbouring rounds' slots, the rounds taken as one cycle.
    """

    def __init__(self, sort_idx: torch.Tensor, undo_idx: torch.Tensor, c: int, before: int, after: int,
                 wrap: bool = False):
        b, h, r, n = sort_idx.shape
        self.b, self.h, self.r, self.n, self.c = b, h, r, n, c
        self.before, self.after, self.wrap = before, after, wrap
        self.n_chunks = -(-n // c)
        self.q_len = self.n_chunks * c
        self.kv_len = (self.n_chunks + before + after) * c
        dev = sort_idx.device
        head = torch.arange(h, device=dev).view(1, h, 1, 1)
        batch = torch.arange(b, device=dev).view(b, 1, 1, 1)
        rnd = torch.arange(r, device=dev).view(1, 1, r, 1)
        token_row = (batch * n + sort_idx) * h + head  # (B, H, R, N): row in a (B*N*H, d) table
        extra, front = self.q_len - n, before * c
        # empty and filler slots read row 0 of their batch element: they are masked as keys, and
        # as queries their outputs are dropped and their output gradients set to zero
        filler = (batch * n * h + head).expand(b, h, r, 1)
        q_grid = torch.cat([token_row, filler.expand(b, h, r, extra)], dim=3)  # (B, H, R, q_len)
        self.q_rows = q_grid.reshape(-1)
        if wrap:
            # column t of round k's keys: slot k * q_len + t - front of the rounds' cycle
            cycle = (rnd.view(r, 1) * self.q_len + torch.arange(-front, self.kv_len - front, device=dev)) % (
                r * self.q_len)  # (R, kv_len)
            self.kv_rows = q_grid.reshape(b, h, r * self.q_len)[:, :, cycle].reshape(-1)
            ext = torch.cat([torch.arange(front, device=dev), torch.arange(front + self.q_len, self.kv_len,
                                                                           device=dev)])
            self.ext_cols, self.ext_slots = ext, cycle[:, ext].reshape(-1)
        else:
            self.kv_rows = torch.cat([filler.expand(b, h, r, front), token_row,
                                      filler.expand(b, h, r, extra + after * c)], dim=3).reshape(-1)
        # (B, H, R, N) -> (B, N, H, R) order: each original token's sorted slot, round by round
        sorted_base = (batch * h + head) * r + rnd
        undo = undo_idx.permute(0, 3, 1, 2)
        self.q_undo = (sorted_base.permute(0, 3, 1, 2) * self.q_len + undo).reshape(-1)
        self.kv_undo = (sorted_base.permute(0, 3, 1, 2) * self.kv_len + front + undo).reshape(-1)
        # sorted slot -> row of a (B*N*H*R, d) table (the rounds' output gradients)
        round_row = token_row * r + rnd
        self.q_rounds = torch.cat([round_row, round_row[..., :1].expand(b, h, r, extra)], dim=3).reshape(-1)
        # (B, N): each token's slot in head 0's round 0; a padded token has the same slot in every
        # head and round (padding is sorted last, in position order)
        self.slot0 = undo_idx[:, 0, 0]

    @property
    def m(self) -> int:
        """Kernel batch size: one entry per (batch element, head, round)."""
        return self.b * self.h * self.r

    def windows(self, rows: torch.Tensor) -> torch.Tensor:
        """(M, kv_len, d) sorted key or value rows -> (M, C, W*c, d), chunk j seeing chunks
        j - before .. j + after, as an overlapping view (nothing copied)."""
        return windows(rows, 1, self.c, (self.before + 1 + self.after) * self.c)

    def fold_wrapped(self, grad: torch.Tensor) -> torch.Tensor:
        """(M, kv_len, d) gradients of the key or value rows -> the same, with the gradients of the
        neighbouring rounds' rows in front and behind (``wrap``) added to those rows' own slots, where
        ``_SortRows`` reads them."""
        d = grad.shape[-1]
        g = grad.view(self.b * self.h, self.r, self.kv_len, d)
        front = self.before * self.c
        own = g[:, :, front:front + self.q_len].reshape(self.b * self.h, self.r * self.q_len, d)
        ext = g[:, :, self.ext_cols].reshape(self.b * self.h, -1, d)
        own.index_add_(1, self.ext_slots, ext)
        g[:, :, front:front + self.q_len] = own.view(self.b * self.h, self.r, self.q_len, d)
        return grad


class _SortRows(torch.autograd.Function):
    """(B, N, H, d) -> (M, length, d) sorted rows; backward: the inverse permutation, summed over rounds."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, rows: torch.Tensor, undo: torch.Tensor, layout: Layout) -> torch.Tensor:
        ctx.save_for_backward(undo)
        ctx.layout = layout
        d = t.shape[-1]
        return t.reshape(-1, d).index_select(0, rows).view(layout.m, -1, d)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (undo,) = ctx.saved_tensors
        lay: Layout = ctx.layout
        d = grad.shape[-1]
        per_round = grad.reshape(-1, d).index_select(0, undo).view(lay.b, lay.n, lay.h, lay.r, d)
        return per_round.sum(dim=3), None, None, None


class Masks:
    """The kernel's additive masks, as (kernel-batch slice, mask) pairs: one for the whole batch, or one per
    batch element (its real tokens are its first ``n_valid`` sorted slots); and ``empty`` (B, N), the tokens
    whose row has no valid key (None without padding). No host read: the counts stay tensors."""

    def __init__(self, lay: Layout, n_valid: torch.Tensor | None, dtype: torch.dtype, self_mask: bool):
        shape = (lay.n_chunks, lay.c, lay.before, lay.after)
        base = chunk_mask(lay.n, *shape, dtype, wrap=lay.wrap, self_mask=self_mask)
        self.empty: torch.Tensor | None = None
        if n_valid is None:
            self.pairs = [(slice(None), base)]
            return
        slots = chunk_slots(*shape, wrap=lay.wrap)  # (C, W*c)
        invalid = (slots < 0) | (slots >= n_valid.view(-1, 1, 1))  # (B, C, W*c)
        masks = base.masked_fill(invalid[:, :, None, :], MASK_VALUE)  # (B, C, c, W*c)
        per = lay.h * lay.r
        self.pairs = [(slice(i * per, (i + 1) * per), masks[i:i + 1]) for i in range(lay.b)]
        # a chunk whose window holds no valid key; a token's chunk is found through its slot (only
        # padded tokens, the same slot in every head and round, can be in one)
        empty_chunk = invalid.all(dim=-1)  # (B, C)
        self.empty = empty_chunk.gather(1, torch.div(lay.slot0, lay.c, rounding_mode="floor"))


class _ChunkAttention(torch.autograd.Function):
    """Sorted rows -> every round's chunked attention -> rounds combined, in (B, N, H, d)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lay: Layout, masks: Masks,
                scale: float | None) -> torch.Tensor:
        d = q.shape[-1]
        qc = q.view(lay.m, lay.n_chunks, lay.c, d)
        kw, vw = lay.windows(k), lay.windows(v)
        outs, lses = [], []
        for sl, mask in masks.pairs:
            o, lse = FLASH(qc[sl], kw[sl], vw[sl], attn_mask=mask, scale=scale)
            outs.append(o)
            lses.append(lse)
        o = torch.cat(outs) if len(outs) > 1 else outs[0]
        lse = torch.cat(lses) if len(lses) > 1 else lses[0]  # (M, C, c)
        # back to the original order, (B, N, H, R): the rounds adjacent, combined by their lse
        o_r = o.reshape(-1, d).index_select(0, lay.q_undo).view(lay.b, lay.n, lay.h, lay.r, d)
        del o, outs  # temporaries are freed as soon as they are used: each is M x N x d
        lse_r = lse.reshape(-1).index_select(0, lay.q_undo).view(lay.b, lay.n, lay.h, lay.r)
        weights = torch.softmax(lse_r, dim=-1)
        if masks.empty is not None:
            # rows without a valid key (the kernel averaged masked keys there): zero weight in every round,
            # so their output is zero and, the weights being saved, so is the gradient the backward passes
            weights.masked_fill_(masks.empty[:, :, None, None], 0.0)
        out = (weights.unsqueeze(-1) * o_r).sum(dim=3)  # (B, N, H, d)
        ctx.save_for_backward(qc, k, v, lse, weights, out)
        ctx.lay, ctx.masks, ctx.scale = lay, masks, scale
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None, None]:
        qc, k, v, lse, weights, out = ctx.saved_tensors
        lay: Layout = ctx.lay
        masks: Masks = ctx.masks
        d = qc.shape[-1]
        # each round's output gradient w_r dOut (zero for rows without a valid key), and the combined
        # output, in sorted order
        g = (weights.unsqueeze(-1) * dout.unsqueeze(3)).reshape(-1, d)  # (B*N*H*R, d)
        g_s = g.index_select(0, lay.q_rounds).view(qc.shape)
        del g
        g_s.view(lay.m, lay.q_len, d)[:, lay.n:] = 0  # empty slots: their outputs were dropped
        o_s = out.reshape(-1, d).index_select(0, lay.q_rows).view(qc.shape)
        kw, vw = lay.windows(k), lay.windows(v)
        # a loop, not a comprehension: a comprehension would close over g_s and o_s, and deleting a
        # closed-over name (DELETE_DEREF) is a bytecode torch.compile cannot trace
        grads = []
        for sl, mask in masks.pairs:
            grads.append(FLASH_BACKWARD(g_s[sl], qc[sl], kw[sl], vw[sl], o_s[sl], lse[sl], 0.0, False,
                                        attn_mask=mask, scale=ctx.scale))
        del g_s, o_s
        dq, dk, dv = (torch.cat(g) if len(g) > 1 else g[0] for g in zip(*grads, strict=True))
        del grads
        dk = fold_windows(dk, lay.c)  # each window's gradient freed before the next is folded
        dv = fold_windows(dv, lay.c)
        if lay.wrap:
            dk, dv = lay.fold_wrapped(dk), lay.fold_wrapped(dv)
        return dq.reshape(lay.m, lay.q_len, d), dk, dv, None, None, None


def chunked_attention(qk: torch.Tensor, keys: torch.Tensor, v: torch.Tensor, sort_idx: torch.Tensor,
                      undo_idx: torch.Tensor, c: int, before: int, after: int,
                      n_valid: torch.Tensor | None = None, *, wrap: bool = False, self_mask: bool = True,
                      scale: float | None = None) -> torch.Tensor:
    """Shared-QK attention within sorted chunks, rounds combined.

    qk, keys (``qk`` at unit length, or as the caller's scaling wants them), v: (B, N, H, d);
    sort_idx/undo_idx: (B, H, R, N). ``n_valid``: (B,) per batch element its number of real tokens
    (padding sorted last), or None when every token is real. ``wrap``: the rounds' sorted sequences
    as one cycle (no filler chunks); ``self_mask``: the own slot offset by SELF_OFFSET; ``scale``: the
    scores' factor (None: 1/sqrt(d)). Returns (B, N, H, d).
    """
    lay = Layout(sort_idx, undo_idx, c, before, after, wrap)
    masks = Masks(lay, n_valid, qk.dtype, self_mask)
    # torch leaves Function.apply untyped: each returns a tensor
    q_s: torch.Tensor = _SortRows.apply(qk, lay.q_rows, lay.q_undo, lay)  # type: ignore[no-untyped-call]
    k_s: torch.Tensor = _SortRows.apply(keys, lay.kv_rows, lay.kv_undo, lay)  # type: ignore[no-untyped-call]
    v_s: torch.Tensor = _SortRows.apply(v, lay.kv_rows, lay.kv_undo, lay)  # type: ignore[no-untyped-call]
    out: torch.Tensor = _ChunkAttention.apply(q_s, k_s, v_s, lay, masks, scale)  # type: ignore[no-untyped-call]
    return out
