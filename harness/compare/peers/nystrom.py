"""Peer of ``nystrom``: lucidrains' ``nystrom-attention`` ``NystromAttention``."""
from __future__ import annotations

import torch
from torch import nn

from attnbench.harness.compare.adapters import all_real, mask_of
from attnbench.harness.compare.registry import Params, Peer, Shape, register_peer


class LucidrainsNystrom(nn.Module):
    """``nystrom_attention.NystromAttention``: its own q/k/v (no bias) and output projections.

    It pads N at the front to a multiple of the landmarks; its padding is masked only when a mask is
    given, so the adapter passes one whenever N is not a multiple of the landmarks (or there is padding).
    """

    def __init__(self, dim: int, heads: int, landmarks: int, iterations: int, conv_kernel: int):
        from nystrom_attention import NystromAttention

        super().__init__()
        self.landmarks = landmarks
        self.attn = NystromAttention(dim=dim, dim_head=dim // heads, heads=heads, num_landmarks=landmarks,
                                     pinv_iterations=iterations, residual=conv_kernel > 0,
                                     residual_conv_kernel=conv_kernel or 33, dropout=0.0)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if all_real(key_padding_mask) and x.shape[1] % self.landmarks == 0:
            out: torch.Tensor = self.attn(x)
        else:
            out = self.attn(x, mask=mask_of(x, key_padding_mask))
        return out


def _match_nystrom(s: Shape, d: Params) -> tuple[Params, Params]:
    m, it, ck = int(d["landmarks"]), int(d["pinv_iterations"]), int(d["conv_kernel"])
    return ({"landmarks": m, "pinv_iterations": it, "conv_kernel": ck},
            {"num_landmarks": m, "pinv_iterations": it, "residual": ck > 0, "residual_conv_kernel": ck or None})


register_peer(Peer(
    name="nystrom-attention", variant="nystrom", title="lucidrains nystrom-attention NystromAttention",
    requires=("nystrom_attention",), distributions=("nystrom-attention",),
    match=_match_nystrom,
    build=lambda s, p: LucidrainsNystrom(s.dim, s.heads, p["num_landmarks"], p["pinv_iterations"],
                                         p["residual_conv_kernel"] or 0),
    note="same landmarks, pinv iterations and conv skip; its pinv init Z0 = A^T / (max col sum * max row sum) "
         "is taken over the whole batch and all heads (ours per element and head); with padding or N not a "
         "multiple of m it pads at the front and its segments are positional (ours: over the real tokens); "
         "no bias on its q/k/v projections"))
