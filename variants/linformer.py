"""Linformer (Wang et al. 2020): keys and values projected along the length to k rows.

Per head, with queries, keys and values Q, K, V of shape (N, Dh) from the usual fused projection,
and learned length projections E, F of shape (k, max_len) sliced to their first N columns:

    out = softmax(Q (E[:, :N] K)^T / sqrt(Dh)) (F[:, :N] V)        (N, k) weights, (N, Dh) output

The N x N score matrix is never formed: the projections cost O(k N Dh) and the attention over the
k projected rows O(N k Dh), so time and memory are O(N k) per head (``linear_memory``). The
softmax runs over the k projected rows, never over positions.

Options:
- ``share_kv``: F = E (one projection for keys and values; the paper's "key-value sharing");
- ``per_head``: E and F of shape (H, k, max_len), one per head (the paper's general form);
  the default shares them across heads, as lucidrains/linformer does (its ``proj_k``/``proj_v``
  are (seq_len, k), shared by the heads; ``one_kv_head`` there is another thing, not offered here).

k larger than ``max_len`` is reduced to ``max_len`` (``self.k``): beyond it the k projected rows
have rank at most max_len, and a model built for short sequences with the default k = 256 must
still work. Inputs longer than ``max_len`` are refused with a ValueError (E has max_len columns).

Initialisation: E and F ~ U(-1/sqrt(k), 1/sqrt(k)), as lucidrains/linformer's ``init_`` (LRA's
Flax code uses xavier_uniform on its (max_len, k) kernel instead).

Padding: padded keys and values are zeroed *before* the projection, so the projected rows are
sums over real positions only, and appended padding (extra columns of E, F times zero) changes
nothing. After the projection nothing is masked: every one of the k rows takes part in the
softmax, whatever the length. A batch element without any real key has all-zero projected values,
so its output is zero. The reference implementations do not mask: LRA's ``linformer_attention.py``
leaves padding in the projections (a TODO asks whether masks matter), lucidrains' takes no mask.

Limit case: k = N = max_len with E = F = I is exactly full softmax attention. With padding, E = F
= [I_L | 0] (identity on the L real positions, k = L) is full attention over the real keys; with
E = F = I_N and padding, the padded positions become zero keys with zero values that still take
softmax weight exp(0 - max) (they are not masked after the projection), which is Linformer's own
behaviour and not masked full attention.

Departures from LRA's run (``lra_benchmarks/models/linformer``): LRA used k = 16 (the default
``low_rank_features``, never overridden), one kernel for keys and values (``share_kv``) shared
across heads, and no padding mask; here k = 256, E and F separate (lucidrains' defaults), and
padding is masked before the projection. ``{"k": 16, "share_kv": true}`` is LRA's configuration
up to the initialisation and the masking.

Precision: fp16/bf16 inputs are computed in float32 (autocast is switched off inside ``attend``:
the projections sum over N, and the softmax) and cast back; float32 and float64 in their own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.harness.core.registry import param
from attnbench.variants.base import VARIANTS, Attention, padding_mask_or_none


@dataclass(frozen=True)
class LinformerConfig:
    """Linformer: projection along the length to k rows."""

    k: int = param(256, "projected length: keys and values are projected from N rows to k "
                        "(reduced to the layer's max_len when larger)", minimum=1)
    share_kv: bool = param(False, "one projection for keys and values (F = E)")
    per_head: bool = param(False, "one E (and F) per head; False: shared by all heads, as lucidrains/linformer")


@VARIANTS.register("linformer", LinformerConfig)
class LinformerAttention(Attention):
    """Linformer: keys and values projected along the length by learned E, F (k x max_len)."""

    complexity = "O(N k)"
    exact = False
    linear_memory = True
    small_params = {"k": 8}  # fewer rows than the N = 16..64 tokens of the tests
    lra_model = "Linformer"

    cfg: LinformerConfig
    #: F: None with ``share_kv`` (F = E)
    proj_f: nn.Parameter | None

    def __init__(self, dim: int, heads: int, cfg: LinformerConfig, max_len: int, dropout: float = 0.0):
        super().__init__(dim, heads, cfg, max_len, dropout)
        if cfg.k < 1:
            raise ValueError(f"linformer: k must be >= 1, got {cfg.k}")
        self.k = min(int(cfg.k), self.max_len)
        shape = (heads, self.k, self.max_len) if cfg.per_head else (self.k, self.max_len)
        bound = 1.0 / math.sqrt(self.k)
        self.proj_e = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        if cfg.share_kv:
            self.register_parameter("proj_f", None)
        else:
            self.proj_f = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, k={self.k}, max_len={self.max_len}, "
                f"share_kv={self.cfg.share_kv}, per_head={self.cfg.per_head}")

    def projections(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(E, F) sliced to n columns: (k, n) each, or (H, k, n) per head."""
        if n > self.max_len:
            raise ValueError(f"linformer: {n} tokens, but this layer was built for at most {self.max_len} "
                             f"(max_len: E and F have {self.max_len} columns)")
        e = self.proj_e[..., :n]
        f = e if self.proj_f is None else self.proj_f[..., :n]
        return e, f

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.projections(x.shape[1])  # refuse a too long input before projecting it
        return super().forward(x, key_padding_mask)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        in_dtype = q.dtype
        compute = torch.float32 if in_dtype in (torch.float16, torch.bfloat16) else in_dtype
        key_padding_mask = padding_mask_or_none(key_padding_mask)
        e, f = self.projections(k.shape[2])
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k, v = q.to(compute), k.to(compute), v.to(compute)
            if key_padding_mask is not None:  # mask before projecting: padding adds nothing to the k rows
                keep = key_padding_mask[:, None, :, None]
                k, v = k.masked_fill(~keep, 0.0), v.masked_fill(~keep, 0.0)
            e, f = e.to(compute), f.to(compute)
            # (k, N) or (H, k, N) @ (B, H, N, Dh) -> (B, H, k, Dh): the sums over N, in float32 or wider
            k_proj, v_proj = torch.matmul(e, k), torch.matmul(f, v)
            p = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k_proj, v_proj, dropout_p=p)
        return out.to(in_dtype)

    def flops(self, batch: int, seq_len: int) -> int:
        """Forward FLOPs (a multiply-add = 2): projections of the input and output, E K and F V,
        the (N, k) scores and the weighted sum of the k projected values."""
        bh, d = batch * self.heads, self.head_dim
        project = 2 * 2 * bh * self.k * seq_len * d   # E K and F V
        attend = 2 * 2 * bh * seq_len * self.k * d    # Q (EK)^T and P (FV)
        return project + attend + self.projection_flops(batch, seq_len)
