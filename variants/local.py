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

LRA's released code (``lra_benchmarks/models/local/local_attention.py``) computes something else;
``groups: strided`` computes that instead (the default, ``contiguous``, is the above):
- it pads the sequence by ``extra_len = b - L % b`` zero rows (:229, :233), so a whole extra block when L is a
  multiple of b, and pads its padding mask with -1e9 (:238), which is True for a bool mask: the padding
  counts as real. Its projections have no bias (local.py passes ``bias=False``), so these keys and values
  are zero vectors: each adds a logit of 0 and a value of 0 to its group's softmax. Here q, k and v are padded
  with zeros the same way (exact when the model has ``qkv_bias: false``, as LRA's profile sets);
- it reshapes the L' = L + extra_len positions (batch, L', heads, d) to (batch, b, L'/b, heads, d) and
  attends along the b axis (:318-323): the groups are the positions with equal i mod (L'/b), b tokens spread
  evenly over the sequence, not b consecutive ones (ListOps 2001 tokens with the [CLS]: 41 groups; Text 1001:
  21; Retrieval 4000: 81; Image and Pathfinder 1024 at b = 64: 17);
- it cuts its padding mask into consecutive runs of b (:342-343) while the queries and keys are grouped by
  stride, so query slot s and key slot t of group g are masked by the entries of positions g b + s and
  g b + t, not their own; a masked pair gets -1e10, so a query row whose entry is False attends uniformly
  to its group's b keys (``lib.strided_groups``). Padding then takes part in attention and real tokens
  may be masked: appended padding changes every group. The conventions of ``Attention`` on padding do not
  hold, so such a layer sets ``supports_padding_mask = False`` on itself (the conformance checks then skip the
  padding checks; ``tests/variants/test_lra_strided_groups.py`` shows it fails them).
``groups: strided`` runs one SDPA call over all the groups (``lib.strided_groups``), whatever ``kernel``
says (auto and gather take it; flex is refused). LRA's attention dropout is per weight
(``broadcast_dropout=False``), as SDPA's.

LRA's default block is 50 (the encoder's default, used by ListOps, Text and Retrieval, whose configs do
not set it); its Image and Pathfinder configs set 64. The default here is 50.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from attnbench.harness.core.registry import param
from attnbench.variants.base import VARIANTS, Attention, padding_mask_or_none
from attnbench.variants.lib import kernels
from attnbench.variants.lib.blocks import block_sparse_attention, pad_to_multiple
from attnbench.variants.lib.flex_blocks import KERNEL_HELP, BlockKernelChoice, Kernel, flex_block_sparse_attention
from attnbench.variants.lib.strided_groups import (
    contiguous_cut,
    group_strided,
    lra_group_attention,
    lra_pair_mask,
    ungroup_strided,
)

#: the kernel note of ``groups: strided``
STRIDED_WHY = ("groups: strided: the strided groups (LRA's reshape) in one SDPA call, each group's b queries over "
               "its b keys")


@dataclass(frozen=True)
class LocalConfig:
    """Non-overlapping local blocks."""

    block_size: int = param(50, "tokens per block; a query attends only the keys of its own block (LRA: 50 for "
                                "ListOps, Text and Retrieval, 64 for Image and Pathfinder)", minimum=1)
    kernel: Kernel = param("auto", KERNEL_HELP)
    groups: Literal["contiguous", "strided"] = param(
        "contiguous", "contiguous: blocks of consecutive tokens; strided: as LRA's released code "
        "(local/local_attention.py:229-238, :318-343): block_size - L % block_size zero tokens appended and "
        "counted as real, groups of the positions equal mod L'/block_size, the padding mask cut in consecutive runs",
        added_later=True)


@VARIANTS.register("local", LocalConfig)
class LocalAttention(BlockKernelChoice, Attention):
    """LRA's Local Attention: each query attends the keys of its own non-overlapping block."""

    complexity = "O(N*b) time and memory (b = block size)"
    linear_memory = True
    lra_model = "Local Attention"
    paper_values = {"groups": "contiguous"}
    small_params = {"block_size": 5}  # N = 24: five blocks, the last one padded

    cfg: LocalConfig

    def __init__(self, dim: int, heads: int, cfg: LocalConfig, max_len: int, dropout: float = 0.0):
        super().__init__(dim, heads, cfg, max_len, dropout)
        if cfg.block_size < 1:
            raise ValueError(f"local: block_size must be >= 1, got {cfg.block_size}")
        if cfg.groups == "strided":
            if cfg.kernel == "flex":
                raise ValueError("local: groups: strided runs its own SDPA path; kernel must be auto or gather, "
                                 "not flex")
            # by design the groups and the mask cut depend on the whole length (module doc), so appended padding
            # changes the real tokens' outputs. The flag is a class-level default that this layer's parameters
            # override; the conformance checks read it from the layer, which mypy's ClassVar rule does not foresee
            self.supports_padding_mask = False  # type: ignore[misc]

    def kernel_and_reason(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> tuple[str, str]:
        if self.cfg.groups == "strided":
            return "gather", STRIDED_WHY
        return super().kernel_and_reason(device, dtype)

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
        if self.cfg.groups == "strided":
            return self._attend_strided(q, k, v, key_padding_mask)
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

    def _attend_strided(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """``groups: strided``: LRA's local_attention.py, its padding and its mask cut included."""
        kernels.note("gather", STRIDED_WHY)
        bsz, n, block = q.shape[0], q.shape[2], self.cfg.block_size
        extra = block - n % block  # LRA's extra_len: 1 to block zero tokens, a whole block when n is a multiple
        q, k, v = (F.pad(t, (0, 0, 0, extra)) for t in (q, k, v))
        allowed = None
        mask = padding_mask_or_none(key_padding_mask)
        if mask is not None:  # LRA pads its mask with -1e9, True as a bool: the extra tokens count as real
            allowed = lra_pair_mask(contiguous_cut(F.pad(mask, (0, extra), value=True), block))
        out = lra_group_attention(group_strided(q, block), group_strided(k, block), group_strided(v, block),
                                  allowed, self.dropout if self.training else 0.0)
        return ungroup_strided(out, bsz)[:, :, :n]

    def flops(self, batch: int, seq_len: int) -> int:
        if self.cfg.groups == "strided":
            block = self.cfg.block_size
            n = seq_len + block - seq_len % block
        else:
            block = self.block(seq_len)
            n = math.ceil(seq_len / block) * block
        attn = 2 * 2 * batch * self.heads * n * block * self.head_dim  # QK^T and PV within each block
        return attn + self.projection_flops(batch, seq_len)
