"""Sparse Transformer's "fixed" pattern as LRA's code ran it: the "Sparse Trans." row of LRA's Table 1.

LRA's ``get_model`` (google-research/long-range-arena, lra_benchmarks/utils/train_utils.py:76-77) gives the
Sparse Transformer of every task the same merged pattern, ``Fixed1Pattern(block_size=50)`` and
``Fixed2Pattern(block_size=50, c=10)``, which ``build_mask`` (models/sparse_transformer/sparse_attention.py:63-95)
turns into one N x N mask shared by every head:

- Fixed1 (:85-87): key j lies in query i's block of ``block_size`` tokens (i // b == j // b);
- Fixed2 (:88-91): key j is the first position of a block or one of its last c (j % b == 0 or
  j % b >= b - c); Child et al. (2019) give the last c only, LRA adds each block's first position;
- causal (:18, :82, :94): both hold only for keys j <= i ("all attention patterns are causal"), in the
  classifying encoder too;
- with CLS pooling (``use_cls_token``, :185-191, set by ``SparseTransformerEncoder`` when
  ``classifier_pool == 'CLS'``) the pattern is built on positions 1..N-1 and position 0's row and column
  are all allowed: every token attends position 0 and it attends every token. LRA's dual encoder
  (Retrieval) sets it as well, with no CLS token: there position 0 is the first byte. Its MEAN-pooled
  tasks (Pathfinder, Path-X) have no such position (``first_global: false``).

Padded keys are masked (:201-209). LRA computes it densely, softmax attention under the N x N mask with
attention dropout, and so does this layer: time and memory O(N^2) (``materialized_bytes``), not a
block-sparse kernel. The paper's own strided and local blocks, without LRA's pattern, are ``sparse`` with
``strided_every`` set.

Causal by default, as LRA ran it: a token's output depends on no later token (position 0 excepted with
``first_global``). That breaks none of the conventions in ``variants/base.py``: appended padding is later than
every real token, so it changes no real token's output (the registry-wide checks pass; tests/variants/
test_sparse_fixed.py states it). A CLS token at position 0 without ``first_global`` sees only itself, as
``harness/conformance/template.py`` warns of causal layers: keep ``first_global`` on where the task pools
position 0 (``pooling: cls`` or ``first``). ``causal: false`` gives the bidirectional fixed pattern.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attnbench.harness.core.registry import param
from attnbench.variants.base import VARIANTS, Attention, padding_mask_or_none
from attnbench.variants.lib import kernels
from attnbench.variants.lib.sdpa import masked_sdpa


@dataclass(frozen=True)
class SparseFixedConfig:
    """LRA's fixed Sparse Transformer pattern."""

    block_size: int = param(50, "tokens per block of the fixed pattern; LRA: 50 on every task (Fixed1Pattern and "
                            "Fixed2Pattern(block_size=50), train_utils.py:76-77)", minimum=1)
    summary: int = param(10, "c: the last c positions of every block (and its first) are attended from every later "
                         "block; LRA: 10 (Fixed2Pattern(c=10), train_utils.py:77, sparse_attention.py:88-91)",
                         minimum=0)
    causal: bool = param(True, "keys after the query are never attended (LRA's patterns are all causal, "
                         "sparse_attention.py:18,82,94); false: the bidirectional fixed pattern")
    first_global: bool = param(True, "position 0 attends every key and every query attends it, the pattern "
                               "shifted by one (LRA's use_cls_token with CLS pooling, sparse_attention.py:185-191); "
                               "false on LRA's MEAN-pooled tasks")


@VARIANTS.register("sparse_fixed", SparseFixedConfig)
class SparseFixedAttention(Attention):
    """Sparse Transformer's fixed pattern as LRA ran it: causal blocks of 50 and their summary positions."""

    complexity = "O(N^2) time and memory (dense attention under the fixed pattern's N x N mask, as LRA's code)"
    lra_model = "Sparse Trans."
    paper_values = {"causal": False}  # LRA's pattern is causal, in an encoder
    small_params = {"block_size": 4, "summary": 1}  # six blocks at the checks' 24 tokens

    cfg: SparseFixedConfig

    def pattern(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(N, N) bool: query i may attend key j under the pattern (before the padding mask)."""
        cfg, b = self.cfg, self.cfg.block_size
        pos = torch.arange(n, device=device) - int(cfg.first_global)  # the pattern starts after position 0
        i, j = pos[:, None], pos[None, :]
        offset = torch.remainder(j, b)
        allowed = (torch.div(i, b, rounding_mode="floor") == torch.div(j, b, rounding_mode="floor")) | \
            (offset == 0) | (offset >= b - cfg.summary)
        if cfg.causal:
            allowed = allowed & (j <= i)
        if cfg.first_global:
            allowed = allowed | (i < 0) | (j < 0)
        return allowed

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        kernels.note("sdpa", "one scaled_dot_product_attention call under the fixed pattern's N x N mask, as LRA's "
                     "code computes it")
        allowed = self.pattern(q.shape[2], q.device)[None, None]
        mask = padding_mask_or_none(key_padding_mask)
        if mask is not None:
            allowed = allowed & mask[:, None, None, :]
        # a row with no allowed key (a masked token whose visible keys are all masked) is zeros
        return masked_sdpa(q, k, v, allowed, self.dropout if self.training else 0.0)

    def flops(self, batch: int, seq_len: int) -> int:
        # dense: QK^T and PV over every (query, key) pair, masked or not, as full attention
        attn = 2 * 2 * batch * self.heads * seq_len * seq_len * self.head_dim
        return attn + self.projection_flops(batch, seq_len)

    def materialized_bytes(self, batch: int, seq_len: int, *, training: bool = False, padded: bool = True,
                           dtype: torch.dtype = torch.float32, device: str = "cuda") -> int:
        """The N x N masks one forward holds at once, at its peak inside SDPA: the pattern (N^2 bool) or, with
        padding, its product with the key mask (B N^2 bool, the pattern freed), ``masked_sdpa``'s copy that lets
        empty rows through (alike), and the additive float mask SDPA converts it to, in the dtype it runs in (the
        inputs', or autocast's). No (B, H, N, N) scores: SDPA's fused kernels (the CPU's flash kernel included)
        take the mask as it is. A CUDA kernel may add an aligned copy of the float mask; attention dropout on a
        CPU takes torch's math fallback, not counted (this is for planning GPU runs)."""
        masks = (batch if padded else 1) * seq_len * seq_len
        return masks * (2 + torch.empty((), dtype=dtype).element_size())

    def saved_bytes(self, batch: int, seq_len: int, *, padded: bool = True, dtype: torch.dtype = torch.float32,
                    device: str = "cuda") -> int:
        """The float mask SDPA keeps for its backward (B N^2, or N^2 without padding, in the dtype it runs in)."""
        rows = batch if padded else 1
        return rows * seq_len * seq_len * torch.empty((), dtype=dtype).element_size()
