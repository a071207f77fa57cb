"""The masked-token (denoising) objective of self-pretraining (``spt:``): which tokens of a batch are chosen
for prediction and what the model sees in their place (BERT's corruption, Devlin et al. 2019).

- ``choose``: each real token (``candidates``: not padding, nor a pixel the model masks out) is chosen with
  probability ``rate`` (token masking), or spans of ``span_length`` tokens are (span masking: a span starts at
  each candidate with probability ``1 - (1 - rate) ** (1 / span_length)`` and covers it and the
  ``span_length - 1`` tokens after it, candidates only; spans may overlap, so a candidate with ``span_length - 1``
  candidates before it is chosen with probability ``rate`` exactly, however long the spans: about ``rate`` of
  the tokens in all, a little less near a sequence's start or a masked-out token, every one at rate 1).
- ``corrupt``: of the chosen tokens, ``mask_token`` are replaced by the [MASK] id, ``random_token`` by a token
  drawn uniformly from the vocabulary's ids other than padding (never [MASK], which is past them), the rest
  keep their own id. The model is asked for the original id at every chosen position.

Everything is drawn with torch's generator of the tokens' device (the run's seeded one, which a resume
checkpoint holds), elementwise and without reading a device tensor, so a step stays asynchronous on a GPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def choose(candidates: torch.Tensor, rate: float, span_length: int = 1,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, N) bool: the positions chosen for prediction among ``candidates`` (B, N) bool."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"a masking rate is in (0, 1], got {rate}")
    if span_length < 1:
        raise ValueError(f"a span has at least 1 token, got {span_length}")
    draw = torch.rand(candidates.shape, device=candidates.device, generator=generator)
    if span_length == 1:
        return (draw < rate) & candidates
    # position i is covered when a span starts in [i - span_length + 1, i] (none of span_length independent
    # starts misses it: 1 - (1 - start) ** span_length = rate)
    start = 1.0 - (1.0 - rate) ** (1.0 / span_length)
    starts = (draw < start) & candidates
    before = starts.new_zeros(*starts.shape[:-1], span_length - 1)
    covered = torch.cat([before, starts], dim=-1).unfold(-1, span_length, 1).any(-1)
    return covered & candidates


def corrupt(tokens: torch.Tensor, chosen: torch.Tensor, mask_id: int, vocab_size: int, mask_token: float = 0.8,
            random_token: float = 0.1, pad_id: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``tokens`` with each ``chosen`` position replaced: by ``mask_id`` with probability ``mask_token``, by a
    random id of ``[0, vocab_size)`` other than ``pad_id`` with probability ``random_token``, else left as it is."""
    if mask_token < 0 or random_token < 0 or mask_token + random_token > 1:
        raise ValueError(f"mask_token ({mask_token}) and random_token ({random_token}) are fractions of the chosen "
                         "tokens: each >= 0, together <= 1")
    if vocab_size < 2:
        raise ValueError(f"a vocabulary of {vocab_size} id(s) has no real token to draw")
    which = torch.rand(tokens.shape, device=tokens.device, generator=generator)
    random_ids = torch.randint(0, vocab_size - 1, tokens.shape, device=tokens.device, generator=generator,
                               dtype=tokens.dtype)
    random_ids = random_ids + (random_ids >= pad_id).to(tokens.dtype)  # every id but padding, equally likely
    out = torch.where(chosen & (which < mask_token), torch.full_like(tokens, mask_id), tokens)
    return torch.where(chosen & (which >= mask_token) & (which < mask_token + random_token), random_ids, out)


def chosen_loss_sum(logits: torch.Tensor, targets: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """The summed cross-entropy of ``logits`` (B, N, V) against ``targets`` (B, N) over the ``chosen``
    positions, in float32."""
    per_token = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                reduction="none")
    return (per_token * chosen.reshape(-1).to(per_token.dtype)).sum()


def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (B, N, V) against ``targets`` (B, N) over the ``chosen`` positions
    (0 when none is: a batch without a chosen token contributes no gradient, and nothing is read back)."""
    return chosen_loss_sum(logits, targets, chosen) / chosen.sum().clamp_min(1)
