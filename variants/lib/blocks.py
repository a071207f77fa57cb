"""Block-sparse attention with global tokens: the mechanism shared by `window` and `sparse`.

The sequence is cut into blocks of ``block`` tokens. Each query block attends to a fixed
number K of key blocks (a table of block indices per query block, per batch element),
optionally restricted further by a token-level mask inside the gathered blocks. Scores
are (B, H, N/b, b, K*b): memory and time O(N * K * b), never N x N.

Global tokens (Longformer's global attention, BigBird's global blocks) are handled on
the side, as in HF Longformer: every query also scores the G global keys (concatenated
before the softmax; the global keys are masked out of the blocks, so no key is counted
twice), and the global queries attend to every key through a dense (G x N) attention
that overwrites their rows.

Positions given with negative indices count from the end of each element's *real*
tokens, so appended padding never moves them (padding invariance).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from attnbench.variants.lib import block_dense, block_flash, kernels
from attnbench.variants.lib.sdpa import masked_sdpa


def pad_to_multiple(x: torch.Tensor, dim: int, multiple: int, value: float = 0) -> torch.Tensor:
    extra = (-x.shape[dim]) % multiple
    if not extra:
        return x
    pad = [0, 0] * (x.dim() - dim - 1) + [0, extra]
    return F.pad(x, pad, value=value)


def real_lengths(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """(B,) number of tokens up to and including the last real one."""
    n = key_padding_mask.shape[1]
    pos = torch.arange(1, n + 1, device=key_padding_mask.device)
    return (key_padding_mask * pos).amax(dim=1)


def resolve_positions(spec: tuple[int, ...] | torch.Tensor,
                      lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (negatives from each element's real end) -> (B, G) indices and validity.

    ``spec``: the configured positions, a tuple or a (G,) long tensor. A layer passes a tensor
    it keeps on its own device (a non-persistent buffer), so a CUDA forward copies nothing from
    the host; a tuple is turned into a CPU tensor (for tests and host-side callers).
    Out-of-range positions and repeats (e.g. 0 and -1 in a one-token sequence) are invalid.
    """
    b = lengths.shape[0]
    if len(spec) == 0:
        empty = torch.zeros(b, 0, dtype=torch.long, device=lengths.device)
        return empty, empty.bool()
    if not isinstance(spec, torch.Tensor):
        spec = torch.tensor(spec, dtype=torch.long)
    s = spec.to(lengths.device)[None, :].expand(b, -1)
    idx = torch.where(s < 0, lengths[:, None] + s, s)
    valid = (idx >= 0) & (idx < lengths[:, None])
    idx = idx.clamp(min=0)
    same = (idx[:, :, None] == idx[:, None, :]) & valid[:, None, :]
    earlier = torch.tril(torch.ones(len(spec), len(spec), dtype=torch.bool, device=idx.device), diagonal=-1)
    valid = valid & ~(same & earlier).any(-1)
    return idx, valid


def _gather_blocks(t: torch.Tensor, key_blocks: torch.Tensor) -> torch.Tensor:
    """t (B, H, nB, b, D), key_blocks (B, nQ, K) -> (B, H, nQ, K*b, D).

    On the CPU whole blocks are copied by one ``index_select`` (over the flattened batch, heads and
    blocks unless the table is shared), about twice as fast as an elementwise ``gather`` forward and
    backward at 16K tokens, and one call however large the batch (a loop over the batch cost 2x a
    training step at 32 x 65 tokens); on CUDA the ``gather``, whose backward pass is deterministic
    under torch's deterministic mode."""
    b_, h, nb, blk, d = t.shape
    _, nq, k = key_blocks.shape
    if t.device.type == "cpu":
        if key_blocks.shape[0] == 1 or key_blocks.stride(0) == 0:
            picked = t.index_select(2, key_blocks[0].reshape(-1))
        else:
            rows = torch.arange(b_ * h, device=t.device).view(b_, h, 1) * nb + key_blocks.reshape(b_, 1, nq * k)
            picked = t.reshape(b_ * h * nb, blk, d).index_select(0, rows.reshape(-1))
        return picked.reshape(b_, h, nq, k * blk, d)
    idx = key_blocks.reshape(b_, 1, nq * k, 1, 1).expand(b_, h, nq * k, blk, d)
    return t.gather(2, idx).reshape(b_, h, nq, k * blk, d)


def _neighbour_blocks(t: torch.Tensor, reach: int) -> torch.Tensor:
    """t (B, H, nB, b, D) -> (B, H, nB, (2*reach+1)*b, D): blocks i-reach..i+reach of every
    block i, zeros (False) beyond the ends. Shifted slices, so the backward pass is slicing
    rather than a scatter."""
    nb = t.shape[2]
    edge = t.new_zeros(t.shape[:2] + (reach,) + t.shape[3:])
    padded = torch.cat([edge, t, edge], dim=2) if reach else t
    return torch.cat([padded[:, :, r:r + nb] for r in range(2 * reach + 1)], dim=3)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                           block: int, key_mask: torch.Tensor,
                           key_blocks: torch.Tensor | None = None, block_valid: torch.Tensor | None = None,
                           reach: int | None = None, token_allowed: torch.Tensor | None = None,
                           global_idx: torch.Tensor | None = None, global_valid: torch.Tensor | None = None,
                           dropout: float = 0.0, training: bool = False, choice: str = "") -> torch.Tensor:
    """Attention of q over the chosen key blocks plus global tokens.

    q, k, v: (B, H, N, D) with N a multiple of ``block``.
    key_blocks: (B or 1, N/b, K) key-block indices per query block; ``block_valid`` (same
    shape) marks real entries (invalid ones are padding of the table). Or, instead,
    ``reach``: every query block i attends key blocks i-reach..i+reach (K = 2*reach+1).
    key_mask: (B, N) bool, True = real key.
    token_allowed: optional bool, broadcastable to (N/b, b, K*b): query offset x gathered key.
    global_idx / global_valid: (B, G) global token positions and their validity.
    choice: why the layer runs a block path rather than FlexAttention (``flex_blocks.kernel_choice``), for
    the record of the kernel that ran (``variants.kernels``).
    Returns (B, H, N, D). Query rows with no allowed key are zero.

    Each query block with its gathered keys (and the global keys) is one batch entry of a
    fused ``scaled_dot_product_attention`` call: (B*N/b, H, b, D) queries against
    (B*N/b, H, K*b + G, D) keys, so scores are never materialised for the backward pass.
    With ``reach`` on the CPU and long sequences the neighbour blocks are not even copied
    (``flash_blocks``, ``block_flash.worthwhile``); on short ones the layout is one dense mask
    (``block_dense``).
    """
    if reach is not None and block_flash.worthwhile(q, dropout if training else 0.0):
        return flash_blocks(q, k, v, block=block, key_mask=key_mask, reach=reach, token_allowed=token_allowed,
                            global_idx=global_idx, global_valid=global_valid, choice=choice)
    bsz, heads, n, d = q.shape
    nb = n // block
    has_global = global_idx is not None and global_idx.shape[1] > 0
    is_global = global_token_mask(global_idx, global_valid, bsz, n, q.device)
    if block_dense.worthwhile(q):  # short sequences: the layout as one dense mask (variants/lib/block_dense.py)
        if kernels.active():
            kernels.note("dense", f"CPU, at most {block_dense.MAX_TOKENS} tokens: the layout as one dense token "
                         "mask in one SDPA call (variants/lib/block_dense.py)" + _because(choice))
        allowed = block_dense.layout_mask(n, block, key_mask, key_blocks, block_valid, reach, token_allowed,
                                          is_global)
        return block_dense.dense_attention(q, k, v, allowed, dropout, training)
    if kernels.active():
        kernels.note("gather", f"each query block's key blocks gathered into one fused SDPA call "
                     f"({_gather_because(q, dropout if training else 0.0)})" + _because(choice))
    if key_blocks is not None:
        key_blocks = key_blocks.expand(bsz, -1, -1)
        nq, kk = key_blocks.shape[1:]
        select = functools.partial(_gather_blocks, key_blocks=key_blocks)
    else:
        assert reach is not None  # no key-block table: the layout is the reach neighbour blocks
        nq, kk = nb, 2 * reach + 1
        select = functools.partial(_neighbour_blocks, reach=reach)

    # key-side mask of the gathered blocks: real, a valid table entry, and not global
    local_keys = (key_mask & ~is_global).view(bsz, 1, nb, block, 1)
    allowed = select(local_keys).view(bsz, nq, kk, block)
    if block_valid is not None:
        allowed = allowed & block_valid.expand(bsz, -1, -1)[..., None]
    allowed = allowed.view(bsz, nq, 1, kk * block)
    if token_allowed is not None:
        allowed = allowed & token_allowed  # (B, nQ, b, K*b)
    kb = select(k.view(bsz, heads, nb, block, d))  # (B, H, nQ, K*b, D)
    vb = select(v.view(bsz, heads, nb, block, d))
    if has_global:  # every query block also sees the global keys, once
        assert global_idx is not None and global_valid is not None  # has_global; positions come with validity
        g = global_idx.shape[1]
        gi = global_idx[:, None, :, None].expand(bsz, heads, g, d)
        kb = torch.cat([kb, k.gather(2, gi)[:, :, None].expand(-1, -1, nq, -1, -1)], dim=3)
        vb = torch.cat([vb, v.gather(2, gi)[:, :, None].expand(-1, -1, nq, -1, -1)], dim=3)
        g_ok = (global_valid & key_mask.gather(1, global_idx))[:, None, None, :]
        allowed = torch.cat([allowed, g_ok.expand(-1, nq, allowed.shape[2], -1)], dim=-1)
    width = kb.shape[3]
    # rows with no allowed key (padding, an all-padding block, a query whose band holds only padding) are
    # zeros, and never reach the kernel as such (masked_sdpa)
    out = masked_sdpa(
        q.view(bsz, heads, nb, block, d).transpose(1, 2).reshape(bsz * nq, heads, block, d),
        kb.transpose(1, 2).reshape(bsz * nq, heads, width, d),
        vb.transpose(1, 2).reshape(bsz * nq, heads, width, d),
        allowed.reshape(bsz * nq, 1, allowed.shape[2], width), dropout if training else 0.0)
    out = out.view(bsz, nq, heads, block, d).transpose(1, 2).reshape(bsz, heads, n, d)
    if has_global:
        assert global_idx is not None and global_valid is not None
        out = global_rows(q, k, v, out, global_idx, global_valid, key_mask, dropout, training)
    return out


def flash_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block: int, key_mask: torch.Tensor,
                 reach: int, token_allowed: torch.Tensor | None = None, extra_blocks: torch.Tensor | None = None,
                 extra_valid: torch.Tensor | None = None, global_idx: torch.Tensor | None = None,
                 global_valid: torch.Tensor | None = None, choice: str = "") -> torch.Tensor:
    """``block_sparse_attention`` through the CPU flash kernel (variants/lib/block_flash.py; check
    ``block_flash.worthwhile`` first): the band of ``reach`` neighbour blocks (narrowed by
    ``token_allowed``), other key blocks per query block (``extra_blocks``/``extra_valid``,
    (B, N/b, K), none within ``reach``), the global keys, and the global queries' dense rows."""
    if kernels.active():
        kernels.note("cpu-flash", f"CPU, float32/64, no attention dropout, at least {block_flash.MIN_TOKENS} "
                     "tokens: torch's CPU flash kernel on the band's views and the other key blocks "
                     "(variants/lib/block_flash.py)" + _because(choice))
    bsz, _, n, _ = q.shape
    has_global = global_idx is not None and global_idx.shape[1] > 0
    is_global = global_token_mask(global_idx, global_valid, bsz, n, q.device)
    global_ok = None
    if has_global:
        assert global_idx is not None and global_valid is not None  # has_global; positions come with validity
        global_ok = global_valid & key_mask.gather(1, global_idx)
    out = block_flash.block_attention(
        q, k, v, block=block, reach=reach, local_keys=key_mask & ~is_global, token_allowed=token_allowed,
        extra_blocks=extra_blocks, extra_valid=extra_valid, global_idx=global_idx if has_global else None,
        global_ok=global_ok)
    if not has_global:
        return out
    assert global_idx is not None and global_valid is not None
    return global_rows(q, k, v, out, global_idx, global_valid, key_mask)


def _gather_because(q: torch.Tensor, dropout: float) -> str:
    """Why the blocks went through the gather rather than a CPU-only path (block_dense, block_flash)."""
    if q.device.type == "cuda":
        return "CUDA"
    if dropout:
        return "attention dropout in training"
    return (f"CPU, {block_dense.MAX_TOKENS}-{block_flash.MIN_TOKENS} tokens, or a layout the CPU flash path "
            "does not take")


def _because(choice: str) -> str:
    """The layer's reason for a block path rather than FlexAttention, appended to a kernel note."""
    return f"; not flex: {choice}" if choice else ""


def global_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, global_idx: torch.Tensor,
                global_valid: torch.Tensor, key_mask: torch.Tensor, dropout: float = 0.0,
                training: bool = False) -> torch.Tensor:
    """Overwrite the rows of the global queries with dense attention over every real key."""
    bsz, heads, n, d = q.shape
    g = global_idx.shape[1]
    gi = global_idx[:, None, :, None].expand(bsz, heads, g, d)
    # an element with no real key at all: zero rows (masked_sdpa), never NaN
    rows = masked_sdpa(q.gather(2, gi), k, v, key_mask[:, None, None, :], dropout if training else 0.0)
    # place each valid global row at its position (a one-hot product, not a scatter: the
    # table may repeat a position among its invalid entries, and this stays deterministic)
    onehot = position_onehot(global_idx, global_valid, n)  # (B, G, N)
    placed = torch.einsum("bgn,bhgd->bhnd", onehot.to(rows.dtype), rows)
    return torch.where(onehot.any(1)[:, None, :, None], placed, out)


def global_token_mask(global_idx: torch.Tensor | None, global_valid: torch.Tensor | None,
                      bsz: int, n: int, device: torch.device) -> torch.Tensor:
    """(B, N) bool, True at the valid global token positions (all False without global tokens)."""
    if global_idx is None or global_idx.shape[1] == 0:
        return torch.zeros(bsz, n, dtype=torch.bool, device=device)
    assert global_valid is not None  # positions come with their validity
    return position_onehot(global_idx, global_valid, n).any(1)


def position_onehot(idx: torch.Tensor, valid: torch.Tensor, n: int) -> torch.Tensor:
    """(B, G) positions and validity -> (B, G, N) bool, row g true at position idx[g] if valid."""
    return (torch.arange(n, device=idx.device)[None, None, :] == idx[:, :, None]) & valid[:, :, None]


def dense_mask_from_blocks(n: int, block: int, key_blocks: torch.Tensor, block_valid: torch.Tensor,
                           token_allowed: torch.Tensor | None, global_idx: torch.Tensor | None,
                           global_valid: torch.Tensor | None) -> torch.Tensor:
    """The (B, N, N) token-level mask (True = query may attend key) equivalent to a layout.

    For tests: dense attention under this mask (and the key padding mask) must equal
    ``block_sparse_attention``.
    """
    bsz, nq, kk = key_blocks.shape
    offs = torch.arange(block, device=key_blocks.device)
    keys = (key_blocks[..., None] * block + offs).reshape(bsz, nq, kk * block)  # (B, nQ, K*b)
    ok = block_valid[..., None].expand(-1, -1, -1, block).reshape(bsz, nq, kk * block)
    ok = ok[:, :, None, :].expand(bsz, nq, block, kk * block)
    if token_allowed is not None:
        ok = ok & token_allowed.expand(nq, block, kk * block)
    mask = torch.zeros(bsz, n, n, dtype=torch.bool, device=key_blocks.device)
    rows = torch.arange(n, device=key_blocks.device).view(nq, block)
    for b_ in range(bsz):
        for qb in range(nq):
            for r in range(block):
                cols = keys[b_, qb][ok[b_, qb, r]]
                mask[b_, rows[qb, r], cols] = True
    if global_idx is not None:
        assert global_valid is not None  # positions come with their validity
        for b_ in range(bsz):
            for gpos, gval in zip(global_idx[b_].tolist(), global_valid[b_].tolist(), strict=True):
                if gval:
                    mask[b_, :, gpos] = True  # everyone attends the global token
                    mask[b_, gpos, :] = True  # the global token attends everyone
    return mask
