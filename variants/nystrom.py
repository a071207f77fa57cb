"""Nystromformer (Xiong et al. 2021): softmax attention through m landmarks and a Nystrom approximation.

With q, k, v of shape (B, H, N, Dh) and m = ``landmarks``:

    landmarks  Q~, K~ (B, H, m, Dh): means of the queries and keys over m contiguous segments
    F = softmax(Q K~^T / sqrt(Dh))    (B, H, N, m)
    A = softmax(Q~ K~^T / sqrt(Dh))   (B, H, m, m)
    Bk = softmax(Q~ K^T / sqrt(Dh))   (B, H, m, N)
    out = F A^+ (Bk V)  [+ DepthwiseConv(V) when ``conv_kernel`` > 0]

computed as F (Z (Bk V)) with Z the pseudo-inverse A^+: nothing of size N x N is formed, time and
memory are O(N m Dh) per head, plus O(m^3) per pseudo-inverse iteration.

Pseudo-inverse: the iteration of the paper (Razavi et al. 2014), ``pinv_iterations`` times (6 as in
the paper): Z <- 1/4 Z (13 I - A Z (15 I - A Z (7 I - A Z))), from Z0 = A^T / (||A||_1 ||A||_inf),
the largest column sum times the largest row sum. These are taken per (batch element, head), as
the paper writes them; the reference code takes one maximum over the whole batch (mlpen's
"original" option, lucidrains'), which couples the elements of a batch: a departure on purpose, so
each element's output is the same alone or in any batch.

Landmarks and padding (``key_padding_mask`` (B, N), True = real token). Each element's real tokens,
in order, are split into m contiguous segments: the real token of rank r (0-based) among the L real
tokens of its element goes to segment floor(r m / L). Landmarks are the means over real tokens only;
padded positions (appended or holes) belong to no segment, so appended padding changes no landmark.
Padded keys get no weight in Bk (masked in its softmax) and their values are zeroed. A segment with
no token (an element with L < m real tokens: then each real token is a segment of its own and
m - L segments are empty) is an invalid landmark: masked out of the columns of F and of A and out
of the rows of A and Bk, so A is block-diagonal with a zero block, the iteration keeps that block
zero (its pseudo-inverse is the pseudo-inverse of the valid block, padded with zeros) and the empty
landmarks contribute nothing. An element with no real token at all gives zeros.

Limit case: with m >= L every real token is its own landmark, so F = A = Bk = S = softmax(Q K^T)
restricted to the real keys, and out = S S^+ S V = S V: full softmax attention, up to the
pseudo-inverse's convergence, which depends on the condition number of S (tests/variants/test_nystrom.py):
at ~5, 6 iterations reach rounding (1e-12 in float64); at ~4e3 they leave ~4e-2 (12 iterations
~3e-5, 15 rounding).

Scaling: queries and keys are each scaled by Dh^-1/4 before the landmark means, as the authors'
code (mlpen/Nystromformer); lucidrains scales the queries by Dh^-1/2. The scores are the same.

Other departures from the references: they need N to be a multiple of m (mlpen) or pad the sequence
at the front to one (lucidrains, whose first segment is then shorter); here the segments of L real
tokens have floor or ceil(L/m) tokens. Without a mask and with N a multiple of m the landmarks are
the references' reshape-means. The product is taken as F (Z (Bk V)) rather than (F Z)(Bk V) (cheaper,
the same in exact arithmetic). The optional skip is a depthwise convolution of V along the sequence
(odd kernel, no bias, one filter per head), as both references; padded values are zeroed before it.
``dropout`` is accepted and unused, as in the authors' code (no attention matrix to drop from).

Precision: fp16/bf16 inputs are computed in float32 (autocast is switched off inside ``attend``),
softmaxes and pseudo-inverse included, and the result is cast back; float32 and float64 are
computed in their own precision.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.harness.core.registry import param
from attnbench.variants.base import VARIANTS, Attention


@dataclass(frozen=True)
class NystromConfig:
    """Nystromformer: landmarks, pseudo-inverse iterations, and the optional convolution skip on V."""

    landmarks: int = param(64, "landmarks m: segment means of each element's real queries and keys "
                               "(the Nystromformer paper's LRA runs use 32..256)", minimum=1)
    pinv_iterations: int = param(6, "iterations of the Moore-Penrose pseudo-inverse of the m x m landmark "
                                    "kernel (6 in the paper)", minimum=1)
    conv_kernel: int = param(0, "depthwise convolution of V along the sequence added to the output, odd kernel "
                                "size (0: off; nystrom-attention's default residual is 33)", minimum=0)


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension restricted to ``allowed`` (broadcastable bool); a row with nothing
    allowed is zeros. Never NaN, in the forward or the backward pass (no all -inf row is formed)."""
    scores = scores.masked_fill(~allowed, float("-inf"))
    scores = scores.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    return torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)


def iterative_pinv(a: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of (..., m, m) matrices by the Nystromformer iteration.

    Z0 = A^T / (||A||_1 ||A||_inf) per matrix (largest absolute column sum times largest absolute
    row sum), then Z <- 1/4 Z (13 I - A Z (15 I - A Z (7 I - A Z))). Zero rows and columns of A
    stay zero in Z; an all-zero A gives Z = 0.
    """
    absa = a.abs()
    norm = absa.sum(-2).amax(-1) * absa.sum(-1).amax(-1)  # ||A||_1 ||A||_inf, (...,)
    z = a.transpose(-1, -2) / norm.clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def segment_weights(key_padding_mask: torch.Tensor, m: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The landmark means as weights: (B, N, m) with column s averaging segment s, and (B, m) validity.

    The real token of rank r among its element's L real tokens goes to segment floor(r m / L);
    padded positions get weight 0 everywhere. Empty segments have a zero column and are invalid.
    """
    mask = key_padding_mask
    rank = mask.cumsum(1) - 1                                  # (B, N) rank among real tokens
    length = mask.sum(1, keepdim=True).clamp(min=1)            # (B, 1)
    segment = torch.div(rank * m, length, rounding_mode="floor")
    onehot = (segment[..., None] == torch.arange(m, device=mask.device)) & mask[..., None]  # (B, N, m)
    count = onehot.sum(1)                                      # (B, m)
    weights = onehot.to(dtype) / count.clamp(min=1).to(dtype)[:, None, :]
    return weights, count > 0


@VARIANTS.register("nystrom", NystromConfig)
class NystromAttention(Attention):
    """Nystromformer: softmax attention approximated through m segment-mean landmarks, O(N m)."""

    complexity = "O(N m) time and memory (m landmarks), plus O(m^3) per pseudo-inverse iteration"
    exact = False
    linear_memory = True
    lra_model = "Nystromformer"  # not in LRA Table 1: its own paper's LRA row (report.lra_published)
    small_params = {"landmarks": 4, "conv_kernel": 3}  # N = 24: 6 tokens a segment; short elements: empty ones

    cfg: NystromConfig

    def __init__(self, dim: int, heads: int, cfg: NystromConfig, max_len: int, dropout: float = 0.0):
        super().__init__(dim, heads, cfg, max_len, dropout)
        if cfg.landmarks < 1 or cfg.pinv_iterations < 1:
            raise ValueError(f"nystrom: landmarks ({cfg.landmarks}) and pinv_iterations "
                             f"({cfg.pinv_iterations}) must be >= 1")
        if cfg.conv_kernel < 0 or (cfg.conv_kernel and cfg.conv_kernel % 2 == 0):
            raise ValueError(f"nystrom: conv_kernel must be 0 (off) or odd, got {cfg.conv_kernel}")
        self.conv: nn.Conv2d | None = None
        if cfg.conv_kernel:
            k = cfg.conv_kernel
            self.conv = nn.Conv2d(heads, heads, (k, 1), padding=(k // 2, 0), groups=heads, bias=False)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, landmarks={self.cfg.landmarks}, "
                f"pinv_iterations={self.cfg.pinv_iterations}, conv_kernel={self.cfg.conv_kernel}")

    def landmarks(self, q: torch.Tensor, k: torch.Tensor,
                  key_padding_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(Q~, K~) (B, H, m, Dh) and the landmarks' validity (B, m), or None when all are valid."""
        b, h, n, d = q.shape
        m = self.cfg.landmarks
        if key_padding_mask is None and n % m == 0:  # the references' case: equal segments, a reshape-mean
            return q.reshape(b, h, m, n // m, d).mean(-2), k.reshape(b, h, m, n // m, d).mean(-2), None
        if key_padding_mask is None:
            key_padding_mask = torch.ones(b, n, dtype=torch.bool, device=q.device)
        weights, valid = segment_weights(key_padding_mask, m, q.dtype)
        return (torch.einsum("bnm,bhnd->bhmd", weights, q),
                torch.einsum("bnm,bhnd->bhmd", weights, k), valid)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        in_dtype = q.dtype
        compute = torch.float32 if in_dtype in (torch.float16, torch.bfloat16) else in_dtype
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k, v = q.to(compute), k.to(compute), v.to(compute)
            scale = q.shape[-1] ** -0.25
            q, k = q * scale, k * scale
            if key_padding_mask is not None:  # junk in the padding can neither overflow nor leak
                keep = key_padding_mask[:, None, :, None]
                q, k, v = q.masked_fill(~keep, 0.0), k.masked_fill(~keep, 0.0), v.masked_fill(~keep, 0.0)
            q_l, k_l, valid = self.landmarks(q, k, key_padding_mask)
            f = q @ k_l.transpose(-1, -2)        # (B, H, N, m)
            a = q_l @ k_l.transpose(-1, -2)      # (B, H, m, m)
            bk = q_l @ k.transpose(-1, -2)       # (B, H, m, N)
            if valid is None:  # no mask, N a multiple of m: every landmark valid, every key real
                f, a, bk = f.softmax(-1), a.softmax(-1), bk.softmax(-1)
            else:
                lm = valid[:, None, None, :]     # (B, 1, 1, m)
                f = masked_softmax(f, lm)
                a = masked_softmax(a, lm & valid[:, None, :, None])
                keys = torch.ones_like(valid[:, :1]) if key_padding_mask is None else key_padding_mask
                bk = masked_softmax(bk, valid[:, None, :, None] & keys[:, None, None, :])
            z = iterative_pinv(a, self.cfg.pinv_iterations)
            out = f @ (z @ (bk @ v))
            if self.conv is not None:
                out = out + F.conv2d(v, self.conv.weight.to(compute), padding=self.conv.padding,
                                     groups=self.heads)
        return out.to(in_dtype)

    def flops(self, batch: int, seq_len: int) -> int:
        """Forward FLOPs (a multiply-add = 2) of the unmasked forward: landmarks, the three kernels with their
        softmaxes (about 4 FLOPs a score: max, exp, sum, divide), the pseudo-inverse, the products, the conv."""
        n, m, d = seq_len, self.cfg.landmarks, self.head_dim
        bh = batch * self.heads
        if n % m == 0:
            landmarks = 2 * n * d                    # reshape-means of Q and K
        else:
            landmarks = 2 * 2 * n * m * d            # segment weights times Q and K
        scores = 2 * (n * m + m * m + m * n) * d + 4 * (n * m + m * m + m * n)
        pinv = 3 * m * m + self.cfg.pinv_iterations * (4 * 2 * m ** 3 + 3 * m * m)
        products = 2 * m * n * d + 2 * m * m * d + 2 * n * m * d  # Bk V, Z (Bk V), F (Z Bk V)
        conv = 2 * self.cfg.conv_kernel * n * d
        return bh * (landmarks + scores + pinv + products + conv) + self.projection_flops(batch, seq_len)
