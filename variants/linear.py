"""Linear attention (Katharopoulos et al. 2020), with Performer FAVOR+ features as an option.

Non-causal kernel attention with a key padding mask m (True = real token):

    out_i = phi(q_i)^T (sum_j m_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j m_j phi(k_j) + eps)

computed as two contractions over the sequence (KV = phi(K)^T V and z = sum_j phi(k_j)) and
two over the features, so nothing of size N x N is ever formed: time O(N F Dh), memory
O(N (F + Dh)) per head, F the feature dimension (Dh for elu, m for FAVOR+).

Feature maps:
- ``elu``: phi(x) = elu(x) + 1, evaluated as exp(min(x, 0)) + max(x, 0) (the same function,
  but it stays > 0 down to x ~ -87 in float32 where ``elu(x) + 1`` rounds to 0 below x ~ -17);
- ``favor``: Performer's positive random features (Choromanski et al. 2021). With x' = x d^-1/4,
  phi(x) = m^-1/2 (exp(w_r^T x' - |x'|^2/2 - s) + FAVOR_EPS), r = 1..m, where the rows w_r are
  block-orthogonal Gaussian directions with chi(d)-distributed norms, and s is a detached
  stabiliser: per query row for queries, and for keys one max per (batch element, head) taken
  over the *real* keys only, so that padding never changes the features of real keys.

Padding: padded keys (and their values) are zeroed before the feature map and their features are
zeroed after it, so they enter neither the sums nor the normaliser (performer-pytorch only zeroes
V, which leaves padded keys in the normaliser). A batch element without any real key gives zeros.

Precision: fp16/bf16 inputs are computed in float32 (autocast is switched off inside ``attend``)
and the result is cast back; float32 and float64 are computed in their own precision.

Randomness: the FAVOR+ projection is a buffer drawn at construction from a generator seeded with
``eval_seed`` mixed with one number drawn from torch's global generator, so each layer has its
own features and the model seed determines them. Eval mode always uses this buffer (deterministic);
training uses it too unless ``redraw``, in which case every training forward draws fresh features
from torch's global generator of the layer's device (``torch.manual_seed`` seeds the CPU's and every
GPU's), on that device, QR included: nothing is drawn in host memory and copied over, which on a GPU
would be a blocking copy per layer per step (the buffer is left unchanged).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch

from attnbench.harness.core.registry import param
from attnbench.variants.base import VARIANTS, Attention, padding_mask_or_none

#: the additive constant inside the FAVOR+ features (performer-pytorch's kernel_epsilon)
FAVOR_EPS = 1e-4


@dataclass(frozen=True)
class LinearConfig:
    """Linear (kernel) attention: the feature map and its options."""

    feature_map: Literal["elu", "favor"] = param(
        "elu", "kernel feature map: 'elu' (elu(x)+1, Katharopoulos et al.) or 'favor' "
               "(Performer FAVOR+ positive orthogonal random features, approximates softmax)")
    n_features: int = param(
        0, "FAVOR+ random features m per head; 0 means int(d * ln d) of the head dim d "
           "(ignored by 'elu', whose feature dimension is the head dim)", minimum=0)
    eps: float = param(1e-6, "added to the normaliser phi(q)^T sum_j phi(k_j)", minimum=0)
    redraw: bool = param(
        False, "FAVOR+: draw fresh random features on every training forward from torch's global "
               "generator (eval mode always uses the layer's fixed features)")
    eval_seed: int = param(
        0, "FAVOR+: seed of the layer's fixed features (mixed with a per-layer number drawn from "
           "torch's global generator at construction)", minimum=0)


class _EluPlusOne(torch.autograd.Function):
    """elu(x) + 1 = exp(min(x, 0)) + max(x, 0): strictly positive where exp(x) is (``elu(x) + 1``
    rounds to 0 below x ~ -17 in float32). Its derivative is min(phi, 1), so the backward pass
    needs only the output, which the einsums after it keep anyway: no extra saved tensors."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        phi = torch.exp(x.clamp(max=0)).add_(x.clamp(min=0))
        ctx.save_for_backward(phi)
        return phi

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        phi: torch.Tensor
        (phi,) = ctx.saved_tensors
        return grad * phi.clamp(max=1)


class _NormalisedContraction(torch.autograd.Function):
    """out = phi(Q) (phi(K)^T V) / (phi(Q) sum_j phi(k_j) + eps), per (batch, head), as matmuls.

    Its backward is written out so that nothing of size N x Dh is kept beyond the inputs: autograd
    through the four contractions and the division keeps the numerator phi(Q) KV for the division's
    backward (an extra N x Dh per head). With s = g / den and t = s KV^T:
    d phi(Q) = t - (phi(Q) . t) / den z^T, d KV = phi(Q)^T s, d z = phi(Q)^T d den, d phi(K) = V d KV^T
    + d z^T, d V = phi(K) d KV."""

    @staticmethod
    def forward(ctx: Any, phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
        kv = phi_k.transpose(-2, -1) @ v                          # (B, H, F, E): sum_j phi(k_j) v_j^T
        z = phi_k.sum(dim=-2).unsqueeze(-1)                       # (B, H, F, 1): sum_j phi(k_j)
        den = (phi_q @ z).add_(eps)                               # (B, H, N, 1)
        ctx.save_for_backward(phi_q, phi_k, v, kv, z, den)
        return (phi_q @ kv).div_(den)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        phi_q, phi_k, v, kv, z, den = ctx.saved_tensors
        s = grad / den                                            # d out / d numerator
        t = s @ kv.transpose(-2, -1)                              # (B, H, N, F)
        d_den = (phi_q.unsqueeze(-2) @ t.unsqueeze(-1)).squeeze(-1).div_(den).neg_()  # (B, H, N, 1)
        d_kv = phi_q.transpose(-2, -1) @ s
        del s
        d_z = phi_q.transpose(-2, -1) @ d_den                     # (B, H, F, 1)
        d_phi_q = t.addcmul_(d_den, z.transpose(-2, -1))          # t + d_den z^T, in place
        d_phi_k = (v @ d_kv.transpose(-2, -1)).add_(d_z.transpose(-2, -1))
        d_v = phi_k @ d_kv
        return d_phi_q, d_phi_k, d_v, None


def normalised_contraction(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """phi(Q) (phi(K)^T V) / (phi(Q) sum_j phi(k_j) + eps) of (B, H, N, F) features and (B, H, N, E) values."""
    # torch leaves Function.apply untyped
    return cast(torch.Tensor, _NormalisedContraction.apply(phi_q, phi_k, v, eps))  # type: ignore[no-untyped-call]


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """elu(x) + 1, strictly positive where exp(x) is."""
    return cast(torch.Tensor, _EluPlusOne.apply(x))  # type: ignore[no-untyped-call]  # Function.apply is untyped


def orthogonal_gaussian_projection(n_features: int, dim: int, generator: torch.Generator | None = None,
                                   device: torch.device | str | None = None) -> torch.Tensor:
    """(n_features, dim) float64 rows: block-orthogonal Gaussian directions, chi(dim) norms.

    Each block of ``dim`` rows is the transpose of the Q factor of a Gaussian dim x dim matrix
    (signs fixed by diag(R), so the block is Haar-distributed); the last block is cut to size.
    Every row is then scaled by the norm of an independent Gaussian vector, as the rows of an
    unstructured Gaussian matrix would be. Drawn and computed on ``device`` (None: the generator's, or
    the CPU) from ``generator`` (None = torch's global generator of that device).
    """
    if device is None:
        device = generator.device if generator is not None else "cpu"
    g = torch.randn(math.ceil(n_features / dim), dim, dim, generator=generator, dtype=torch.float64, device=device)
    qf: torch.Tensor  # torch.linalg.qr is typed as returning Any
    qf, r = torch.linalg.qr(g)                                   # one batched QR for all blocks
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    w = (qf * signs[:, None, :]).transpose(-2, -1).reshape(-1, dim)[:n_features]  # rows orthonormal per block
    norms: torch.Tensor = torch.randn(n_features, dim, generator=generator, dtype=torch.float64,
                                      device=device).norm(dim=1)
    return w * norms[:, None]


class _FavorFeatures(torch.autograd.Function):
    """phi = (exp(x W^T - |x|^2/2 - s) + eps) m^-1/2, computed in one (B, H, N, m) buffer in place.

    The backward pass needs only x and the output, which the contraction after it keeps anyway:
    with e = exp(...), d phi / d logits = e m^-1/2 = phi - eps m^-1/2, so d logits = g (phi - eps
    m^-1/2) and dx = d logits W - x sum_m d logits (s is a detached stabiliser). Autograd through
    the same expression keeps e as well, and its temporaries raise the peak by a few N x m more."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, projection: torch.Tensor, is_query: bool, keep: torch.Tensor | None,
                eps: float) -> torch.Tensor:
        m = projection.shape[0]
        logits = (x @ projection.transpose(0, 1)).sub_(0.5 * (x * x).sum(-1, keepdim=True))
        if is_query:  # a stabiliser per row
            stab = logits.amax(dim=-1, keepdim=True)
        else:  # keys: one per (batch element, head), over the real keys only
            if keep is not None:  # exp gives exact zeros at padded keys; they cannot set the max
                logits.masked_fill_(~keep, float("-inf"))
            stab = logits.amax(dim=(-2, -1), keepdim=True)
            stab = torch.where(torch.isfinite(stab), stab, torch.zeros_like(stab))  # no real key at all
        feats = logits.sub_(stab).exp_().add_(eps).mul_(m ** -0.5)
        if keep is not None:
            feats.masked_fill_(~keep, 0.0)
        ctx.save_for_backward(x, projection, feats, keep)
        ctx.shift = eps * m ** -0.5
        return feats

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        x, projection, feats, keep = ctx.saved_tensors
        d_logits = grad * (feats - ctx.shift)
        if keep is not None:
            d_logits.masked_fill_(~keep, 0.0)  # padded keys' features are constant zeros
        dx = (d_logits @ projection).sub_(x * d_logits.sum(-1, keepdim=True))
        return dx, None, None, None, None


def favor_features(x: torch.Tensor, projection: torch.Tensor, is_query: bool,
                   key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """FAVOR+ positive random features of (B, H, N, d) queries or keys -> (B, H, N, m).

    Keys at padded positions get zero features; the key stabiliser is the max over real keys.
    """
    keep = None if is_query or key_padding_mask is None else key_padding_mask[:, None, :, None]
    feats: torch.Tensor = _FavorFeatures.apply(  # type: ignore[no-untyped-call]  # Function.apply is untyped
        x * x.shape[-1] ** -0.25, projection, is_query, keep, FAVOR_EPS)
    return feats


@VARIANTS.register("linear", LinearConfig)
class LinearAttention(Attention):
    """Linear attention: kernel feature maps (elu+1 or Performer FAVOR+), O(N) time and memory."""

    complexity = "O(N F Dh) time, O(N (F + Dh)) memory per head; F = Dh (elu) or m features (FAVOR+)"
    exact = False
    linear_memory = True
    small_params = {}  # elu has no block/chunk size; N = 24 exercises the full mechanism

    cfg: LinearConfig
    #: FAVOR+'s fixed random features, (n_features, head dim): a buffer, with feature_map favor only
    projection: torch.Tensor

    @classmethod
    def published_as(cls, params: dict[str, Any]) -> str | None:
        return "Performer" if params.get("feature_map", LinearConfig.feature_map) == "favor" else "Linear Trans."

    def __init__(self, dim: int, heads: int, cfg: LinearConfig, max_len: int, dropout: float = 0.0):
        super().__init__(dim, heads, cfg, max_len, dropout)
        # dropout: there is no attention matrix to drop entries of; the argument is accepted and unused
        if cfg.feature_map not in ("elu", "favor"):
            raise ValueError(f"linear: unknown feature_map {cfg.feature_map!r}; allowed: 'elu', 'favor'")
        if cfg.n_features < 0 or cfg.eps < 0:
            raise ValueError(f"linear: n_features ({cfg.n_features}) and eps ({cfg.eps}) must be >= 0")
        self.n_features = self.head_dim
        self.layer_seed: int | None = None
        if cfg.feature_map == "favor":
            d = self.head_dim
            self.n_features = cfg.n_features or max(1, int(d * math.log(d)))
            self.layer_seed = self.draw_layer_seed()
            gen = torch.Generator().manual_seed(self.fixed_seed(cfg.eval_seed, self.layer_seed))
            proj = orthogonal_gaussian_projection(self.n_features, d, gen)
            self.register_buffer("projection", proj.to(torch.get_default_dtype()))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, feature_map={self.cfg.feature_map!r}, "
                f"features={self.n_features}, redraw={self.cfg.redraw}")

    def current_projection(self) -> torch.Tensor:
        """The FAVOR+ projection this forward uses: fixed, or freshly drawn when training with redraw."""
        if self.training and self.cfg.redraw:  # drawn where the layer lives: no copy from host memory
            fresh = orthogonal_gaussian_projection(self.n_features, self.head_dim, device=self.projection.device)
            return fresh.to(self.projection.dtype)
        return self.projection

    def feature_maps(self, q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None,
                     projection: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi(Q), phi(K)) with padded keys' features zeroed, in the dtype of q and k."""
        keep = None if key_padding_mask is None else key_padding_mask[:, None, :, None]
        if keep is not None:
            k = k.masked_fill(~keep, 0.0)  # junk in the padding can neither overflow nor leak
        if self.cfg.feature_map == "elu":
            phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)
            if keep is not None:
                phi_k = phi_k.masked_fill(~keep, 0.0)
            return phi_q, phi_k
        proj = (self.current_projection() if projection is None else projection).to(q.dtype)
        return (favor_features(q, proj, is_query=True),
                favor_features(k, proj, is_query=False, key_padding_mask=key_padding_mask))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        in_dtype = q.dtype
        compute = torch.float32 if in_dtype in (torch.float16, torch.bfloat16) else in_dtype
        key_padding_mask = padding_mask_or_none(key_padding_mask)  # nothing to mask: skip the masking passes
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k, v = q.to(compute), k.to(compute), v.to(compute)
            if key_padding_mask is not None:
                v = v.masked_fill(~key_padding_mask[:, None, :, None], 0.0)
            # a copy of its own: the contraction keeps v for the backward pass, and a view of the
            # fused q/k/v projection would keep all three alive (2 x N x D more at the peak)
            v = v.contiguous()
            phi_q, phi_k = self.feature_maps(q, k, key_padding_mask)
            out = normalised_contraction(phi_q, phi_k, v, self.cfg.eps)
        return out.to(in_dtype)

    def flops(self, batch: int, seq_len: int) -> int:
        """Forward FLOPs (a multiply-add = 2): projections, feature maps, KV, z, numerator, normaliser."""
        bhn, d, f = batch * self.heads * seq_len, self.head_dim, self.n_features
        attn = (2 * bhn * f * d      # KV = phi(K)^T V
                + bhn * f            # z = sum_j phi(k_j)
                + 2 * bhn * f * d    # phi(Q) KV
                + 2 * bhn * f        # phi(Q) z
                + bhn * d)           # division
        if self.cfg.feature_map == "favor":
            # w^T x for queries and keys, |x|^2, and exp/subtract/add/scale per feature
            feats = 2 * (2 * bhn * f * d + 2 * bhn * d + 4 * bhn * f)
        else:
            feats = 2 * 2 * bhn * d  # compare + add/exp per element, queries and keys
        return attn + feats + self.projection_flops(batch, seq_len)
