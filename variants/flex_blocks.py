"""The FlexAttention kernel of the block-sparse layouts (``window`` and ``sparse``), and the choice of kernel.

Both layouts run on one of two kernels, chosen by their ``kernel`` parameter:
- gather: ``blocks.block_sparse_attention``, the chosen key blocks gathered into one fused SDPA
  call per query block. Runs on every device and dtype, with dropout, and trains on CPU.
- flex: ``torch.nn.attention.flex_attention`` with a block mask built from the same layout. The
  layout becomes a ``mask_mod`` ("query i may attend key j"), so FlexAttention skips the key
  blocks the layout leaves out without gathering copies of k and v. On CUDA ``create_block_mask``
  and ``flex_attention`` are each wrapped in ``torch.compile`` once per process (the pattern
  the FlexAttention docs give): the tensors the mask_mod captures are graph inputs guarded on
  their shapes, so a new batch's padding or layout reuses the compiled code, while a new
  length may recompile. On CPU both run eager (unfused: the scores are materialised), forward
  only: torch 2.13 has no FlexAttention backward on CPU.
- auto: flex on CUDA when flex_attention is importable and the compiled kernel supports the
  input (float16, bfloat16 or float32; head_dim >= 16, the smallest Triton's ``tl.dot`` takes),
  gather otherwise.
FlexAttention has no dropout on the attention weights: with attention dropout in training
either kernel setting runs gather.
"""
from __future__ import annotations

import functools
import importlib
import warnings
from typing import Literal

import torch

from attnbench.variants.blocks import global_token_mask

Kernel = Literal["auto", "gather", "flex"]

KERNEL_HELP = (
    "attention kernel. gather: the blockwise gather into SDPA (runs everywhere, trains on CPU); "
    "flex: torch.nn.attention.flex_attention with a block mask built from the same layout (compiled with "
    "torch.compile on CUDA; on CPU forward only, eager, because torch 2.13 has no FlexAttention backward on CPU); "
    "auto: flex on CUDA when flex_attention is importable (float16/bfloat16/float32, head_dim >= 16), gather "
    "otherwise. Attention dropout in training always runs gather (FlexAttention has no dropout)"
)

#: dtypes the compiled CUDA kernel is known to take (auto does not pick flex for others, e.g. float64)
FLEX_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: the smallest head dimension compiled FlexAttention takes (Triton's tl.dot needs 16)
FLEX_MIN_HEAD_DIM = 16


@functools.cache
def flex_importable() -> bool:
    """Whether this torch has ``torch.nn.attention.flex_attention`` (imported lazily: it pulls in dynamo)."""
    try:
        importlib.import_module("torch.nn.attention.flex_attention")
    except ImportError:
        return False
    return True


def choose_kernel(requested: str, *, device: torch.device, dtype: torch.dtype, head_dim: int, training: bool,
                  dropout: float, needs_grad: bool) -> str:
    """The kernel that runs, ``"gather"`` or ``"flex"``, for a layer's ``kernel`` parameter and its input.

    An explicit ``flex`` that cannot run raises here, with the reason, rather than deep inside
    torch: on CPU in training or with inputs that need gradients (no FlexAttention backward on
    CPU), or without flex_attention at all. Attention dropout in training runs gather whatever
    was asked: FlexAttention cannot drop attention weights.
    """
    device = torch.device(device)
    if requested not in ("auto", "gather", "flex"):
        raise ValueError(f"kernel must be auto, gather or flex, got {requested!r}")
    if requested == "flex":
        if not flex_importable():
            raise RuntimeError(f"kernel: flex needs torch.nn.attention.flex_attention, which torch "
                               f"{torch.__version__} does not have; use kernel: gather (or auto)")
        if device.type == "cpu" and (training or needs_grad):
            raise RuntimeError(f"FlexAttention has no backward pass on CPU in torch {torch.__version__}; "
                               "use kernel: gather (or auto)")
    if training and dropout > 0:
        return "gather"
    if requested == "auto":
        fits = device.type == "cuda" and dtype in FLEX_CUDA_DTYPES and head_dim >= FLEX_MIN_HEAD_DIM
        return "flex" if fits and flex_importable() else "gather"
    return requested


class BlockKernelChoice:
    """Mixin of the block-sparse layers: which kernel their ``kernel`` parameter resolves to.

    Expects the ``Attention`` attributes ``cfg.kernel``, ``training``, ``dropout`` and ``head_dim``.
    """

    def kernel_used(self, device, dtype: torch.dtype = torch.float32) -> str:
        """``"gather"`` or ``"flex"``: what a forward on ``device`` runs in the current mode (training:
        with gradients). For reports; raises as the forward would for a flex that cannot run."""
        return choose_kernel(self.cfg.kernel, device=torch.device(device), dtype=dtype, head_dim=self.head_dim,
                             training=self.training, dropout=self.dropout, needs_grad=self.training)

    def kernel_for(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
        """The kernel of one forward with these inputs."""
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        return choose_kernel(self.cfg.kernel, device=q.device, dtype=q.dtype, head_dim=q.shape[-1],
                             training=self.training, dropout=self.dropout, needs_grad=needs_grad)


def layout_mask_mod(key_mask: torch.Tensor, is_global: torch.Tensor, block: int,
                    block_pairs: torch.Tensor | None = None, band: int | None = None):
    """The layout as a FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool``: query i may attend key j.

    The same ingredients as the gather path, token by token:
    - key j must be real (``key_mask`` (B, N), False on padding, including the padding to a
      multiple of ``block``);
    - a global token (``is_global`` (B, N)) attends every real key and every query attends it;
    - otherwise j must be local to i: in a key block that i's query block attends
      (``block_pairs`` (B, N/block, N/block), the block table with its invalid entries dropped)
      and, for a band, within ``band`` tokens of i. Either may be absent.
    """
    def mask_mod(b, h, q_idx, kv_idx):
        local = True
        if block_pairs is not None:
            local = block_pairs[b, q_idx // block, kv_idx // block]
        if band is not None:
            local = local & ((q_idx - kv_idx).abs() <= band)
        return key_mask[b, kv_idx] & (is_global[b, q_idx] | is_global[b, kv_idx] | local)
    return mask_mod


@functools.cache
def _flex_functions(compiled: bool):
    """(create_block_mask, flex_attention), compiled once per process for CUDA, eager for CPU."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # deferred import, heavy

    if compiled:
        return torch.compile(create_block_mask), torch.compile(flex_attention)
    return create_block_mask, flex_attention


def flex_block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block: int,
                                key_mask: torch.Tensor, block_pairs: torch.Tensor | None = None,
                                band: int | None = None, global_idx: torch.Tensor | None = None,
                                global_valid: torch.Tensor | None = None) -> torch.Tensor:
    """``blocks.block_sparse_attention`` computed by FlexAttention: same arguments in mask form, same result.

    q, k, v: (B, H, N, D), N a multiple of ``block``; key_mask (B, N); block_pairs (B, N/b, N/b)
    and/or band (see ``layout_mask_mod``); global_idx / global_valid (B, G). No dropout.
    Returns (B, H, N, D); query rows with no allowed key are zero. FlexAttention gives such rows
    zero or NaN depending on the kernel, and a log-sum-exp of -inf: that marks them, and a
    select (NaN * 0 would stay NaN) zeroes them.
    """
    from torch.nn.attention.flex_attention import AuxRequest  # deferred import, heavy

    bsz, _, n, _ = q.shape
    is_global = global_token_mask(global_idx, global_valid, bsz, n, q.device)
    if block_pairs is not None:
        block_pairs = block_pairs.expand(bsz, -1, -1)
    mask_mod = layout_mask_mod(key_mask, is_global, block, block_pairs, band)
    create_block_mask, flex_attention = _flex_functions(q.device.type == "cuda")
    block_mask = create_block_mask(mask_mod, bsz, None, n, n, device=q.device)
    with warnings.catch_warnings():
        # eager on CPU is the design here (forward only, for checks), not an oversight to warn about
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out, aux = flex_attention(q, k, v, block_mask=block_mask, return_aux=AuxRequest(lse=True))
    return torch.where(torch.isfinite(aux.lse)[..., None], out, 0.0)
