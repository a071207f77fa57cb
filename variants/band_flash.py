"""Banded block attention plus global keys through the CPU flash kernel (for variants/blocks.py).

The same function as ``blocks.block_sparse_attention`` with ``reach`` (each query block sees its
own and ``reach`` neighbouring key blocks on each side, narrowed by a token-level mask, plus the
global keys), without copying the neighbour blocks: per batch element,

- the band piece: queries (N/b, H, b, d) a view of the projections; keys and values padded by
  ``reach`` filler blocks at each end, their (N/b, H, W*b, d) windows an overlapping view
  (``flash_cpu.windows``); one additive (N/b, 1, b, W*b) mask (the token-level band, real keys,
  not global, not filler) for all heads;
- the global piece: every query against the G global keys (valid and real ones only);
- the two combined by their log-sum-exps; the backward pass is the kernel's, given each piece's
  share of the output gradient and the combined output (exact: see ``flash_cpu``).

Query rows with no allowed key are zero, as in ``block_sparse_attention``. The global queries'
own rows are overwritten afterwards by the caller (``blocks.global_rows``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.variants.flash_cpu import FLASH, FLASH_BACKWARD, MASK_VALUE, fold_windows, lse_weights, windows


class _Element:
    """One batch element's inputs in the kernel's layout, and its masks."""

    def __init__(self, q, k, v, block, reach, local_keys, token_allowed, g_idx, g_ok):
        h, n, d = q.shape
        nb, pad = n // block, reach * block
        self.h, self.n, self.d, self.block, self.pad = h, n, d, block, pad
        width = (2 * reach + 1) * block
        self.q = q.transpose(0, 1).unflatten(0, (nb, block)).transpose(1, 2)  # (nB, H, b, d), a view
        self.k_rows = F.pad(k.transpose(0, 1), (0, 0, 0, 0, pad, pad))  # (N + 2 pad, H, d)
        self.v_rows = F.pad(v.transpose(0, 1), (0, 0, 0, 0, pad, pad))
        self.kw, self.vw = (windows(t, 0, block, width) for t in (self.k_rows, self.v_rows))  # (nB, H, W*b, d)
        keys_ok = F.pad(local_keys, (pad, pad), value=False).unfold(0, width, block)  # (nB, W*b)
        allowed = keys_ok[:, None, :] if token_allowed is None else keys_ok[:, None, :] & token_allowed
        self.mask = torch.where(allowed, 0.0, MASK_VALUE).to(q.dtype).unsqueeze(1)  # (nB, 1, b or 1, W*b)
        row_ok = allowed.any(-1).expand(nb, block).reshape(n)
        self.g_idx = g_idx
        if g_idx is not None:
            self.gk, self.gv = k[:, g_idx][None], v[:, g_idx][None]  # (1, H, G, d)
            self.g_mask = torch.where(g_ok, 0.0, MASK_VALUE).to(q.dtype).view(1, 1, 1, -1)
            row_ok = row_ok | g_ok.any()
        self.row_ok = row_ok[None, :, None]  # (1, N, 1)

    def to_hnd(self, t: torch.Tensor) -> torch.Tensor:
        """(nB, H, b, ...) -> (H, N, ...)."""
        return t.transpose(0, 1).flatten(1, 2)

    def to_blocks(self, t: torch.Tensor) -> torch.Tensor:
        """(H, N, d) -> (nB, H, b, d), a view."""
        return t.unflatten(1, (-1, self.block)).transpose(0, 1)

    def forward(self, q_full: torch.Tensor):
        o, lse = FLASH(self.q, self.kw, self.vw, attn_mask=self.mask)
        o, lse = self.to_hnd(o), self.to_hnd(lse)
        if self.g_idx is None:
            self.weights = None
            return torch.where(self.row_ok, o, 0.0), [lse]
        og, lse_g = FLASH(q_full[None], self.gk, self.gv, attn_mask=self.g_mask)
        self.weights = lse_weights([lse, lse_g[0]])  # (H, N, 2)
        out = self.weights[..., :1] * o + self.weights[..., 1:] * og[0]
        return torch.where(self.row_ok, out, 0.0), [lse, lse_g[0]]

    def backward(self, dout, out, lses, q_full):
        dout = torch.where(self.row_ok, dout, 0.0)
        share = dout if self.weights is None else self.weights[..., :1] * dout
        dq, dkw, dvw = FLASH_BACKWARD(self.to_blocks(share), self.q, self.kw, self.vw, self.to_blocks(out),
                                      lses[0].unflatten(1, (-1, self.block)).transpose(0, 1), 0.0, False,
                                      attn_mask=self.mask)
        n, pad = self.n, self.pad
        dq = self.to_hnd(dq)
        dk = fold_windows(dkw.transpose(0, 1), self.block)[:, pad:pad + n]  # (H, N, d)
        dv = fold_windows(dvw.transpose(0, 1), self.block)[:, pad:pad + n]
        if self.weights is not None:
            gq, gk, gv = FLASH_BACKWARD((self.weights[..., 1:] * dout)[None], q_full[None], self.gk, self.gv,
                                        out[None], lses[1][None], 0.0, False, attn_mask=self.g_mask)
            dq = dq + gq[0]
            dk = dk.index_add(1, self.g_idx, gk[0])
            dv = dv.index_add(1, self.g_idx, gv[0])
        return dq, dk, dv


def _stack(per_element) -> torch.Tensor:
    """Per-element results -> one batch (no copy for a batch of one)."""
    return per_element[0].unsqueeze(0) if len(per_element) == 1 else torch.stack(per_element)


class _BandAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, block, reach, local_keys, token_allowed, global_idx, global_ok):
        elements, outs, lses = [], [], []
        for e in range(q.shape[0]):
            g_idx = None if global_idx is None else global_idx[e]
            g_ok = None if global_ok is None else global_ok[e]
            el = _Element(q[e], k[e], v[e], block, reach, local_keys[e], token_allowed, g_idx, g_ok)
            out, lse = el.forward(q[e])
            elements.append(el)
            outs.append(out)
            lses.append(lse)
        out = _stack(outs)
        ctx.save_for_backward(q, out)
        ctx.elements, ctx.lses = elements, lses
        return out

    @staticmethod
    def backward(ctx, dout):
        q, out = ctx.saved_tensors
        grads = [el.backward(dout[e], out[e], ctx.lses[e], q[e]) for e, el in enumerate(ctx.elements)]
        dq, dk, dv = (_stack(g) for g in zip(*grads, strict=True))
        return dq, dk, dv, None, None, None, None, None, None


def band_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block: int, reach: int,
                   local_keys: torch.Tensor, token_allowed: torch.Tensor | None,
                   global_idx: torch.Tensor | None, global_ok: torch.Tensor | None) -> torch.Tensor:
    """q, k, v (B, H, N, d), N a multiple of ``block``; ``local_keys`` (B, N) the keys the band may
    use (real, not global); ``token_allowed`` (b, W*b) the token-level band or None; ``global_idx``
    and ``global_ok`` (B, G) the global keys and whether each may be attended (or None).
    Returns (B, H, N, d); rows with no allowed key are zero."""
    return _BandAttention.apply(q, k, v, block, reach, local_keys, token_allowed, global_idx, global_ok)
