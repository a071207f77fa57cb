"""The FlexAttention kernel of the block-sparse layouts (``window``, ``sparse``, ``local``), and the choice of kernel.

The layouts run on one of two kernels, chosen by their ``kernel`` parameter:
- gather: ``blocks.block_sparse_attention``, the chosen key blocks gathered into one fused SDPA
  call per query block. Runs on every device and dtype, with dropout, and trains on CPU.
- flex: ``torch.nn.attention.flex_attention`` with a block mask built from the same layout. The
  layout becomes a ``mask_mod`` ("query i may attend key j"), applied inside the (query block, key
  block) pairs of 128 tokens that the layout reaches; the BlockMask listing those pairs is built from
  the layout's own blocks (``layout_block_mask``: O(B (N/128)^2), not create_block_mask's B x N x N
  mask_mod evaluations), so it is built afresh in every layer. Pairs the layout covers whole are
  listed as full blocks (no mask_mod there). On CUDA ``flex_attention`` is wrapped in ``torch.compile``
  once per process (the pattern the FlexAttention docs give): the tensors the mask_mod captures are
  graph inputs guarded on their shapes, so a new batch's padding or layout reuses the compiled code,
  while a new length may recompile. On CPU it runs eager (unfused: the scores are materialised), or
  compiled with ``ATTNBENCH_FLEX_COMPILE=1`` (for tests of the compiled branch); forward only
  either way: torch 2.13 has no FlexAttention backward on CPU. Inside a model under
  ``torch.compile`` (``train.compile``) the whole path traces into the model's graph, no break.
- auto: flex on CUDA when flex_attention is importable, the compiled kernel supports the input
  (float16, bfloat16 or float32; head_dim >= 16, the smallest Triton's ``tl.dot`` takes) and the
  machine has what Triton needs to build its launcher at first use (a C compiler and Python.h:
  ``harness.core.toolchain``); gather otherwise, and ``kernel_choice`` says why. An explicit flex
  where that toolchain is missing raises, naming what is missing.
FlexAttention has no dropout on the attention weights: with attention dropout in training
either kernel setting runs gather.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings
from collections.abc import Callable
from dataclasses import Field
from typing import Any, ClassVar, Literal, Protocol, TypeVar, cast

import torch

from attnbench.harness.core import toolchain
from attnbench.variants.lib import kernels
from attnbench.variants.lib.blocks import global_token_mask

Kernel = Literal["auto", "gather", "flex"]

KERNEL_HELP = (
    "attention kernel. gather: the blockwise gather into SDPA (runs everywhere, trains on CPU); "
    "flex: torch.nn.attention.flex_attention with a block mask built from the same layout (compiled with "
    "torch.compile on CUDA; on CPU forward only, eager, because torch 2.13 has no FlexAttention backward on CPU); "
    "auto: flex on CUDA when flex_attention is importable (float16/bfloat16/float32, head_dim >= 16) and a C "
    "compiler and Python.h are there for Triton, gather otherwise. Attention dropout in training always runs "
    "gather (FlexAttention has no dropout)"
)

#: dtypes the compiled CUDA kernel is known to take (auto does not pick flex for others, e.g. float64)
FLEX_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: the smallest head dimension compiled FlexAttention takes (Triton's tl.dot needs 16)
FLEX_MIN_HEAD_DIM = 16


#: decide ``kernel: auto`` (and which toolchain an explicit flex needs) as on a CUDA device, whatever the
#: device: for tests of that branch on a CPU. FlexAttention still has no backward pass on a CPU, so such
#: tests run forward only (eval mode, no gradients)
CHOOSE_AS_ON_CUDA = False
#: set to 1 in the environment to run FlexAttention compiled (``torch.compile(flex_attention)``, as on CUDA)
#: on a CPU too, rather than eager: for tests of the compiled branch (inductor's CPU code needs a C++
#: compiler and Python.h; forward only). Read at each call
COMPILE_ENV = "ATTNBENCH_FLEX_COMPILE"


_Fn = TypeVar("_Fn", bound=Callable[..., Any])

#: a FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (tensors in, a bool tensor out)
MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _constant_when_compiled(fn: _Fn) -> _Fn:
    """Mark ``fn`` as ``torch.compiler.assume_constant_result`` does: torch.compile calls it while tracing
    and keeps its result as a constant, rather than tracing into it (an import or a file look-up would
    break the graph there). The attribute is what that decorator sets; set here directly, because the
    decorator imports dynamo (a second) wherever the variants are imported. Only for facts of the
    process that do not change between calls (what torch has, what the machine has)."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]  # a function takes attributes; Callable says not
    return fn


_FLEX_IMPORTABLE: list[bool] = []  # the answer, once known (not functools.cache: dynamo warns about its wrapper)


@_constant_when_compiled
def flex_importable() -> bool:
    """Whether this torch has ``torch.nn.attention.flex_attention`` (imported lazily: it pulls in dynamo)."""
    if not _FLEX_IMPORTABLE:
        try:
            importlib.import_module("torch.nn.attention.flex_attention")
            _FLEX_IMPORTABLE.append(True)
        except ImportError:
            _FLEX_IMPORTABLE.append(False)
    return _FLEX_IMPORTABLE[0]


@_constant_when_compiled
def toolchain_missing(device_type: str) -> str | None:
    """What compiled FlexAttention on ``device_type`` needs and this machine lacks (``harness.core.toolchain``:
    on CUDA a C compiler and Python.h for Triton's launcher, on the CPU a C++ compiler and Python.h for
    inductor); None when nothing is missing."""
    return toolchain.missing(device_type)


def flex_compiled(device: str | torch.device) -> bool:
    """Whether FlexAttention runs compiled on ``device`` (a device or its type): always on CUDA; on a CPU
    only with ``ATTNBENCH_FLEX_COMPILE=1`` (eager otherwise: forward only, for checks)."""
    return torch.device(device).type == "cuda" or os.environ.get(COMPILE_ENV, "") == "1"


def kernel_choice(requested: str, *, device: torch.device, dtype: torch.dtype, head_dim: int, training: bool,
                  dropout: float, needs_grad: bool) -> tuple[str, str]:
    """The kernel that runs, ``"gather"`` or ``"flex"``, for a layer's ``kernel`` parameter and its input,
    and why (a short phrase, for records and logs).

    An explicit ``flex`` that cannot run raises here, with the reason, rather than deep inside
    torch: on CPU in training or with inputs that need gradients (no FlexAttention backward on
    CPU), without flex_attention at all, or, where it runs compiled, without the compiler and headers
    compiled code needs (``toolchain_missing``). Attention dropout in training runs gather whatever
    was asked: FlexAttention cannot drop attention weights. ``auto`` takes flex only where it would run
    compiled on CUDA, and falls back to gather (saying why) where it could not.
    """
    device = torch.device(device)
    if requested not in ("auto", "gather", "flex"):
        raise ValueError(f"kernel must be auto, gather or flex, got {requested!r}")
    as_cuda = device.type == "cuda" or CHOOSE_AS_ON_CUDA
    compiled_here = flex_compiled(device.type)
    # the toolchain compiled FlexAttention needs: the device's own where it runs compiled, else Triton's
    # (CHOOSE_AS_ON_CUDA on a CPU, flex eager: the choice is checked as it would be made on CUDA)
    target = device.type if compiled_here else "cuda"
    if requested == "flex":
        if not flex_importable():
            raise RuntimeError(f"kernel: flex needs torch.nn.attention.flex_attention, which torch "
                               f"{torch.__version__} does not have; use kernel: gather (or auto)")
        if device.type == "cpu" and (training or needs_grad):
            raise RuntimeError(f"FlexAttention has no backward pass on CPU in torch {torch.__version__}; "
                               "use kernel: gather (or auto)")
        if as_cuda or compiled_here:
            missing = toolchain_missing(target)
            if missing:
                raise RuntimeError(f"kernel: flex runs FlexAttention compiled on {target}, which needs what this "
                                   f"machine lacks: {missing}. Use kernel: gather (or auto, which falls back to it)")
    if training and dropout > 0:
        return "gather", "attention dropout in training (FlexAttention has none)"
    if requested == "gather":
        return "gather", "kernel: gather"
    if requested == "flex":
        return "flex", "kernel: flex"
    if not as_cuda:
        return "gather", f"auto on {device.type} (flex only on CUDA, where it runs compiled)"
    if dtype not in FLEX_CUDA_DTYPES:
        return "gather", f"auto: compiled FlexAttention does not take {dtype}"
    if head_dim < FLEX_MIN_HEAD_DIM:
        return "gather", f"auto: head_dim {head_dim} < {FLEX_MIN_HEAD_DIM}, the smallest compiled FlexAttention takes"
    if not flex_importable():
        return "gather", f"auto: torch {torch.__version__} has no flex_attention"
    missing = toolchain_missing(target)
    if missing:
        return "gather", f"auto: compiled FlexAttention cannot run here: {missing}"
    return "flex", "auto on cuda"


def choose_kernel(requested: str, *, device: torch.device, dtype: torch.dtype, head_dim: int, training: bool,
                  dropout: float, needs_grad: bool) -> str:
    """The kernel that runs, ``"gather"`` or ``"flex"`` (``kernel_choice`` without the reason)."""
    return kernel_choice(requested, device=device, dtype=dtype, head_dim=head_dim, training=training,
                         dropout=dropout, needs_grad=needs_grad)[0]


class KernelConfig(Protocol):
    """A block-sparse layer's config dataclass: it has a ``kernel`` parameter (``Kernel``)."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @property
    def kernel(self) -> Kernel: ...


class BlockKernelChoice:
    """Mixin of the block-sparse layers: which kernel their ``kernel`` parameter resolves to.

    Expects the ``Attention`` attributes ``cfg.kernel``, ``training``, ``dropout`` and ``head_dim``.
    """

    cfg: KernelConfig
    training: bool
    dropout: float
    head_dim: int

    def kernel_used(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
        """``"gather"`` or ``"flex"``: what a forward on ``device`` runs in the current mode (training:
        with gradients). For reports; raises as the forward would for a flex that cannot run."""
        return self.kernel_and_reason(device, dtype)[0]

    def kernel_and_reason(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> tuple[str, str]:
        """``kernel_used`` and why that kernel (``kernel_choice``), for records."""
        return kernel_choice(self.cfg.kernel, device=torch.device(device), dtype=dtype, head_dim=self.head_dim,
                             training=self.training, dropout=self.dropout, needs_grad=self.training)

    def kernel_for(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
        """The kernel of one forward with these inputs (``kernel_and_why_for`` without the reason)."""
        return self.kernel_and_why_for(q, k, v)[0]

    def kernel_and_why_for(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[str, str]:
        """The kernel of one forward with these inputs and why. flex is noted for records here
        (``variants.kernels``); the block paths note their own (gather, dense, cpu-flash), given the why."""
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        kernel, why = kernel_choice(self.cfg.kernel, device=q.device, dtype=q.dtype, head_dim=q.shape[-1],
                                    training=self.training, dropout=self.dropout, needs_grad=needs_grad)
        if kernel == "flex" and kernels.active():
            how = "compiled" if flex_compiled(q.device.type) else "eager, forward only"
            kernels.note("flex", f"torch.nn.attention.flex_attention ({how}) under a BlockMask built from the "
                         f"layout's blocks ({why})")
        return kernel, why


def layout_mask_mod(key_mask: torch.Tensor, is_global: torch.Tensor, block: int,
                    block_pairs: torch.Tensor | None = None, band: int | None = None) -> MaskMod:
    """The layout as a FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool``: query i may attend key j.

    The same ingredients as the gather path, token by token:
    - key j must be real (``key_mask`` (B, N), False on padding, including the padding to a
      multiple of ``block``);
    - a global token (``is_global`` (B, N)) attends every real key and every query attends it;
    - otherwise j must be local to i: in a key block that i's query block attends
      (``block_pairs`` (B, N/block, N/block), the block table with its invalid entries dropped)
      and, for a band, within ``band`` tokens of i. Either may be absent.
    """
    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        local: torch.Tensor | bool = True
        if block_pairs is not None:
            local = block_pairs[b, q_idx // block, kv_idx // block]
        if band is not None:
            local = local & ((q_idx - kv_idx).abs() <= band)
        return key_mask[b, kv_idx] & (is_global[b, q_idx] | is_global[b, kv_idx] | local)
    return mask_mod


#: FlexAttention's block size (its default): the BlockMask lists (query block, key block) pairs of this size
FLEX_BLOCK = 128


@functools.cache
def _flex_attention(compiled: bool) -> Callable[..., Any]:
    """``flex_attention``, compiled once per process (CUDA, or a CPU with ``ATTNBENCH_FLEX_COMPILE=1``) or eager."""
    from torch.nn.attention.flex_attention import flex_attention  # deferred import, heavy

    if compiled:
        return torch.compile(flex_attention)
    return flex_attention


def _per_block(t: torch.Tensor, n_blocks: int, size: int) -> torch.Tensor:
    """(B, N) bool -> (B, n_blocks, size): padded with False to whole blocks."""
    return torch.nn.functional.pad(t, (0, n_blocks * size - t.shape[1]), value=False).view(t.shape[0], n_blocks, size)


def _layout_counts(block_pairs: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """(B', nL, nL) layout block pairs -> (B', nF, nF) int: how many allowed layout pairs meet each pair of
    flex blocks, flex block f meeting the layout blocks ``first[f]`` .. ``last[f]`` (contiguous). Prefix sums
    along each axis, so O(B' nL^2 + B' nF nL): no token pairs, no scatter."""
    counts = block_pairs.to(torch.int32).cumsum(1)
    counts = torch.nn.functional.pad(counts, (0, 0, 1, 0))  # (B', nL + 1, nL): row r = sum of rows < r
    rows = counts.index_select(1, last + 1) - counts.index_select(1, first)  # (B', nF, nL)
    counts = torch.nn.functional.pad(rows.cumsum(2), (1, 0))  # (B', nF, nL + 1)
    return counts.index_select(2, last + 1) - counts.index_select(2, first)


def layout_block_mask(n: int, *, key_mask: torch.Tensor, is_global: torch.Tensor, block: int,
                      block_pairs: torch.Tensor | None = None, band: int | None = None,
                      flex_block: int = FLEX_BLOCK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (query block, key block) pairs of ``flex_block`` tokens FlexAttention must visit for the layout of
    ``layout_mask_mod``, from the layout at block granularity, never token by token.

    Returns ``(kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices)`` as
    ``BlockMask.from_kv_blocks`` takes them ((B, 1, nF) and (B, 1, nF, nF) int32, nF = ceil(n / flex_block):
    a last block shorter than ``flex_block`` is a partial one). A pair is touched when it may hold an
    allowed (query, key) pair: its key block holds a real key, and either the layout reaches it (the band
    ``|i - j| <= band`` at its nearest, the layout blocks it meets in ``block_pairs``), or its key block
    holds a real global key, or its query block a global query. It is full (the kernel skips the mask_mod
    there) when every pair in it is allowed: every key real, both blocks whole, and the band and layout
    blocks cover all of it; the other touched pairs are partial, where the kernel applies the mask_mod.
    Work O(B nF^2 + B N) (with ``block_pairs``, O(B (N/block)^2) more), against create_block_mask's
    O(B N^2) evaluations of the mask_mod.
    """
    dev = key_mask.device
    nf = -(-n // flex_block)
    start = torch.arange(nf, device=dev) * flex_block
    end = (start + flex_block).clamp(max=n) - 1  # last token of each flex block
    whole = (start + flex_block) <= n
    keys = _per_block(key_mask, nf, flex_block)
    key_any, key_all = keys.any(-1), keys.all(-1)  # (B, nF); a short last block is never all real
    global_q = _per_block(is_global, nf, flex_block).any(-1)
    global_k = _per_block(is_global & key_mask, nf, flex_block).any(-1)
    near = torch.ones(1, nf, nf, dtype=torch.bool, device=dev)  # the layout may allow some pair
    cover = near  # the layout allows every pair
    if band is not None:
        nearest = torch.maximum(start[None, :] - end[:, None], start[:, None] - end[None, :])  # <= 0: overlap
        farthest = torch.maximum(end[:, None] - start[None, :], end[None, :] - start[:, None])
        near, cover = near & (nearest <= band), cover & (farthest <= band)
    if block_pairs is not None:
        first, last = start // block, end // block  # the layout blocks each flex block meets
        counts = _layout_counts(block_pairs, first, last)
        size = last - first + 1
        near, cover = near & (counts > 0), cover & (counts == size[:, None] * size[None, :])
    touched = key_any[:, None, :] & (near | global_k[:, None, :] | global_q[:, :, None])
    full = cover & key_all[:, None, :] & whole[None, :, None]
    partial = touched & ~full
    return _ordered(partial) + _ordered(full)


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, nF, nF) bool -> the number of True per row and their column indices first, ascending (B, 1, ...)
    int32: BlockMask's layout (what create_block_mask's ``_dense_to_ordered`` makes)."""
    blocks = blocks.to(torch.int32)[:, None]
    order = torch.argsort(blocks, dim=-1, descending=True, stable=True)
    return blocks.sum(-1, dtype=torch.int32), order.to(torch.int32)


def flex_block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block: int,
                                key_mask: torch.Tensor, block_pairs: torch.Tensor | None = None,
                                band: int | None = None, global_idx: torch.Tensor | None = None,
                                global_valid: torch.Tensor | None = None) -> torch.Tensor:
    """``blocks.block_sparse_attention`` computed by FlexAttention: same arguments in mask form, same result.

    q, k, v: (B, H, N, D), N a multiple of ``block``; key_mask (B, N); block_pairs (B or 1, N/b, N/b)
    and/or band (see ``layout_mask_mod``); global_idx / global_valid (B, G). No dropout.
    Returns (B, H, N, D); query rows with no allowed key are zero. FlexAttention gives such rows
    a log-sum-exp of -inf: where it returns one (eager, and compiled on CUDA) that marks them, and a
    select (NaN * 0 would stay NaN) zeroes them whatever the kernel put there; inductor's CPU kernel
    returns none, and zeroes those rows itself.

    The BlockMask comes from the layout's blocks (``layout_block_mask``), cheap enough to build in every
    layer. Traceable whole by torch.compile (``train.compile``): no imports, warnings filters or host
    reads on the traced path; inside a compiled model flex_attention is compiled with it.
    """
    from torch.nn.attention.flex_attention import AuxRequest, BlockMask, flex_attention  # deferred import, heavy

    bsz, _, n, _ = q.shape
    is_global = global_token_mask(global_idx, global_valid, bsz, n, q.device)
    tables = layout_block_mask(n, key_mask=key_mask, is_global=is_global, block=block, block_pairs=block_pairs,
                               band=band)
    if block_pairs is not None:
        block_pairs = block_pairs.expand(bsz, -1, -1)
    mask_mod = layout_mask_mod(key_mask, is_global, block, block_pairs, band)
    block_mask = BlockMask.from_kv_blocks(*tables, BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod, seq_lengths=(n, n))
    compiling = torch.compiler.is_compiling()  # traced into a compiled caller's graph: compiled with it
    compiled = compiling or flex_compiled(q.device)
    # flex_attention returns the output alone, or (output, aux) with return_aux
    fn: Callable[..., Any]
    if compiling:
        fn = flex_attention
    else:
        fn = _flex_attention(compiled)
    if compiled and q.device.type == "cpu":
        # inductor's CPU FlexAttention returns no log-sum-exp (torch 2.13); it gives rows with no allowed
        # key zeros itself (tests/variants/test_flex_blocks.py checks it, an all-padding element included)
        return cast(torch.Tensor, fn(q, k, v, block_mask=block_mask))
    aux_request = AuxRequest(lse=True)
    if compiled:
        out, aux = fn(q, k, v, block_mask=block_mask, return_aux=aux_request)
    else:
        with warnings.catch_warnings():
            # eager on CPU is the design here (forward only, for checks), not an oversight to warn about
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            out, aux = fn(q, k, v, block_mask=block_mask, return_aux=aux_request)
    lse = cast(torch.Tensor, aux.lse)  # requested (AuxRequest(lse=True)): never None
    return torch.where(torch.isfinite(lse)[..., None], out, 0.0)
