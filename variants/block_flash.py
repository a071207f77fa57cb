"""Block attention through the CPU flash kernel (for variants/blocks.py): window, local and sparse.

The same function as ``blocks.block_sparse_attention``, computed per batch element as pieces of
attention over disjoint key sets, combined by their log-sum-exps (``flash_cpu``):

- the band: each query block against its own and ``reach`` neighbouring key blocks on each
  side, narrowed by a token-level mask. The keys and values are padded by ``reach`` filler
  blocks at each end and their windows are an overlapping *view* (``flash_cpu.windows``):
  nothing is copied per query block;
- other key blocks (sparse attention's strided and random blocks): a table of key blocks per
  query block, copied by ``index_select`` (whole blocks), their gradients added back with
  ``index_add``;
- the global keys: every query against them.

Each piece has one additive mask for all heads (excluded keys get ``MASK_VALUE``). Queries are
a view of the projections, (N/b, H, b, d) per element. The backward pass is the kernel's, per
piece, given the piece's share of the output gradient and the combined output (exact: see
``flash_cpu``). Query rows with no allowed key are zero, as in ``block_sparse_attention``; the
global queries' own rows are overwritten afterwards by the caller (``blocks.global_rows``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.variants.flash_cpu import FLASH, FLASH_BACKWARD, MASK_VALUE, fold_windows, lse_weights, windows


def _additive(allowed: torch.Tensor, dtype) -> torch.Tensor:
    return torch.where(allowed, 0.0, MASK_VALUE).to(dtype)


class _Piece:
    """One key set of one batch element: kernel inputs, and how its key gradients go back to (H, N, d)."""

    def __init__(self, q, k, v, mask, blocked: bool, back):
        self.q, self.k, self.v, self.mask, self.blocked, self.back = q, k, v, mask, blocked, back

    def forward(self):
        o, lse = FLASH(self.q, self.k, self.v, attn_mask=self.mask)
        if self.blocked:  # (nB, H, b, ...) -> (H, N, ...)
            return o.transpose(0, 1).flatten(1, 2), lse.transpose(0, 1).flatten(1, 2)
        return o[0], lse[0]

    def backward(self, share, out, lse):
        """share, out (H, N, d), lse (H, N) -> dq (H, N, d) and the key/value gradients in (H, N, d)."""
        if self.blocked:
            share, out = (t.unflatten(1, (-1, self.q.shape[2])).transpose(0, 1) for t in (share, out))
            lse = lse.unflatten(1, (-1, self.q.shape[2])).transpose(0, 1)
        else:
            share, out, lse = share[None], out[None], lse[None]
        dq, dk, dv = FLASH_BACKWARD(share, self.q, self.k, self.v, out, lse, 0.0, False, attn_mask=self.mask)
        dq = dq.transpose(0, 1).flatten(1, 2) if self.blocked else dq[0]
        return dq, self.back(dk), self.back(dv)


def _pieces(q, k, v, block, reach, local_keys, token_allowed, extra, g_idx, g_ok):
    """One element's pieces: q, k, v (H, N, d); local_keys (N,); extra = (table, valid) (nB, K) or None."""
    h, n, d = q.shape
    nb, pad = n // block, reach * block
    width = (2 * reach + 1) * block
    q_blocks = q.transpose(0, 1).unflatten(0, (nb, block)).transpose(1, 2)  # (nB, H, b, d), a view
    # the band: windows of the padded rows, (nB, H, W*b, d) views
    k_rows, v_rows = (F.pad(t.transpose(0, 1), (0, 0, 0, 0, pad, pad)) for t in (k, v))  # (N + 2 pad, H, d)
    keys_ok = F.pad(local_keys, (pad, pad), value=False).unfold(0, width, block)  # (nB, W*b)
    allowed = keys_ok[:, None, :] if token_allowed is None else keys_ok[:, None, :] & token_allowed
    row_ok = allowed.any(-1).expand(nb, block).reshape(n)
    pieces = [_Piece(q_blocks, windows(k_rows, 0, block, width), windows(v_rows, 0, block, width),
                     _additive(allowed, q.dtype).unsqueeze(1), True,
                     lambda g: fold_windows(g.transpose(0, 1), block)[:, pad:pad + n])]
    if extra is not None:  # other key blocks, copied
        table, valid = extra
        idx = table.reshape(-1)
        kx, vx = (t.transpose(0, 1).unflatten(0, (nb, block)).index_select(0, idx) for t in (k, v))  # (nB*K, b, H, d)
        picked_ok = local_keys.view(nb, block).index_select(0, idx).view(nb, -1, block) & valid[..., None]
        picked_ok = picked_ok.view(nb, 1, -1)
        row_ok = row_ok | picked_ok.any(-1).expand(nb, block).reshape(n)

        def back(g):  # (nB, H, K*b, d) -> (H, N, d)
            blocks = g.transpose(1, 2).reshape(-1, block, h, d)  # (nB*K, b, H, d)
            out = g.new_zeros(nb, block, h, d).index_add_(0, idx, blocks)
            return out.flatten(0, 1).transpose(0, 1)

        pieces.append(_Piece(q_blocks, kx.view(nb, -1, h, d).transpose(1, 2), vx.view(nb, -1, h, d).transpose(1, 2),
                             _additive(picked_ok, q.dtype).unsqueeze(1), True, back))
    if g_idx is not None:
        def back_global(g):  # (1, H, G, d) -> (H, N, d)
            return g.new_zeros(h, n, d).index_add_(1, g_idx, g[0])

        pieces.append(_Piece(q[None], k[:, g_idx][None], v[:, g_idx][None],
                             _additive(g_ok, q.dtype).view(1, 1, 1, -1), False, back_global))
        row_ok = row_ok | g_ok.any()
    return pieces, row_ok[None, :, None]


class _BlockAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, block, reach, local_keys, token_allowed, extra_blocks, extra_valid, global_idx,
                global_ok):
        per_element, outs = [], []
        for e in range(q.shape[0]):
            extra = None if extra_blocks is None else (extra_blocks[e], extra_valid[e])
            g_idx = None if global_idx is None else global_idx[e]
            g_ok = None if global_ok is None else global_ok[e]
            pieces, row_ok = _pieces(q[e], k[e], v[e], block, reach, local_keys[e], token_allowed, extra, g_idx, g_ok)
            results = [p.forward() for p in pieces]
            lses = [lse for _, lse in results]
            if len(pieces) == 1:
                weights, out = None, results[0][0]
            else:
                weights = lse_weights(lses)  # (H, N, P)
                out = sum(weights[..., i:i + 1] * o for i, (o, _) in enumerate(results))
            out = torch.where(row_ok, out, 0.0)
            per_element.append((pieces, row_ok, lses, weights))
            outs.append(out)
        out = _stack(outs)
        ctx.save_for_backward(out)
        ctx.per_element = per_element
        return out

    @staticmethod
    def backward(ctx, dout):
        (out,) = ctx.saved_tensors
        grads = []
        for e, (pieces, row_ok, lses, weights) in enumerate(ctx.per_element):
            d_e = torch.where(row_ok, dout[e], 0.0)
            dq = dk = dv = 0
            for i, piece in enumerate(pieces):
                share = d_e if weights is None else weights[..., i:i + 1] * d_e
                gq, gk, gv = piece.backward(share, out[e], lses[i])
                dq, dk, dv = dq + gq, dk + gk, dv + gv
            grads.append((dq, dk, dv))
        dq, dk, dv = (_stack(g) for g in zip(*grads, strict=True))
        return dq, dk, dv, None, None, None, None, None, None, None, None


def _stack(per_element) -> torch.Tensor:
    """Per-element results -> one batch (no copy for a batch of one)."""
    return per_element[0].unsqueeze(0) if len(per_element) == 1 else torch.stack(per_element)


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
    return _BlockAttention.apply(q, k, v, block, reach, local_keys, token_allowed, extra_blocks, extra_valid,
                                 global_idx, global_ok)
