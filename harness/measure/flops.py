"""FLOPs that ``torch.utils.flop_counter.FlopCounterMode`` sees while a module runs, shared by the efficiency
sweep (one case's step, ``harness.bench.case``) and training (one optimiser step's passes,
``harness.run.trainer_steps``).

- FlexAttention cannot run under the counter (dynamo runs no compiled frame under a dispatch mode, and the
  eager operator has no rule for it), and torch's formula for it would count the dense N x N product: a
  module's FlexAttention layers are counted on the gather kernel of the same layout instead
  (``counted_on_gather``; ``FLEX_FLOPS_NOTE`` says so where the count is recorded).
- ``CPU_FLASH_FORMULAS``: torch has no rule for its CPU flash attention kernel (what SDPA runs on a CPU, and
  what ``variants.flash_cpu`` calls), so the counter would count it as 0; these count it as torch counts its
  CUDA SDPA kernels (``sdpa_flop_count``: QK^T and PV forward, ``sdpa_backward_flop_count`` backward).
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from attnbench.variants.lib.flex_blocks import BlockKernelChoice

#: a tensor's shape, as the flop counter passes it to its formulas
Shape = Sequence[int]

FLEX_FLOPS_NOTE = ("; FlexAttention's layers counted on the gather kernel of the same layout (the counter cannot "
                   "run FlexAttention, and torch's formula for it counts the dense N x N product)")


def _cpu_flash_forward(query_shape: Shape, key_shape: Shape, value_shape: Shape, *args: object,
                       out_shape: object = None, **kwargs: object) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward(grad_out_shape: Shape, query_shape: Shape, key_shape: Shape, value_shape: Shape,
                        *args: object, out_shape: object = None, **kwargs: object) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


#: ``FlopCounterMode(custom_mapping=...)`` rules for torch's CPU flash attention kernel, forward and backward
CPU_FLASH_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
}


def flex_layers(module: torch.nn.Module, device: torch.device) -> list[BlockKernelChoice]:
    """The block-layout layers of ``module`` that run FlexAttention in its mode on ``device``."""
    dtype = next(module.parameters()).dtype
    return [m for m in module.modules() if isinstance(m, BlockKernelChoice) and m.kernel_used(device, dtype) == "flex"]


@contextlib.contextmanager
def counted_on_gather(module: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Within the block, the FlexAttention layers of ``module`` run the gather kernel of the same layout."""
    layers = flex_layers(module, device)
    saved = [layer.cfg for layer in layers]
    for layer in layers:
        layer.cfg = dataclasses.replace(layer.cfg, kernel="gather")
    try:
        yield
    finally:
        for layer, cfg in zip(layers, saved, strict=True):
            layer.cfg = cfg


def count_flops(work: Callable[[], object], module: torch.nn.Module, device: torch.device) -> tuple[int, str]:
    """The FLOPs the counter sees while ``work()`` runs ``module`` on ``device`` (FlexAttention layers on the
    gather kernel, torch's CPU flash kernel by ``CPU_FLASH_FORMULAS``), and the note the count's method
    takes (``FLEX_FLOPS_NOTE`` where FlexAttention layers were counted on gather, else empty)."""
    on_gather = bool(flex_layers(module, device))
    with counted_on_gather(module, device), FlopCounterMode(display=False, custom_mapping=CPU_FLASH_FORMULAS) as c:
        work()
    return int(c.get_total_flops()), FLEX_FLOPS_NOTE if on_gather else ""
