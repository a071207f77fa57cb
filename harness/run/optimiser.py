"""A run's optimiser: AdamW in the fastest implementation torch has for the device, and which one it
is (the record's ``training.optimizer``, so that a number says how it was computed)."""
from __future__ import annotations

from collections.abc import Iterable

import torch


def adamw(params: Iterable[torch.nn.Parameter], *, lr: float, betas: tuple[float, float], eps: float,
          weight_decay: float, device: torch.device) -> tuple[torch.optim.AdamW, str]:
    """AdamW, fused (one kernel for every parameter, no host reads of the step count) where torch
    has a fused kernel for the device, else the multi-tensor implementation; and which it is."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                 fused=True), "AdamW (fused)"
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                 foreach=True), "AdamW (foreach)"
