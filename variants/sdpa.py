"""The fused softmax-attention kernel that full attention calls: torch's
``scaled_dot_product_attention`` (which picks flash, memory-efficient, cuDNN or math), or
xformers' ``memory_efficient_attention`` inside ``use_xformers()``.

xformers has no CPU kernels, so it is imported only when a CUDA device is present; where
it cannot run, ``xformers_unavailable()`` says why and ``use_xformers()`` raises with that reason.
"""
from __future__ import annotations

import contextvars
import importlib
from contextlib import contextmanager

import torch
import torch.nn.functional as F

_XFORMERS = contextvars.ContextVar("attnbench_use_xformers", default=False)


def xformers_unavailable() -> str | None:
    """None when xformers' kernels can run here, else the reason they cannot."""
    if not torch.cuda.is_available():
        return "xformers has no CPU kernels and no CUDA device is visible"
    try:
        importlib.import_module("xformers.ops")  # only where a CUDA device is: it has no CPU kernels
    except ImportError as exc:
        return f"xformers is not installed ({exc}); `pip install xformers` matching this torch"
    return None


@contextmanager
def use_xformers():
    """Route ``attention`` (full attention's kernel) to xformers within the block."""
    reason = xformers_unavailable()
    if reason:
        raise RuntimeError(reason)
    token = _XFORMERS.set(True)
    try:
        yield
    finally:
        _XFORMERS.reset(token)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
              dropout_p: float = 0.0) -> torch.Tensor:
    """Softmax attention of (B, H, N, Dh) queries, keys and values; ``attn_mask`` (bool, broadcastable to
    (B, H, N, N)) True = attend. A query row that may attend no key is zero (``masked_sdpa``)."""
    if _XFORMERS.get():
        return _xformers_attention(q, k, v, attn_mask, dropout_p)
    if attn_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return masked_sdpa(q, k, v, attn_mask, dropout_p)


def masked_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                dropout_p: float = 0.0) -> torch.Tensor:
    """torch's SDPA under a bool mask ``allowed`` (True = attend, broadcastable to the scores) whose rows may
    allow no key at all (padding queries, an all-padding element or block, a black pixel): such rows are zero.

    No kernel ever sees a row with no allowed key. Inside the kernel they attend every key, and a select
    replaces their output by zeros afterwards, so no gradient flows through them. Fed as they are, a
    kernel's forward gives zeros or NaN there (NaN * 0 stays NaN), and its backward computes
    exp(S - lse) with S = lse = -inf: on CUDA that is the kernel's own business, and a NaN there would
    reach every gradient of the layer. No host sync: the rows are found on the device, unconditionally.
    """
    row_ok = allowed.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | ~row_ok, dropout_p=dropout_p)
    return torch.where(row_ok, out, 0.0)


def _xformers_attention(q, k, v, attn_mask, dropout_p):
    import xformers.ops as xops

    if attn_mask is not None:  # full attention passes None when every token is real
        raise NotImplementedError("the xformers backend is used without padding here (every token real); "
                                  "padded batches go through torch SDPA")
    # xformers takes (B, N, H, Dh); its default scale is 1/sqrt(Dh), as SDPA's
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), p=dropout_p)
    return out.transpose(1, 2)
