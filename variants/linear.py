"""Linear attention (Katharopoulos et al. 2020), with Performer FAVOR+ features as an option.

Non-causal kernel attention with a key padding mask m (True = real token):

    out_i = phi(q_i)^T (sum_j m_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j m_j phi(k_j) + eps)

computed as two contractions over the sequence (KV = phi(K)^T V and z = sum_j phi(k_j)) and
two over the features, so nothing of size N x N is ever formed: time O(N F Dh), memory
O(N (F + Dh)) per head, F the feature dimension (Dh for elu and relu, m for FAVOR+). With eps = 0
a batch element without any real key gives zeros (its normaliser is 0, and so is its numerator).

Feature maps:
- ``elu``: phi(x) = elu(x) + 1, evaluated as exp(min(x, 0)) + max(x, 0) (the same function,
  but it stays > 0 down to x ~ -87 in float32 where ``elu(x) + 1`` rounds to 0 below x ~ -17);
- ``favor``: Performer's positive random features (Choromanski et al. 2021). With x' = x d^-1/4,
  phi(x) = m^-1/2 (exp(w_r^T x' - |x'|^2/2 - s) + FAVOR_EPS), r = 1..m, where the rows w_r are
  block-orthogonal Gaussian directions with chi(d)-distributed norms, and s is a stabiliser: per
  query row for queries, and for keys one max per (batch element, head) taken over the *real* keys
  only, so that padding never changes the features of real keys. The forward depends on s (the
  constant is added after exp(. - s)), and the backward pass is the exact gradient, s included
  (as JAX differentiates LRA's code; performer-pytorch detaches s);
- ``relu``: phi(x) = relu(x) + 1e-3 on the unscaled queries and keys, no random features: the
  Performer that LRA's code ran by default (its ``generalized`` kernel with deterministic features,
  performer_attention.py:267-269, :186, :293; performer.py:31), on Text, Retrieval, Image, Pathfinder.

LRA's Performer rows as its code computed them (google-research/long-range-arena, performer_attention.py):
- Text, Retrieval, Image, Pathfinder: ``{feature_map: relu, stabiliser: lra}`` or, the same function,
  ``{feature_map: relu, eps: 0}`` (its normaliser has no epsilon: numerical_stabilizer 0.0, :265,
  :695-696; LRA's guard never fires there, as relu + 1e-3 features give R >= d 1e-6 > eps);
- ListOps (listops/configs/performer_base.py:27): FAVOR+ with 2 features redrawn every call,
  ``{feature_map: favor, n_features: 2, redraw: true, stabiliser: lra}``. ``stabiliser: lra`` takes
  its numerics: the features add eps (its numerical_stabilizer, 1e-6, :235) instead of 1e-4 after
  subtracting max(w^T x') (:98-106) instead of max(w^T x' - |x'|^2/2), so a query or key of large norm
  gets features near the constant there; the normaliser R gets 2 eps where R <= eps (:695-696)
  instead of + eps. Its ortho_scaling 0 is ours (chi(d) row norms, :369-371). Left different: LRA
  draws the redrawn features from a hash of the queries in eval too (:580-584), here eval uses the
  layer's fixed draw (below); LRA's blocks are QR's Q without the sign fix that makes ours
  Haar-distributed (:356, :364); and LRA masks no padding (all its Performer rows), attnbench does.

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
#: the additive constant of LRA's ReLU features (kernel_epsilon, performer_attention.py:269)
RELU_EPS = 1e-3


@dataclass(frozen=True)
class LinearConfig:
    """Linear (kernel) attention: the feature map and its options."""

    feature_map: Literal["elu", "favor", "relu"] = param(
        "elu", "kernel feature map: 'elu' (elu(x)+1, Katharopoulos et al.), 'favor' (Performer FAVOR+ "
               "positive orthogonal random features, approximates softmax) or 'relu' (relu(x)+1e-3, no "
               "random features: LRA's code's Performer, its default 'generalized' kernel, "
               "performer_attention.py:267-269)")
    n_features: int = param(
        0, "FAVOR+ random features m per head; 0 means int(d * ln d) of the head dim d "
           "(ignored by 'elu' and 'relu', whose feature dimension is the head dim)", minimum=0)
    eps: float = param(1e-6, "added to the normaliser phi(q)^T sum_j phi(k_j) (0: none; an element "
                             "without real keys then gives zeros)", minimum=0)
    redraw: bool = param(
        False, "FAVOR+: draw fresh random features on every training forward from torch's global "
               "generator (eval mode always uses the layer's fixed features; LRA's code, "
               "performer_attention.py:580-584, redraws in eval too)")
    eval_seed: int = param(
        0, "FAVOR+: seed of the layer's fixed features (mixed with a per-layer number drawn from "
           "torch's global generator at construction)", minimum=0)
    stabiliser: Literal["default", "lra"] = param(
        "default", "'lra': LRA's code's Performer numerics (favor, relu; performer_attention.py): normaliser "
                   "+ 2 eps only where <= eps (:695-696); FAVOR+ features exp(. - max(w^T x')) + eps, not "
                   "exp(. - max(w^T x' - |x'|^2/2)) + 1e-4 (:98-106, :235)",
        added_later=True)


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

    With ``guard``, the normaliser R = phi(Q) sum_j phi(k_j) becomes R + 2 eps where R <= eps and stays
    R elsewhere (LRA's code, performer_attention.py:695-696). With eps = 0, a row whose R is 0 (the
    features are >= 0, so its numerator is 0 too: a batch element without real keys) gives 0, not
    0/0. Both change R by a constant, so the backward pass below is the same.

    Its backward is written out so that nothing of size N x Dh is kept beyond the inputs: autograd
    through the four contractions and the division keeps the numerator phi(Q) KV for the division's
    backward (an extra N x Dh per head). With s = g / den and t = s KV^T:
    d phi(Q) = t - (phi(Q) . t) / den z^T, d KV = phi(Q)^T s, d z = phi(Q)^T d den, d phi(K) = V d KV^T
    + d z^T, d V = phi(K) d KV."""

    @staticmethod
    def forward(ctx: Any, phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, eps: float,
                guard: bool) -> torch.Tensor:
        kv = phi_k.transpose(-2, -1) @ v                          # (B, H, F, E): sum_j phi(k_j) v_j^T
        z = phi_k.sum(dim=-2).unsqueeze(-1)                       # (B, H, F, 1): sum_j phi(k_j)
        den = phi_q @ z                                           # (B, H, N, 1)
        if guard:
            den = torch.where(den <= eps, den + 2 * eps, den)
        else:
            den.add_(eps)
        if eps == 0:  # 0/0 where nothing is attended to: 0/1
            den.masked_fill_(den == 0, 1.0)
        ctx.save_for_backward(phi_q, phi_k, v, kv, z, den)
        return (phi_q @ kv).div_(den)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None]:
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
        return d_phi_q, d_phi_k, d_v, None, None


def normalised_contraction(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, eps: float,
                           guard: bool = False) -> torch.Tensor:
    """phi(Q) (phi(K)^T V) / (phi(Q) sum_j phi(k_j) + eps) of (B, H, N, F) features and (B, H, N, E) values
    (``guard``: LRA's + 2 eps where the normaliser is <= eps instead)."""
    # torch leaves Function.apply untyped
    return cast(torch.Tensor, _NormalisedContraction.apply(  # type: ignore[no-untyped-call]
        phi_q, phi_k, v, eps, guard))


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """elu(x) + 1, strictly positive where exp(x) is."""
    return cast(torch.Tensor, _EluPlusOne.apply(x))  # type: ignore[no-untyped-call]  # Function.apply is untyped


class _ReluPlusEps(torch.autograd.Function):
    """relu(x) + eps. Its derivative is 1 where phi > eps, else 0, so the backward pass needs only the
    output, which the einsums after it keep anyway (an x > 0 so small that x + eps rounds to eps gets 0:
    the derivative of the function as rounded)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, eps: float) -> torch.Tensor:
        phi = x.clamp(min=0).add_(eps)
        ctx.save_for_backward(phi)
        ctx.eps = eps
        return phi

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        phi: torch.Tensor
        (phi,) = ctx.saved_tensors
        return grad * (phi > ctx.eps), None


def relu_feature_map(x: torch.Tensor, eps: float = RELU_EPS) -> torch.Tensor:
    """relu(x) + eps: LRA's 'generalized' Performer features (performer_attention.py:186, :267-269, :293)."""
    return cast(torch.Tensor, _ReluPlusEps.apply(x, eps))  # type: ignore[no-untyped-call]  # Function.apply is untyped


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

    s is the stabiliser: the max of the logits x W^T - |x|^2/2 (``lra=False``) or, as LRA's code
    has it (performer_attention.py:98-106), of the projections x W^T alone (``lra=True``); per row for
    queries, per (batch element, head) over the real keys for keys. The forward depends on s (eps is
    added after exp(. - s)), and the backward pass is the gradient of that forward, s included.

    The backward pass needs only x and the output, which the contraction after it keeps anyway:
    with e = exp(...) m^-1/2 = phi - eps m^-1/2, the logits get D = g e directly and, through s, minus
    the sum of D over s's group at the position of the max. Where the max is phi's largest value in
    the group (exp is increasing: the default stabiliser, and LRA's for queries, whose -|x|^2/2 is
    the same along the row), that position is found again from phi, so the forward keeps no index (a
    max with indices is several times slower than amax on a CPU); positions within rounding of the
    max share the group's sum, as autograd's amax shares it among ties. LRA's key stabiliser, the max
    of x W^T over all keys, need not sit at phi's largest value: there the forward keeps its index.
    Then dx = D' W - x r, r the row sums of D' for the default stabiliser (0 for queries) and of D for
    LRA's, whose s does not contain -|x|^2/2. Autograd through the same expression keeps e as well,
    and its temporaries raise the peak by a few N x m more."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, projection: torch.Tensor, is_query: bool, keep: torch.Tensor | None,
                eps: float, lra: bool) -> torch.Tensor:
        m = projection.shape[0]
        logits = x @ projection.transpose(0, 1)                  # w_r^T x
        keep_f = None  # keep as 1/0 in x's dtype: multiplying by it is much faster on a CPU than masked_fill_
        at: torch.Tensor | None = None  # where LRA's key stabiliser is: (B, H, 1) flat (key, feature) index
        if is_query:  # a stabiliser per row, where -|x|^2/2 is a constant: the default s is max(w^T x) - |x|^2/2
            stab = logits.amax(dim=-1, keepdim=True)
            if lra:  # LRA's s = max(w^T x) leaves -|x|^2/2 in the exponent
                stab.add_(0.5 * (x * x).sum(-1, keepdim=True))
        else:  # keys: one per (batch element, head), over the real keys only
            half_sq = 0.5 * (x * x).sum(-1, keepdim=True)
            if not lra:
                logits.sub_(half_sq)
            if keep is not None:  # exp gives exact zeros at padded keys; they cannot set the max
                keep_f = keep.to(x.dtype)
                logits.add_(torch.zeros_like(keep_f).masked_fill_(~keep, float("-inf")))  # x is finite there
            if lra:
                flat, at = logits.flatten(-2).max(dim=-1, keepdim=True)
                stab = flat.unsqueeze(-1)
            else:
                stab = logits.amax(dim=(-2, -1), keepdim=True)
            stab = torch.where(torch.isfinite(stab), stab, torch.zeros_like(stab))  # no real key at all
            if lra:
                stab = stab + half_sq
        feats = logits.sub_(stab).exp_().add_(eps).mul_(m ** -0.5)
        if keep_f is not None:
            feats.mul_(keep_f)
        ctx.save_for_backward(x, projection, feats, keep_f, at)
        ctx.shift, ctx.top, ctx.is_query, ctx.lra = eps * m ** -0.5, (1 + eps) * m ** -0.5, is_query, lra
        return feats

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None, None]:
        x, projection, feats, keep_f, at = ctx.saved_tensors
        # D = g e, e = phi - eps m^-1/2; 0 at padded keys (phi = 0 there), whose features are constants
        d_logits = feats.sub(ctx.shift if keep_f is None else keep_f * ctx.shift).mul_(grad)
        row = d_logits.sum(-1, keepdim=True)                     # (B, H, N, 1)
        total = row if ctx.is_query else row.sum(-2, keepdim=True)  # D summed over the stabiliser's group
        if at is not None:  # LRA's keys: s = w_r^T x_n at the flat index at = n m + r: D' = D - total there
            d_logits.flatten(-2).scatter_add_(-1, at, -total.flatten(-2))
        else:  # D' = D - total / count at the group's max: 1 there (ties share), 0 elsewhere (and at padding)
            if ctx.lra:  # LRA's queries: the max, exp(-|x|^2/2 + ...) + eps, differs from row to row
                top = feats.amax(dim=-1, keepdim=True).mul_(1 - 8 * torch.finfo(feats.dtype).eps).reciprocal_()
                at_max = feats.mul(top).floor_()
            else:  # (exp(0) + eps) m^-1/2 in every group; within 8 ulps of it counts as the max
                at_max = feats.mul(1 / (ctx.top * (1 - 8 * torch.finfo(feats.dtype).eps))).floor_()
            count_row = at_max.sum(-1, keepdim=True)
            share = total / (count_row if ctx.is_query else count_row.sum(-2, keepdim=True)).clamp(min=1)
            d_logits.addcmul_(at_max, share, value=-1.0)  # (no real key: count 0, total 0)
            del at_max
            if not (ctx.lra or ctx.is_query):
                row = row.sub_(count_row.mul_(share))            # the row sums of D'
        dx = d_logits @ projection
        if ctx.lra or not ctx.is_query:  # default queries: D' sums to 0 along the row, and x's terms cancel
            dx.sub_(x * row)
        return dx, None, None, None, None, None


def favor_features(x: torch.Tensor, projection: torch.Tensor, is_query: bool,
                   key_padding_mask: torch.Tensor | None = None, eps: float | None = None,
                   lra: bool = False) -> torch.Tensor:
    """FAVOR+ positive random features of (B, H, N, d) queries or keys -> (B, H, N, m).

    Keys at padded positions get zero features (their x must be finite: the layer zeroes them); the key
    stabiliser is the max over real keys. ``eps``: the constant added after exp (None: ``FAVOR_EPS``);
    ``lra``: LRA's stabiliser (the max of x' W^T instead of x' W^T - |x'|^2/2, performer_attention.py:98-106).
    """
    keep = None if is_query or key_padding_mask is None else key_padding_mask[:, None, :, None]
    # contiguous (x is often a view of the fused projection): x' W^T is then one matrix product, not a batch
    scaled = x.mul(x.shape[-1] ** -0.25).contiguous()
    feats: torch.Tensor = _FavorFeatures.apply(  # type: ignore[no-untyped-call]  # Function.apply is untyped
        scaled, projection, is_query, keep, FAVOR_EPS if eps is None else eps, lra)
    return feats


@VARIANTS.register("linear", LinearConfig)
class LinearAttention(Attention):
    """Linear attention: kernel feature maps (elu+1, Performer FAVOR+, or LRA's relu), O(N) time and memory."""

    complexity = "O(N F Dh) time, O(N (F + Dh)) memory per head; F = Dh (elu, relu) or m features (FAVOR+)"
    exact = False
    linear_memory = True
    small_params = {}  # elu has no block/chunk size; N = 24 exercises the full mechanism

    cfg: LinearConfig
    #: FAVOR+'s fixed random features, (n_features, head dim): a buffer, with feature_map favor only
    projection: torch.Tensor

    @classmethod
    def published_as(cls, params: dict[str, Any]) -> str | None:
        fmap = params.get("feature_map", LinearConfig.feature_map)
        return "Performer" if fmap in ("favor", "relu") else "Linear Trans."

    paper_values = {"stabiliser": "default"}

    @classmethod
    def lra_code_form(cls, params: dict[str, Any]) -> bool:
        """LRA's code's Performer: its generalized ReLU kernel, or its numerics (``stabiliser: lra``)."""
        return params.get("feature_map") == "relu" or super().lra_code_form(params)

    def __init__(self, dim: int, heads: int, cfg: LinearConfig, max_len: int, dropout: float = 0.0):
        super().__init__(dim, heads, cfg, max_len, dropout)
        # dropout: there is no attention matrix to drop entries of; the argument is accepted and unused
        if cfg.feature_map not in ("elu", "favor", "relu"):
            raise ValueError(f"linear: unknown feature_map {cfg.feature_map!r}; allowed: 'elu', 'favor', 'relu'")
        if cfg.n_features < 0 or cfg.eps < 0:
            raise ValueError(f"linear: n_features ({cfg.n_features}) and eps ({cfg.eps}) must be >= 0")
        if cfg.stabiliser not in ("default", "lra"):
            raise ValueError(f"linear: unknown stabiliser {cfg.stabiliser!r}; allowed: 'default', 'lra'")
        if cfg.stabiliser == "lra" and cfg.feature_map == "elu":
            raise ValueError("linear: stabiliser 'lra' is the form of LRA's Performer code (feature_map favor "
                             "or relu); LRA's Linear Trans. (elu) adds eps to the normaliser, as the default does")
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
                f"features={self.n_features}, redraw={self.cfg.redraw}, stabiliser={self.cfg.stabiliser!r}")

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
        if self.cfg.feature_map != "favor":
            fmap = elu_feature_map if self.cfg.feature_map == "elu" else relu_feature_map
            phi_q, phi_k = fmap(q), fmap(k)
            if keep is not None:
                phi_k = phi_k.masked_fill(~keep, 0.0)
            return phi_q, phi_k
        proj = (self.current_projection() if projection is None else projection).to(q.dtype)
        lra = self.cfg.stabiliser == "lra"
        eps = self.cfg.eps if lra else None  # LRA's code adds its numerical_stabilizer (:235)
        return (favor_features(q, proj, is_query=True, eps=eps, lra=lra),
                favor_features(k, proj, is_query=False, key_padding_mask=key_padding_mask, eps=eps, lra=lra))

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
            out = normalised_contraction(phi_q, phi_k, v, self.cfg.eps, guard=self.cfg.stabiliser == "lra")
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
            feats = 2 * 2 * bhn * d  # compare + add/exp (elu) or max + add (relu) per element, queries and keys
        return attn + feats + self.projection_flops(batch, seq_len)
