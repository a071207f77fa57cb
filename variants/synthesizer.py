"""Synthesizer (Tay et al. 2021): attention weights synthesised without query-key dot products.

Per head h, with values V_h = (x W_v + b_v) split into heads, shape (N, Dh), and synthetic logits
B_h of shape (N, N):

    out_h = softmax(B_h + M) V_h              M: 0 at real keys, -inf at padded keys

``kind``:
- ``dense``: each token synthesises its own row of logits with a two-layer MLP,
  B_h[i] = W2 relu(W1_h x_i + b1_h) + b2, sliced to the first N of its max_len outputs.
  W1 (D -> D, read as H heads of Dh hidden units) is one matrix for all heads and W2 (Dh -> max_len)
  is shared by the heads, as LRA's ``synthesizer_attention.py`` lays it out (its ``dense_syn`` with
  features (heads, head_dim), then ``dense_syn2`` to max_length);
- ``random``: B_h = R_h[:N, :N], a learned (H, max_len, max_len) logit matrix that does not depend on
  the input. ``fixed`` freezes it at its initial value (a buffer: the paper's Fixed Random
  Synthesizer); ``factorized`` learns R_h = R1_h R2_h with R1 (H, max_len, r) and R2 (H, r, max_len),
  r = ``factor_rank`` (LRA's ``factorized_random``, its k = 32).

``dot_product`` adds the vanilla scaled scores Q_h K_h^T / sqrt(Dh) (with their own query and key
projections) to B_h: the paper's mixtures ("Random + Vanilla", "Dense + Vanilla").

There are no query or key projections otherwise: the layer has the value and output projections
(``v``, ``out``) and the synthesiser's own weights (``w1``, ``w2``; ``random`` or ``random1``,
``random2``), plus ``qk`` with ``dot_product``. Time and memory are O(N^2) per head (the N x N
weights are formed); parameters O(H max_len^2) for the unfactorised random kind.

Padding: the logits of padded keys are set to -inf before the softmax (in float32 or wider), so
they get no weight and appended padding leaves real outputs unchanged (a dense row and R are only
sliced to N); a query whose batch element has no real key gives zeros. There is no limit case equal
to softmax attention; the tests check the formula above written densely in float64.

Initialisation: W1, W2, the value, query/key and output projections as ``nn.Linear``; R, R1, R2
as LRA's ``xavier_uniform`` on those shapes (flax counts the head axis into both fans):
U(+-sqrt(6 / (fan_in + fan_out))) with fans H*max_len and H*max_len (R), H*max_len and H*r (R1, R2).
These logits start near zero (near-uniform weights), as in LRA.

Departures from LRA's code (``lra_benchmarks/models/synthesizer``):
- LRA's released model is ``synthesizer_mode='random'`` with ``ignore_dot_product=False`` (its
  encoder's defaults; no config overrides them): random logits *added to* dot-product attention,
  here ``{"kind": "random", "dot_product": true}``. The default here is the dense synthesizer alone;
- with ``ignore_dot_product=True`` LRA applies no padding mask at all; here padded keys are masked;
- LRA's dense mode reshapes the (B, N, H, max_len) logits to (B, H, N, max_len), which mixes tokens
  and heads (its TODO asks whether the reshape is needed); here they are transposed;
- biases are used (LRA's block passes ``bias=False``).

Precision: under autocast the value projection and W1 run in the autocast dtype; the logits (W2, R,
the dot products), the masking, the softmax and the weighted sum over N are computed in float32
(float64 inputs in float64), and the result is cast back before the output projection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.harness.core.registry import param
from attnbench.variants.base import VARIANTS, Attention, padding_mask_or_none


@dataclass(frozen=True)
class SynthesizerConfig:
    """Synthesizer: how the attention logits are synthesised."""

    kind: Literal["dense", "random"] = param(
        "dense", "'dense': logits from a per-token two-layer MLP (W2 relu(W1 x)), 'random': a learned "
                 "max_len x max_len logit matrix per head, independent of the input")
    fixed: bool = param(False, "random: keep the logit matrix at its initial value (not trained); ignored by dense")
    factorized: bool = param(False, "random: learn the logit matrix as R1 R2 with R1 (max_len, r), R2 (r, max_len) "
                                    "per head; ignored by dense")
    factor_rank: int = param(32, "random, factorized: the rank r of R1 R2 (LRA's k)", minimum=1)
    dot_product: bool = param(False, "add the vanilla scaled dot-product scores (own query and key projections) "
                                     "to the synthetic logits, as LRA's released model did with kind 'random'")


def _xavier_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int) -> torch.Tensor:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return torch.empty(shape).uniform_(-bound, bound)


@VARIANTS.register("synthesizer", SynthesizerConfig)
class SynthesizerAttention(Attention):
    """Synthesizer: attention weights from a per-token MLP (dense) or a learned matrix (random)."""

    complexity = "O(N^2)"
    exact = False
    linear_memory = False
    small_params = {}  # dense: a full N x N mechanism at any N (random would hold H x max_len^2 logits)
    lra_model = "Synthesizer"

    cfg: SynthesizerConfig
    # the random kind's logits (``_register_logits``: parameters, or buffers when ``fixed``)
    #: R (H, max_len, max_len), unfactorised
    random: torch.Tensor
    #: R1 (H, max_len, r) and R2 (H, r, max_len), factorised
    random1: torch.Tensor
    random2: torch.Tensor

    @classmethod
    def published_as(cls, params: dict[str, Any]) -> str | None:
        """LRA's Synthesizer row is random logits added to dot-product attention (its encoder's
        defaults: synthesizer_mode 'random', ignore_dot_product False); other forms have no row."""
        kind = params.get("kind", SynthesizerConfig.kind)
        dot = params.get("dot_product", SynthesizerConfig.dot_product)
        return cls.lra_model if kind == "random" and dot else None

    def __init__(self, dim: int, heads: int, cfg: SynthesizerConfig, max_len: int, dropout: float = 0.0):
        if cfg.kind not in ("dense", "random"):
            raise ValueError(f"synthesizer: unknown kind {cfg.kind!r}; allowed: 'dense', 'random'")
        if cfg.factor_rank < 1:
            raise ValueError(f"synthesizer: factor_rank must be >= 1, got {cfg.factor_rank}")
        super().__init__(dim, heads, cfg, max_len, dropout)
        h, n, dh = heads, self.max_len, self.head_dim
        if cfg.kind == "dense":
            self.w1 = nn.Linear(dim, dim)   # H heads of Dh hidden units
            self.w2 = nn.Linear(dh, n)      # hidden -> one logit per key position, shared by the heads
            return
        if cfg.factorized:
            r = cfg.factor_rank
            self._register_logits("random1", _xavier_uniform((h, n, r), h * n, h * r))
            self._register_logits("random2", _xavier_uniform((h, r, n), h * r, h * n))
        else:
            self._register_logits("random", _xavier_uniform((h, n, n), h * n, h * n))

    def _register_logits(self, name: str, value: torch.Tensor) -> None:
        """A random kind's weights: a parameter, or a buffer (saved, never trained) when ``fixed``."""
        if self.cfg.fixed:
            self.register_buffer(name, value)
        else:
            self.register_parameter(name, nn.Parameter(value))

    def build_projections(self) -> None:
        """Values and output only (queries and keys too with ``dot_product``)."""
        self.v = nn.Linear(self.dim, self.dim)
        if self.cfg.dot_product:
            self.qk = nn.Linear(self.dim, 2 * self.dim)
        self.out = nn.Linear(self.dim, self.dim)

    def extra_repr(self) -> str:
        c = self.cfg
        form = c.kind if c.kind == "dense" else (f"random{', fixed' if c.fixed else ''}"
                                                 f"{f', factorized r={c.factor_rank}' if c.factorized else ''}")
        return f"dim={self.dim}, heads={self.heads}, max_len={self.max_len}, {form}, dot_product={c.dot_product}"

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, N, Dh)

    def synthetic_logits(self, hidden: torch.Tensor | None, n: int, compute: torch.dtype) -> torch.Tensor:
        """B for n tokens: (B, H, N, N) for dense, from its ``hidden`` relu(W1 x) of shape (B, H, N, Dh)
        (computed before, under the caller's autocast); (1, H, N, N) for random (``hidden`` unused).
        In ``compute``, called with autocast off."""
        if self.cfg.kind == "dense":
            assert hidden is not None  # the dense kind's forward computes it
            hidden = hidden.to(compute)
            w2, b2 = self.w2.weight[:n].to(compute), self.w2.bias[:n].to(compute)
            return torch.matmul(hidden, w2.transpose(0, 1)) + b2
        if self.cfg.factorized:
            return torch.matmul(self.random1[:, :n].to(compute), self.random2[:, :, :n].to(compute)).unsqueeze(0)
        return self.random[:, :n, :n].to(compute).unsqueeze(0)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        if n > self.max_len:
            raise ValueError(f"synthesizer: {n} tokens, but this layer was built for at most {self.max_len} "
                             f"(max_len: its logits have {self.max_len} key positions)")
        mask = padding_mask_or_none(key_padding_mask)
        v = self._heads(self.v(x))
        # the dense kind's first layer runs under the caller's autocast, like the projections
        hidden = self._heads(F.relu(self.w1(x))) if self.cfg.kind == "dense" else None
        q: torch.Tensor | None = None
        k: torch.Tensor | None = None
        if self.cfg.dot_product:
            q, k = self.qk(x).chunk(2, dim=-1)
            q, k = self._heads(q), self._heads(k)
        in_dtype = v.dtype
        compute = torch.float32 if in_dtype in (torch.float16, torch.bfloat16) else in_dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = self.synthetic_logits(hidden, n, compute)
            if q is not None:
                assert k is not None  # made with q
                scores = torch.matmul(q.to(compute), k.to(compute).transpose(-2, -1)) * self.head_dim ** -0.5
                logits = logits + scores
            o = self.weighted_values(logits, v.to(compute), mask)
        return cast(torch.Tensor, self.out(o.to(in_dtype).transpose(1, 2).reshape(b, n, d)))

    def weighted_values(self, logits: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(logits + M) V: (B or 1, H, N, N) logits, (B, H, N, Dh) values -> (B, H, N, Dh).

        Padded keys get -inf; a batch element without a real key keeps its logits finite (nothing
        masked, so no NaN anywhere, forward or backward) and its output is zeroed."""
        has_key = None
        if mask is not None:
            has_key = mask.any(dim=-1)                       # (B,)
            masked = ~mask & has_key[:, None]                # padded keys of the elements that have a real one
            # where, not masked_fill: random logits are (1, H, N, N), broadcast over the batch here
            logits = torch.where(masked[:, None, None, :], float("-inf"), logits)
        weights = torch.softmax(logits, dim=-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, self.dropout)
        o = torch.matmul(weights, v)
        if has_key is not None:
            o = torch.where(has_key[:, None, None, None], o, torch.zeros_like(o))
        return o

    def flops(self, batch: int, seq_len: int) -> int:
        """Forward FLOPs (a multiply-add = 2): value and output projections, the synthesiser,
        the dot products with ``dot_product``, and the weighted sum of the values."""
        b, n, d, h, dh = batch, seq_len, self.dim, self.heads, self.head_dim
        total = 2 * 2 * b * n * d * d                    # values and output
        if self.cfg.kind == "dense":
            total += 2 * b * n * d * d                   # W1
            total += 2 * b * h * n * n * dh              # W2, sliced to N outputs
        elif self.cfg.factorized:
            total += 2 * h * n * n * self.cfg.factor_rank  # R1 R2, once for the batch
        if self.cfg.dot_product:
            total += 2 * b * n * d * 2 * d               # query and key projections
            total += 2 * b * h * n * n * dh              # Q K^T
        total += 2 * b * h * n * n * dh                  # weights x values
        return total

    def _quadratic_memory(self, batch: int, seq_len: int, training: bool, padded: bool, dtype: torch.dtype,
                          device: str) -> tuple[int, int]:
        """(peak, saved) bytes of the (B or 1, H, N, N) tensors of one forward, step by step as ``forward`` and
        ``weighted_values`` allocate them (see ``materialized_bytes``). Python names hold their tensors until
        the function returns: ``forward``'s logits and scores, ``weighted_values``' masked logits and weights."""
        size = 8 if dtype == torch.float64 else 4                          # computed in float32 under autocast
        per_head = self.heads * seq_len * seq_len
        full, single = batch * per_head * size, per_head * size            # (B, H, N, N) and (1, H, N, N)
        live = peak = 0

        def alloc(nbytes: int) -> None:
            nonlocal live, peak
            live += nbytes
            peak = max(peak, live)

        # synthetic_logits: dense: matmul then + b2 (the matmul's output dies after the add); random: a view of
        # the parameter (no bytes: parameters are float32, or float64 for float64 inputs); factorized: R1 R2
        if self.cfg.kind == "dense":
            alloc(full)
            alloc(full)
            live -= full
            logits = full
        else:
            logits = single if self.cfg.factorized else 0
            alloc(logits)
        batched = self.cfg.kind == "dense" or batch == 1
        if self.cfg.dot_product:  # Q K^T (dies after the scaling), scores, logits + scores (the old logits die)
            alloc(full)
            alloc(full)
            live -= full
            alloc(full)
            live -= logits
            batched = True
        if padded:  # torch.where(masked, -inf, logits): broadcast over the batch
            alloc(full)
            batched = True
        weights = full if batched else single
        alloc(weights)                                                     # softmax: saved by autograd
        saved = weights if training else 0
        if training and self.dropout > 0:
            mask = weights // size if device == "cuda" else weights        # native_dropout's bool mask; CPU noise
            alloc(mask + weights)                                          # and the dropped weights
            saved += mask + (weights if batched else 0)
        if not batched and batch > 1:  # matmul with (B, H, N, Dh) values expands the weights: a batched copy
            alloc(full)
            saved += full if training else 0
        return peak, saved

    def materialized_bytes(self, batch: int, seq_len: int, *, training: bool = False, padded: bool = True,
                           dtype: torch.dtype = torch.float32, device: str = "cuda") -> int:
        """Peak bytes of the (B or 1, H, N, N) tensors of one forward (``Attention.materialized_bytes``), in
        float32 whatever autocast says (float64 for float64 inputs). Dense kind, padded, in evaluation: the
        logits, their masked copy and the softmax weights (3 tensors of B x H x N^2; the dot-product scores
        and their sum with ``dot_product``: 4); a training forward adds the dropped weights and the dropout
        mask. Random kind's logits are a view of its parameter, but padding or the dot product makes them
        batched; unbatched weights are copied once per batch element by the matmul with the values."""
        return self._quadratic_memory(batch, seq_len, training, padded, dtype, device)[0]

    def saved_bytes(self, batch: int, seq_len: int, *, padded: bool = True, dtype: torch.dtype = torch.float32,
                    device: str = "cuda") -> int:
        """Bytes of the (B or 1, H, N, N) tensors autograd keeps for the backward (``Attention.saved_bytes``):
        the softmax weights, the dropout mask and the dropped weights (the matmul's), or the matmul's batched
        copy of unbatched weights."""
        return self._quadratic_memory(batch, seq_len, True, padded, dtype, device)[1]
