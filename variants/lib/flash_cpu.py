"""Building blocks for attention through the CPU flash-attention kernel, shared by LSH's chunks
(variants/lib/lsh_chunks.py) and the sliding band (variants/band_flash.py).

- ``windows``: each block's keys are its neighbours' rows, as an overlapping *view* of one
  padded row tensor (``Tensor.unfold``): nothing copied, the kernel reads them in place;
  ``fold_windows`` is its backward pass, adding each window's gradient back to its rows.
- Pieces combined by their log-sum-exp: attention over a union of key sets (LSH's hash rounds,
  the band and the global keys) is computed piece by piece, ``out = sum_p w_p out_p`` with
  ``w = softmax_p(lse_p)``. No gradient is taken through the log-sum-exps separately: the score
  gradient of piece p is ``P * (G_p . v - G_p . out)`` with ``G_p = w_p dOut``, which is the
  kernel's own backward pass given ``G_p`` as the output gradient and the *combined* output in
  place of the piece's (the kernel computes its row term from the output it is given).
"""
from __future__ import annotations

import torch

FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

#: additive mask value of an excluded key: finite, so a row with no key left is not NaN, and far
#: below any real score (and below LSH's self offset)
MASK_VALUE = -1e9


def usable(t: torch.Tensor, dropout: float) -> bool:
    """Whether the kernel path applies: CPU, a float dtype the kernel takes, no attention dropout
    (its CPU backward pass has none)."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and dropout == 0.0


def windows(rows: torch.Tensor, dim: int, block: int, width: int) -> torch.Tensor:
    """Overlapping windows of ``width`` rows every ``block`` rows along ``dim`` (rows padded by the
    caller), as a view: (..., L, ..., d) -> (..., n_blocks, ..., width, d) with the window's rows
    second to last."""
    return rows.unfold(dim, width, block).transpose(-1, -2)


def fold_windows(grad: torch.Tensor, block: int) -> torch.Tensor:
    """(..., n_blocks, W*block, d) gradients of overlapping windows -> (..., (n_blocks + W - 1) * block, d)
    gradients of the rows they were cut from (the backward pass of ``windows``)."""
    *lead, nb, width, d = grad.shape
    w = width // block
    out = grad.new_empty(*lead, nb + w - 1, block, d)
    out[..., :nb, :, :] = grad[..., :block, :]  # written, not zeroed and added to
    out[..., nb:, :, :] = 0
    for i in range(1, w):
        out[..., i:i + nb, :, :] += grad[..., i * block:(i + 1) * block, :]
    return out.view(*lead, (nb + w - 1) * block, d)


def lse_weights(lses: list[torch.Tensor]) -> torch.Tensor:
    """Pieces' log-sum-exps (each (...)) -> their weights in the combination, (..., P)."""
    return torch.softmax(torch.stack(lses, dim=-1), dim=-1)
