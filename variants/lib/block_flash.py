"""Block attention through the CPU flash kernel (for variants/lib/blocks.py): window, local and sparse.

The same function as ``blocks.block_sparse_attention``, computed for the whole batch as pieces
of attention over disjoint key sets, combined by their log-sum-exps (``flash_cpu``):

- the band: each query block against its own and ``reach`` neighbouring key blocks on each
  side, narrowed by a token-level mask. Queries, keys and values are copied once into a *slot
  layout* (``_Slots``): the batch's sequences end to end, each behind ``reach`` filler blocks,
  so every block's key window is the same overlapping *view* (``flash_cpu.windows``) with one
  stride across the whole batch: one kernel call, nothing copied per query block. The filler
  blocks are computed as queries too (``reach`` blocks per element) and dropped;
- other key blocks (sparse attention's strided and random blocks): a table of key blocks per
  query block, copied by ``index_select`` (whole blocks), their gradients added back with
  ``index_add``;
- the global keys: every query against them.

Each piece has one additive mask per query block for all heads (excluded keys get
``MASK_VALUE``). The backward pass is the kernel's, per piece, given the piece's share of the
output gradient and the combined output (exact: see ``flash_cpu``). Query rows with no allowed
key are zero, as in ``block_sparse_attention``; the global queries' own rows are overwritten
afterwards by the caller (``blocks.global_rows``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch

from attnbench.variants.lib import flash_cpu
from attnbench.variants.lib.flash_cpu import FLASH, FLASH_BACKWARD, MASK_VALUE, fold_windows, lse_weights, windows

#: sequences at least this long take this path. Measured on the 2-core CPU box, fwd+bwd against
#: the SDPA gather path: at 16 x 256-1024 tokens within +-10% either way, and slower on the short
#: sequences of config/config.yaml (per-piece overhead: up to 1.6x at 32 x 65); at 1 x 4096 and
#: 1 x 16384 faster for sparse (0.85, 0.97) and near even for the window (1.07, 0.95)
MIN_TOKENS = 2048

#: a piece's map between layouts: the kernel's per-slot or per-block tensors and the (B, N, H, ...) tokens
_Relayout = Callable[[torch.Tensor], torch.Tensor]


def worthwhile(q: torch.Tensor, dropout: float) -> bool:
    """Whether (B, H, N, d) queries take this path: the kernel applies and N >= MIN_TOKENS."""
    return flash_cpu.usable(q, dropout) and q.shape[2] >= MIN_TOKENS


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.where(allowed, 0.0, MASK_VALUE).to(dtype)


class _Slots:
    """The band's layout: rows [pad fillers, N tokens] per batch element, end to end, and ``pad``
    more at the end, pad = reach * b. Slot j's queries are rows j*b + pad .. + b and its key
    window rows j*b .. j*b + W*b; slot e * (N/b + reach) + i is element e's block i, and the
    ``reach`` slots after each element's last block are fillers."""

    def __init__(self, batch: int, n: int, block: int, reach: int) -> None:
        self.batch, self.n, self.block, self.pad = batch, n, block, reach * block
        self.span = n + self.pad  # rows per element
        self.width = (2 * reach + 1) * block
        self.n_slots = batch * (self.span // block) - reach
        self.rows = batch * self.span + self.pad

    def fill(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, ...) -> (rows, ...) in the slot layout, zeros in the fillers."""
        buf = t.new_zeros(self.rows, *t.shape[2:])
        buf[:self.batch * self.span].view(self.batch, self.span, *t.shape[2:])[:, self.pad:] = t
        return buf

    def queries(self, buf: torch.Tensor) -> torch.Tensor:
        """(rows, H, ...) -> (slots, H, b, ...): each slot's query block, a view."""
        rows = buf[self.pad:self.pad + self.n_slots * self.block]
        return torch.unflatten(rows, 0, (self.n_slots, self.block)).transpose(1, 2)

    def tokens(self, per_slot: torch.Tensor) -> torch.Tensor:
        """(slots, H, b, ...) per-slot results -> (B, N, H, ...): the real blocks' rows, fillers dropped."""
        rows = per_slot.transpose(1, 2).flatten(0, 1)  # (slots * b, H, ...): the last element's fillers missing
        if self.pad:
            rows = torch.cat([rows, rows.new_zeros(self.pad, *rows.shape[1:])])
        return torch.unflatten(rows, 0, (self.batch, self.span))[:, :self.n]

    def token_rows(self, buf: torch.Tensor) -> torch.Tensor:
        """(rows, ...) in the slot layout -> (B, N, ...), the real rows (a view)."""
        return torch.unflatten(buf[:self.batch * self.span], 0, (self.batch, self.span))[:, self.pad:]


class _Piece:
    """One key set: kernel inputs (queries (Q, H, b, d), keys and values (Q, H, K, d), additive mask),
    how results come back to (B, N, H, ...) and how key gradients go back to (B, N, H, d)."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, to_tokens: _Relayout,
                 from_tokens: _Relayout, back: _Relayout) -> None:
        self.q, self.k, self.v, self.mask = q, k, v, mask
        self.to_tokens, self.from_tokens, self.back = to_tokens, from_tokens, back

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        o, lse = FLASH(self.q, self.k, self.v, attn_mask=self.mask)
        return self.to_tokens(o), self.to_tokens(lse.unsqueeze(-1)).squeeze(-1)  # (B, N, H, d), (B, N, H)

    def backward(self, share: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """share, out (B, N, H, d), lse (B, N, H) -> dq, dk, dv, each (B, N, H, d)."""
        dq, dk, dv = FLASH_BACKWARD(self.from_tokens(share), self.q, self.k, self.v, self.from_tokens(out),
                                    self.from_tokens(lse.unsqueeze(-1)).squeeze(-1), 0.0, False, attn_mask=self.mask)
        return self.to_tokens(dq), self.back(dk), self.back(dv)


def _band(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, reach: int, local_keys: torch.Tensor,
          token_allowed: torch.Tensor | None) -> tuple[_Piece, torch.Tensor]:
    """The band piece and its rows with an allowed key, (B, N). q, k, v (B, N, H, d)."""
    b_, n = local_keys.shape
    slots = _Slots(b_, n, block, reach)
    qs, ks, vs = (slots.fill(t) for t in (q, k, v))
    keys_ok = slots.fill(local_keys).unfold(0, slots.width, block)  # (slots + ..., W*b)
    keys_ok = keys_ok[:slots.n_slots, None, :]  # (slots, 1, W*b)
    allowed = keys_ok if token_allowed is None else keys_ok & token_allowed  # (slots, b or 1, W*b)
    row_ok = slots.tokens(allowed.any(-1).expand(-1, block)[:, None, :, None]).reshape(b_, n)

    def from_tokens(t: torch.Tensor) -> torch.Tensor:  # (B, N, H, ...) -> (slots, H, b, ...)
        return slots.queries(slots.fill(t))

    def back(g: torch.Tensor) -> torch.Tensor:  # window gradients (slots, H, W*b, d) -> (B, N, H, d)
        return slots.token_rows(fold_windows(g.transpose(0, 1), block).transpose(0, 1))

    piece = _Piece(slots.queries(qs), windows(ks, 0, block, slots.width)[:slots.n_slots],
                   windows(vs, 0, block, slots.width)[:slots.n_slots], _additive(allowed, q.dtype).unsqueeze(1),
                   slots.tokens, from_tokens, back)
    return piece, row_ok


def _extra(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, local_keys: torch.Tensor,
           table: torch.Tensor, valid: torch.Tensor) -> tuple[_Piece, torch.Tensor]:
    """Other key blocks per query block: (B, nB, K) table and validity."""
    b_, n, h, d = q.shape
    nb = n // block
    idx = (table + torch.arange(b_, device=table.device)[:, None, None] * nb).reshape(-1)  # into B*nB blocks

    def blocks(t: torch.Tensor) -> torch.Tensor:  # (B, N, ...) -> (B*nB, b, ...), a view
        return t.reshape(b_ * nb, block, *t.shape[2:])

    kx, vx = (blocks(t).index_select(0, idx).view(b_ * nb, -1, h, d).transpose(1, 2) for t in (k, v))
    picked_ok = blocks(local_keys).index_select(0, idx).view(b_ * nb, -1, block) & valid.reshape(b_ * nb, -1, 1)
    picked_ok = picked_ok.view(b_ * nb, 1, -1)  # (B*nB, 1, K*b)
    row_ok = picked_ok.any(-1).expand(-1, block).reshape(b_, n)

    def to_tokens(t: torch.Tensor) -> torch.Tensor:  # (B*nB, H, b, ...) -> (B, N, H, ...)
        return t.transpose(1, 2).reshape(b_, n, *t.shape[1:2], *t.shape[3:])

    def from_tokens(t: torch.Tensor) -> torch.Tensor:  # (B, N, H, ...) -> (B*nB, H, b, ...)
        return blocks(t).transpose(1, 2)

    def back(g: torch.Tensor) -> torch.Tensor:  # (B*nB, H, K*b, d) -> (B, N, H, d)
        picked = g.transpose(1, 2).reshape(-1, block, h, d)  # (B*nB*K, b, H, d)
        return g.new_zeros(b_ * nb, block, h, d).index_add_(0, idx, picked).view(b_, n, h, d)

    return _Piece(from_tokens(q), kx, vx, _additive(picked_ok, q.dtype).unsqueeze(1), to_tokens, from_tokens,
                  back), row_ok


def _global(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g_idx: torch.Tensor,
            g_ok: torch.Tensor) -> tuple[_Piece, torch.Tensor]:
    """Every query against the (B, G) global keys."""
    b_, n, h, d = q.shape
    flat = (g_idx + torch.arange(b_, device=g_idx.device)[:, None] * n).reshape(-1)  # into B*N rows
    kg, vg = (t.reshape(b_ * n, h, d).index_select(0, flat).view(b_, -1, h, d).transpose(1, 2) for t in (k, v))

    def back(g: torch.Tensor) -> torch.Tensor:  # (B, H, G, d) -> (B, N, H, d)
        return g.new_zeros(b_ * n, h, d).index_add_(0, flat, g.transpose(1, 2).reshape(-1, h, d)).view(b_, n, h, d)

    piece = _Piece(q.transpose(1, 2), kg, vg, _additive(g_ok, q.dtype).view(b_, 1, 1, -1),
                   lambda t: t.transpose(1, 2), lambda t: t.transpose(1, 2), back)
    return piece, g_ok.any(-1, keepdim=True).expand(b_, n)


class _BlockAttention(torch.autograd.Function):
    """(B, N, H, d) queries, keys, values -> (B, N, H, d), the pieces combined."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, reach: int,
                local_keys: torch.Tensor, token_allowed: torch.Tensor | None, extra_blocks: torch.Tensor | None,
                extra_valid: torch.Tensor | None, global_idx: torch.Tensor | None,
                global_ok: torch.Tensor | None) -> torch.Tensor:
        pieces: list[_Piece] = []
        row_ok: torch.Tensor | None = None
        made = [_band(q, k, v, block, reach, local_keys, token_allowed)]
        if extra_blocks is not None:
            assert extra_valid is not None  # a table comes with its validity
            made.append(_extra(q, k, v, block, local_keys, extra_blocks, extra_valid))
        if global_idx is not None:
            assert global_ok is not None  # global keys come with their validity
            made.append(_global(q, k, v, global_idx, global_ok))
        for piece, ok in made:
            pieces.append(piece)
            row_ok = ok if row_ok is None else row_ok | ok
        results = [p.forward() for p in pieces]
        lses = [lse for _, lse in results]
        if len(pieces) == 1:
            weights, out = None, results[0][0]
        else:
            weights = lse_weights(lses)  # (B, N, H, P)
            # a sum of at least two tensors: never sum()'s start value 0
            out = cast(torch.Tensor, sum(weights[..., i:i + 1] * o for i, (o, _) in enumerate(results)))
        assert row_ok is not None  # there is always the band piece
        row_ok = row_ok[:, :, None, None]
        out = torch.where(row_ok, out, 0.0)
        ctx.save_for_backward(out)
        ctx.pieces, ctx.row_ok, ctx.lses, ctx.weights = pieces, row_ok, lses, weights
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | int | None, ...]:
        (out,) = ctx.saved_tensors
        dout = torch.where(ctx.row_ok, dout, 0.0)
        pieces: list[_Piece] = ctx.pieces
        # 0 until the first piece (there is always the band) adds its gradients
        dq: torch.Tensor | int = 0
        dk: torch.Tensor | int = 0
        dv: torch.Tensor | int = 0
        for i, piece in enumerate(pieces):
            share = dout if ctx.weights is None else ctx.weights[..., i:i + 1] * dout
            gq, gk, gv = piece.backward(share, out, ctx.lses[i])
            dq, dk, dv = dq + gq, dk + gk, dv + gv
        return dq, dk, dv, None, None, None, None, None, None, None, None


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block: int, reach: int,
                    local_keys: torch.Tensor, token_allowed: torch.Tensor | None = None,
                    extra_blocks: torch.Tensor | None = None, extra_valid: torch.Tensor | None = None,
                    global_idx: torch.Tensor | None = None, global_ok: torch.Tensor | None = None) -> torch.Tensor:
    """q, k, v (B, H, N, d), N a multiple of ``block``. ``local_keys`` (B, N): the keys the band and
    the other blocks may use (real, not global); ``token_allowed`` (b, W*b): the token-level band,
    or None for whole blocks; ``extra_blocks``/``extra_valid`` (B, N/b, K): other key blocks per
    query block (none of them within ``reach``) and which entries are real; ``global_idx`` and
    ``global_ok`` (B, G): the global keys and whether each may be attended. Returns (B, H, N, d);
    rows with no allowed key are zero."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, N, H, d): the projections' own layout
    out: torch.Tensor = _BlockAttention.apply(  # type: ignore[no-untyped-call]  # torch leaves Function.apply untyped
        q, k, v, block, reach, local_keys, token_allowed, extra_blocks, extra_valid, global_idx, global_ok)
    return out.transpose(1, 2)
