"""Longformer-style sliding-window attention with global tokens.

Query i attends to the keys j with |i - j| <= window (one-sided window w: 2w + 1 keys),
plus the global tokens, which attend to and are attended by every token (the CLS token,
position 0, by default). Computed in blocks of ``block_size`` tokens: each query block
gathers its own and the neighbouring key blocks and masks them down to the exact band,
so memory and time are O(N * w), never N x N. Global keys are masked out of the band and
scored once, beside it. Sequences that are not a multiple of the block are padded and the
padding masked.

Two kernels compute it (the ``kernel`` parameter, ``flex_blocks``): the blockwise gather into
SDPA, and FlexAttention with the band as its mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attnbench.harness.core.registry import param
from attnbench.variants.base import VARIANTS, Attention
from attnbench.variants.lib.blocks import (
    block_sparse_attention,
    dense_mask_from_blocks,
    pad_to_multiple,
    real_lengths,
    resolve_positions,
)
from attnbench.variants.lib.flex_blocks import KERNEL_HELP, BlockKernelChoice, Kernel, flex_block_sparse_attention


@dataclass(frozen=True)
class WindowConfig:
    """Sliding window and global tokens."""

    window: int = param(64, "one-sided window w: query i sees keys j with |i - j| <= w", minimum=0)
    global_tokens: tuple[int, ...] = param((0,), "positions of global tokens (negative: from the end of the real "
                                           "tokens); [] for none")
    block_size: int = param(0, "tokens per block of the banded computation (0: the window, at least 16)", minimum=0)
    kernel: Kernel = param("auto", KERNEL_HELP)


@VARIANTS.register("window", WindowConfig)
class WindowAttention(BlockKernelChoice, Attention):
    """Longformer sliding-window attention plus global tokens, computed in blocks."""

    complexity = "O(N*w) time and memory"
    lra_model = "Longformer"
    linear_memory = True
    small_params = {"window": 3, "block_size": 4, "global_tokens": (0, -1)}

    cfg: WindowConfig
    #: the configured global positions, (G,) long (a non-persistent buffer)
    global_positions: torch.Tensor

    def __init__(self, dim: int, heads: int, cfg: WindowConfig, max_len: int, dropout: float = 0.0):
        super().__init__(dim, heads, cfg, max_len, dropout)
        # the configured positions, on the layer's device: a CUDA forward copies nothing from the
        # host. Not persistent: derived from the config, so checkpoints keep their keys
        self.register_buffer("global_positions", torch.tensor(cfg.global_tokens, dtype=torch.long), persistent=False)

    def block(self, n: int) -> int:
        b = self.cfg.block_size or max(self.cfg.window, 16)
        return max(1, min(b, n))

    def reach(self, block: int, n_blocks: int) -> int:
        """Neighbour key blocks on each side that the band touches, at most the other blocks there
        are: a window longer than the sequence costs what the sequence allows, not what it says."""
        return max(0, min(math.ceil(self.cfg.window / block), n_blocks - 1))

    def layout(self, n_padded: int, block: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Key-block table (1, nB, K), its validity, and the token-level band mask (b, K*b)."""
        nb = n_padded // block
        reach = self.reach(block, nb)
        rel = torch.arange(-reach, reach + 1, device=device)
        kb = torch.arange(nb, device=device)[:, None] + rel[None, :]
        valid = (kb >= 0) & (kb < nb)
        offs = torch.arange(block, device=device)
        # query offset r in block i, key offset c in block i + d: distance r - c - d*b
        dist = offs[:, None, None] - offs[None, None, :] - rel[None, :, None] * block
        band = (dist.abs() <= self.cfg.window).reshape(block, len(rel) * block)
        return kb.clamp(0, nb - 1)[None], valid[None], band

    def _prepare(self, n: int, key_padding_mask: torch.Tensor | None, batch: int, device: torch.device,
                 ) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The padded key mask, the block, the layout (``layout``) and the global tokens' positions and
        validity (B, G)."""
        mask = key_padding_mask if key_padding_mask is not None else \
            torch.ones(batch, n, dtype=torch.bool, device=device)
        block = self.block(n)
        mask = pad_to_multiple(mask, 1, block, value=False)
        key_blocks, valid, band = self.layout(mask.shape[1], block, device)
        g_idx, g_ok = resolve_positions(self.global_positions, real_lengths(mask))
        return mask, block, key_blocks, valid, band, g_idx, g_ok

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        n = q.shape[2]
        kernel, why = self.kernel_and_why_for(q, k, v)
        mask, block, _, _, band, g_idx, g_ok = self._prepare(n, key_padding_mask, q.shape[0], q.device)
        q, k, v = (pad_to_multiple(t, 2, block) for t in (q, k, v))
        if kernel == "flex":
            out = flex_block_sparse_attention(q, k, v, block=block, key_mask=mask, band=self.cfg.window,
                                              global_idx=g_idx, global_valid=g_ok)
        else:
            reach = self.reach(block, q.shape[2] // block)
            out = block_sparse_attention(q, k, v, block=block, key_mask=mask, reach=reach, token_allowed=band,
                                         global_idx=g_idx, global_valid=g_ok, dropout=self.dropout,
                                         training=self.training, choice=why)
        return out[:, :, :n]

    def dense_mask(self, n: int, key_padding_mask: torch.Tensor) -> torch.Tensor:
        """(B, N, N) token-level mask of this layout, for tests against dense attention."""
        mask, block, key_blocks, valid, band, g_idx, g_ok = self._prepare(
            n, key_padding_mask, key_padding_mask.shape[0], key_padding_mask.device)
        full = dense_mask_from_blocks(mask.shape[1], block, key_blocks.expand(mask.shape[0], -1, -1),
                                      valid.expand(mask.shape[0], -1, -1), band, g_idx, g_ok)
        return full[:, :n, :n]

    def flops(self, batch: int, seq_len: int) -> int:
        block = self.block(seq_len)
        n = math.ceil(seq_len / block) * block
        keys = (2 * self.reach(block, n // block) + 1) * block
        g = len(self.cfg.global_tokens)
        attn = 2 * 2 * batch * self.heads * n * (keys + g) * self.head_dim  # band + global columns
        attn += 2 * 2 * batch * self.heads * g * n * self.head_dim  # global rows
        return attn + self.projection_flops(batch, seq_len)
