"""Which fused softmax-attention kernels a piece of work runs: SDPA's own choice (flash, efficient,
cudnn, math) for each call's inputs under the active ``sdpa_kernel`` restriction, and xformers'
kernel when full attention is routed to it. Used by the efficiency sweep (per case) and by
training (recorded, so that a run's throughput says which kernel produced it)."""
from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend
from torch.overrides import TorchFunctionMode


class SdpaKernels(TorchFunctionMode):
    """``with SdpaKernels() as k: work()`` then ``k.seen``: the kernel names the SDPA calls picked,
    and ``k.names()``: them sorted and joined ("none": the work called no SDPA)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_function__(self, func: Callable[..., Any], types: Collection[type], args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            choice = SDPBackend(torch._fused_sdp_choice(*args, **kwargs)).name
            self.seen.add(choice.lower().replace("_attention", ""))
        return func(*args, **kwargs)

    def names(self) -> str:
        return ", ".join(sorted(self.seen)) or "none"
