"""DistilBERT-style distillation: a shallower student trained from a trained teacher.

The variant's hyper-parameters say how the student is built and trained; the training
itself is ``harness/distill.py`` (``needs_teacher`` makes the pipeline add the edge from
the teacher's run of the same task and seed, and the CLI train the run from the teacher's
checkpoint). As an attention layer, what ``build_attention("distilled", ...)`` returns,
it *is* the student's attention: it delegates to the configured variant's layer, so the
registry-wide tests exercise it like any other variant.

Parameters of the student's attention: ``attention_params`` override the parameters that
the config's ``variants:`` section gives that variant (when it is configured there), which
override its defaults; the resolved run config spells out the result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnbench.harness.core.registry import param
from attnbench.variants.base import VARIANTS, Attention


@dataclass(frozen=True)
class DistilledConfig:
    """Knowledge distillation from the trained teacher of the same task and seed (DistilBERT-style)."""

    teacher: str = param("full", "variant whose trained run of the same task and seed is the teacher; "
                                 "it must be in `variants:` too")
    student_layers: int = param(0, "student encoder blocks (0 = half the teacher's, rounded up); "
                                   "initialised from teacher blocks spread evenly, first and last included",
                                minimum=0)
    temperature: float = param(2.0, "softmax temperature T of the distillation term", exclusiveMinimum=0.0)
    alpha: float = param(0.5, "weight of the soft term: alpha * T^2 * KL(teacher/T || student/T) "
                              "+ (1 - alpha) * cross-entropy", minimum=0.0, maximum=1.0)
    attention: str = param("full", "the student's attention variant (any registered variant trained from labels)")
    attention_params: dict[str, Any] = param({}, "parameters of the student's attention; override those that "
                                                 "`variants:` gives that variant, which override its defaults")


@VARIANTS.register("distilled", DistilledConfig)
class DistilledAttention(Attention):
    """DistilBERT-style student distilled from a trained teacher; its attention is the configured variant's."""

    needs_teacher = True
    # The flags below describe the default student (full attention). An instance copies the
    # flags of the variant it delegates to; `exact` stays False because the class promises
    # nothing about a configurable attention.
    complexity = "that of the student's attention (default full: O(N^2))"
    exact = False
    small_params: dict = {}

    def __init__(self, dim: int, heads: int, cfg: DistilledConfig, dropout: float = 0.0):
        nn.Module.__init__(self)  # no projections of its own: the delegate has them
        from attnbench.variants import build_attention

        student = VARIANTS.get(cfg.attention)
        if student.cls.needs_teacher:
            raise ValueError(f"distilled: the student's attention {cfg.attention!r} is itself trained from a "
                             "teacher; choose a variant trained from labels")
        self.inner = build_attention(cfg.attention, dim, heads, cfg.attention_params, dropout)
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.cfg, self.dropout = cfg, dropout
        for flag in ("supports_padding_mask", "complexity", "linear_memory"):
            setattr(self, flag, getattr(self.inner, flag))
        # Transparent in checkpoints: the state dict holds the delegate's tensors under this
        # layer's own prefix (`attn.qkv.weight`, not `attn.inner.qkv.weight`), so a student's
        # keys match its teacher's and a distilled checkpoint loads into either the model its
        # run config describes or a plain model of the student's attention.
        self.register_state_dict_post_hook(_drop_inner_prefix)
        self.register_load_state_dict_pre_hook(_add_inner_prefix)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner(x, key_padding_mask)

    def attend(self, q, k, v, key_padding_mask):
        return self.inner.attend(q, k, v, key_padding_mask)

    def flops(self, batch: int, seq_len: int) -> int:
        return self.inner.flops(batch, seq_len)


def _drop_inner_prefix(module, state_dict, prefix, local_metadata) -> None:
    inner = prefix + "inner."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _add_inner_prefix(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                      error_msgs) -> None:
    inner = prefix + "inner."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)
