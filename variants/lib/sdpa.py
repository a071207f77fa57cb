"""The fused softmax-attention kernel that full attention calls: torch's
``scaled_dot_product_attention`` (which picks flash, memory-efficient, cuDNN or math), or
xformers' ``memory_efficient_attention`` inside ``use_xformers()``.

xformers has no CPU kernels, so it is imported only when a CUDA device is present; where
it cannot run, ``xformers_unavailable()`` says why and ``use_xformers()`` raises with that reason.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import torch
import torch.nn.functional as F

from attnbench.variants.lib import kernels

#: whether ``attention`` routes to xformers (``use_xformers``): a plain module flag, not a context variable,
#: because torch.compile traces a global read (and recompiles when it changes), not ``ContextVar.get``
_USE_XFORMERS = False


def xformers_unavailable() -> str | None:
    """None when xformers' own kernels can run here, else the reason they cannot.

    xformers without its compiled extension (built for another CUDA line or torch than this one: its
    ``_C.so`` then fails to load, and xformers only logs it) still imports and still runs, through
    operators that wrap torch's own CUDA kernels (``cutlassF-pt``, ``cutlassB-pt``: SDPA's memory-efficient
    kernel). A sweep row timing those would time torch's kernel under xformers' name, so that is
    unavailable too, with the reason the extension gave."""
    if not torch.cuda.is_available():
        return "xformers has no CPU kernels and no CUDA device is visible"
    try:
        xformers = importlib.import_module("xformers")  # only where a CUDA device is: it has no CPU kernels
        importlib.import_module("xformers.ops")
    except ImportError as exc:
        return f"xformers is not installed ({exc}); `pip install xformers` matching this torch"
    if not getattr(xformers, "_has_cpp_library", True):
        error = getattr(getattr(xformers, "_cpp_lib", None), "_cpp_library_load_exception", None)
        why = " ".join(str(error).split())[:300] if error else "no reason given"
        return (f"xformers {getattr(xformers, '__version__', '?')}'s compiled extension did not load ({why}); "
                "what is left wraps torch's own memory-efficient kernel (cutlassF-pt), which would time SDPA "
                "under xformers' name. Install the xformers build of this torch's CUDA line (docs/gpu.md)")
    return None


def xformers_operator(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, needs_grad: bool) -> str:
    """The name of the operator xformers' dispatcher picks for these (B, N, H, Dh) inputs (forward, and the
    backward's when ``needs_grad``), e.g. ``fa3F@...``, ``cutlassF-pt``; read from its dispatcher, whose
    module is private: "unknown (...)" when it cannot be read."""
    try:
        from xformers.ops.fmha.common import Inputs
        from xformers.ops.fmha.dispatch import _dispatch_bw, _dispatch_fw

        inputs = Inputs(query=q, key=k, value=v, p=dropout_p)
        name: str = _dispatch_fw(inputs, needs_grad).NAME
        if needs_grad:
            name += f" + {_dispatch_bw(inputs, None).NAME}"
        return name
    except Exception as exc:  # a private API: its absence must not stop the attention itself
        return f"unknown ({type(exc).__name__}: {exc})"


@contextmanager
def use_xformers() -> Iterator[None]:
    """Route ``attention`` (full attention's kernel) to xformers within the block."""
    reason = xformers_unavailable()
    if reason:
        raise RuntimeError(reason)
    global _USE_XFORMERS
    before, _USE_XFORMERS = _USE_XFORMERS, True
    try:
        yield
    finally:
        _USE_XFORMERS = before


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
              dropout_p: float = 0.0) -> torch.Tensor:
    """Softmax attention of (B, H, N, Dh) queries, keys and values; ``attn_mask`` (bool, broadcastable to
    (B, H, N, N)) True = attend. A query row that may attend no key is zero (``masked_sdpa``)."""
    if _USE_XFORMERS:
        return _xformers_attention(q, k, v, attn_mask, dropout_p)
    kernels.note("sdpa", "one scaled_dot_product_attention call over the whole sequence; torch picks its backend "
                 "(recorded as sdpa_kernels)")
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


def _xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                        dropout_p: float) -> torch.Tensor:
    import xformers.ops as xops

    if attn_mask is not None:  # full attention passes None when every token is real
        raise NotImplementedError("the xformers backend is used without padding here (every token real); "
                                  "padded batches go through torch SDPA")
    # xformers takes (B, N, H, Dh); its default scale is 1/sqrt(Dh), as SDPA's
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if kernels.active():
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        kernels.note("xformers", f"xformers.ops.memory_efficient_attention, operator "
                     f"{xformers_operator(q, k, v, dropout_p, needs_grad)}")
    return cast(torch.Tensor, xops.memory_efficient_attention(q, k, v, p=dropout_p)).transpose(1, 2)
