"""Block-sparse attention on short sequences: the same layout as one dense token mask.

Below ``MAX_TOKENS`` tokens the block machinery (gathered key blocks, one tiny attention per
query block, the global rows on the side) costs more than it saves: at 32 x 65 tokens a
training step of `window` took 1.6x and of `sparse` 2.2x that of full attention. Here the
layout's (B, N, N) token mask is built once per call (a scatter of the key-block table) and
one masked SDPA computes the same function: every query attends exactly the keys the block
path lets it attend (its blocks, narrowed token by token; the global keys; every key for a
global query), padded keys never, and a row with no allowed key is zeros. On the CPU only:
the scatter of the mask is deterministic there.
"""
from __future__ import annotations

import torch

from attnbench.variants.lib.sdpa import masked_sdpa

#: at most this many (block-padded) tokens take the dense path; tests set 0 to keep the block path
MAX_TOKENS = 256


def worthwhile(q: torch.Tensor) -> bool:
    """Whether (B, H, N, d) queries take the dense path: on the CPU, N at most MAX_TOKENS."""
    return q.device.type == "cpu" and q.shape[2] <= MAX_TOKENS


def layout_mask(n: int, block: int, key_mask: torch.Tensor, key_blocks: torch.Tensor | None,
                block_valid: torch.Tensor | None, reach: int | None, token_allowed: torch.Tensor | None,
                is_global: torch.Tensor) -> torch.Tensor:
    """The (B, N, N) bool mask (query, key) of a block layout, as ``blocks.block_sparse_attention``
    takes it: a key-block table (or ``reach`` neighbour blocks), the token mask inside the gathered
    blocks, global tokens (``is_global``, (B, N)) and the real keys (``key_mask``)."""
    bsz, nb = key_mask.shape[0], n // block
    device = key_mask.device
    if key_blocks is None:
        assert reach is not None  # no key-block table: the layout is the reach neighbour blocks
        rel = torch.arange(-reach, reach + 1, device=device)
        table = torch.arange(nb, device=device)[:, None] + rel[None, :]
        key_blocks, block_valid = table.clamp(0, nb - 1)[None], ((table >= 0) & (table < nb))[None]
    key_blocks = key_blocks.expand(bsz, -1, -1)
    kk = key_blocks.shape[-1]
    keys = (key_blocks[..., None] * block + torch.arange(block, device=device)).reshape(bsz, nb, 1, kk * block)
    ok = torch.ones(bsz, nb, 1, kk * block, dtype=torch.bool, device=device)
    if block_valid is not None:
        ok = block_valid.expand(bsz, -1, -1)[..., None].expand(-1, -1, -1, block).reshape(bsz, nb, 1, kk * block)
    ok = ok.expand(bsz, nb, block, kk * block)
    if token_allowed is not None:
        ok = ok & token_allowed
    # a table may name one block twice (clamped invalid entries): counts, never a racing bool write
    hits = torch.zeros(bsz, nb, block, n, dtype=torch.int32, device=device)
    hits.scatter_add_(3, keys.expand(bsz, nb, block, kk * block), ok.to(torch.int32))
    allowed = (hits > 0).view(bsz, n, n)
    allowed = allowed | is_global[:, None, :] | is_global[:, :, None]
    return allowed & key_mask[:, None, :]


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                    dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """Softmax attention of (B, H, N, D) q, k, v under the (B, N, N) ``allowed`` mask; rows with no
    allowed key are zeros (``sdpa.masked_sdpa``: no kernel sees such a row)."""
    return masked_sdpa(q, k, v, allowed[:, None], dropout if training else 0.0)
