"""LRA's "Local Attention": non-overlapping blocks, each query attends only the keys of its own block.

The sequence is cut into consecutive blocks of b = ``block_size`` tokens (positions
[0, b), [b, 2b), ...); query i attends the real keys j with i // b == j // b, and nothing else:
no overlap between blocks, no neighbouring blocks, no global tokens. Shapes: q, k, v
(B, H, N, Dh) -> (B, H, N, Dh); scores (B, H, N/b, b, b), so time and memory are O(N b).

Computed by the shared block-sparse mechanism (``blocks.block_sparse_attention`` with
``reach=0``: each query block's key blocks are itself alone), or by FlexAttention with the
block-diagonal layout (``kernel``, see ``flex_blocks``). A sequence that is not a multiple of
the block is padded to one and the padding masked as keys. The blocks are fixed from position 0,
so appended padding never moves a real token to another block: the real tokens' outputs do not
change. A block shorter than b (the last one, or the whole sequence when N < b: then b = N) is
simply a smaller block. A query whose block holds no real key (a block of padding) gets zeros.

Limit case: with b >= N there is one block and the layer is full softmax attention (with its
key padding mask).

Departures from LRA's released code (``lra_benchmarks/models/local/local_attention.py``):
- LRA reshapes (batch, L, heads, d) to (batch, block_size, L / block_size, heads, d) and
  attends along the block_size axis, so its groups are positions with equal i mod (L / b), a
  strided pattern, not the contiguous blocks the paper describes; here blocks are contiguous;
- LRA pads the sequence with a whole extra block even when L is a multiple of b and treats that
  padding as real (its padding mask is padded with a truthy -1e9), and it cuts its padding mask
  into contiguous blocks while the queries are grouped by stride; here padding (appended by the
  caller or to reach a multiple of b) is always masked as keys.
- LRA's default block is 50 (the encoder's default, used by ListOps, Text and Retrieval, whose
  configs do not set it); its Image and Pathfinder configs set 64. The default here is 50.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attnbench.harness.core.registry import param
from attnbench.variants.base import VARIANTS, Attention
from attnbench.variants.lib.blocks import block_sparse_attention, pad_to_multiple
from attnbench.variants.lib.flex_blocks import KERNEL_HELP, BlockKernelChoice, Kernel, flex_block_sparse_attention


@dataclass(frozen=True)
class LocalConfig:
    """Non-overlapping local blocks."""

    block_size: int = param(50, "tokens per block; a query attends only the keys of its own block (LRA: 50 for "
                                "ListOps, Text and Retrieval, 64 for Image and Pathfinder)", minimum=1)
    kernel: Kernel = param("auto", KERNEL_HELP)


@VARIANTS.register("local", LocalConfig)
class LocalAttention(BlockKernelChoice, Attention):
    """LRA's Local Attention: each query attends the keys of its own non-overlapping block."""

    complexity = "O(N*b) time and memory (b = block size)"
    linear_memory = True
    lra_model = "Local Attention"
    small_params = {"block_size": 5}  # N = 24: five blocks, the last one padded

    cfg: LocalConfig

    def __init__(self, dim: int, heads: int, cfg: LocalConfig, max_len: int, dropout: float = 0.0):
        super().__init__(dim, heads, cfg, max_len, dropout)
        if cfg.block_size < 1:
            raise ValueError(f"local: block_size must be >= 1, got {cfg.block_size}")

    def block(self, n: int) -> int:
        """The block for a sequence of n tokens: the configured size, or n when that is shorter (one block
        either way, so appended padding cannot change which real tokens share a block)."""
        return max(1, min(self.cfg.block_size, n))

    def _prepare(self, n: int, key_padding_mask: torch.Tensor | None, batch: int,
                 device: torch.device) -> tuple[torch.Tensor, int]:
        mask = key_padding_mask if key_padding_mask is not None else \
            torch.ones(batch, n, dtype=torch.bool, device=device)
        block = self.block(n)
        return pad_to_multiple(mask, 1, block, value=False), block

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        n = q.shape[2]
        kernel, why = self.kernel_and_why_for(q, k, v)
        mask, block = self._prepare(n, key_padding_mask, q.shape[0], q.device)
        q, k, v = (pad_to_multiple(t, 2, block) for t in (q, k, v))
        if kernel == "flex":
            nb = mask.shape[1] // block
            own = torch.eye(nb, dtype=torch.bool, device=q.device)[None]  # block i attends block i only
            out = flex_block_sparse_attention(q, k, v, block=block, key_mask=mask, block_pairs=own)
        else:
            out = block_sparse_attention(q, k, v, block=block, key_mask=mask, reach=0,
                                         dropout=self.dropout, training=self.training, choice=why)
        return out[:, :, :n]

    def flops(self, batch: int, seq_len: int) -> int:
        block = self.block(seq_len)
        n = math.ceil(seq_len / block) * block
        attn = 2 * 2 * batch * self.heads * n * block * self.head_dim  # QK^T and PV within each block
        return attn + self.projection_flops(batch, seq_len)
