"""Attention variants: one file per mechanism, each registered in ``VARIANTS``.

Every module in this package is imported on first use of the registry, so adding a
variant means adding one file.
"""
from typing import Any, cast

from attnbench.variants.base import VARIANTS, Attention

__all__ = ["VARIANTS", "Attention", "build_attention"]


def build_attention(name: str, dim: int, heads: int, params: dict[str, Any] | None = None, *, max_len: int,
                    dropout: float = 0.0) -> Attention:
    """An attention layer of the registered variant ``name`` with its hyper-parameters, built for
    sequences of at most ``max_len`` tokens (see ``Attention``)."""
    entry = VARIANTS.get(name)
    # the registry holds subclasses of its base, Attention (``Entry.cls`` is typed as a plain ``type``)
    layer = entry.cls(dim=dim, heads=heads, cfg=VARIANTS.make_config(name, params), max_len=max_len, dropout=dropout)
    return cast(Attention, layer)
