"""What the peer adapters (``attnbench.harness.compare.peers``) share: our projections around a peer's
attention core, and the masks and padding their libraries want.

An adapter puts a public implementation behind our layer interface, ``forward(x (B, N, D),
key_padding_mask (B, N) bool, True = real) -> (B, N, D)``; a mask of None means every token is real.
"""
from __future__ import annotations

import torch
from torch import nn


def all_real(mask: torch.Tensor | None) -> bool:
    """Whether every token is real (no mask, or an all-True one)."""
    return mask is None or bool(mask.all())


def mask_of(x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """The mask itself, or an all-True one shaped like ``x``'s (B, N)."""
    if key_padding_mask is not None:
        return key_padding_mask
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def pad_to(x: torch.Tensor, mask: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (B, N, D) and its mask padded at the end to a multiple of ``multiple`` tokens, the padding masked."""
    extra = (-x.shape[1]) % multiple
    if not extra:
        return x, mask
    x = torch.nn.functional.pad(x, (0, 0, 0, extra))
    mask = torch.nn.functional.pad(mask, (0, extra), value=False)
    return x, mask


class QKVOut(nn.Module):
    """Projections shaped like ours (``qkv``: D -> 3D, ``out``: D -> D) around a peer's attention core."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v, each (B, H, N, d)."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def merge(self, o: torch.Tensor) -> torch.Tensor:
        """(B, H, N, d) -> the output projection of (B, N, D)."""
        b, h, n, d = o.shape
        out: torch.Tensor = self.out(o.transpose(1, 2).reshape(b, n, h * d))
        return out
