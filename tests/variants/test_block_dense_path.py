"""Block attention's dense path for short sequences (variants/lib/block_dense.py) against the gather path.

On the CPU, sequences of at most ``block_dense.MAX_TOKENS`` tokens run window, local and sparse
attention as one SDPA under the layout's dense token mask; longer ones gather key blocks (or take
the flash path). The two must be the same function: whole layers, forward and backward in float64,
with global tokens, padding holes and tails, a fully padded element, sequences that are not a
multiple of the block, and sparse's random blocks drawn per element in training mode.
tests/variants/test_window.py, tests/variants/test_local.py and tests/variants/test_sparse.py hold the
variants against dense references (on the dense path at their short lengths); this file holds the gather path to it.
"""
from __future__ import annotations

import pytest
import torch
from test_block_flash_path import CASES, _masks, _run, case_id, layer_and_input

from attnbench.variants import build_attention
from attnbench.variants.lib import block_dense
from attnbench.variants.lib.blocks import block_sparse_attention


def _both_paths(layer, x, mask, monkeypatch, seed=0):
    torch.manual_seed(seed)  # sparse's random blocks in training mode: the same draw on both paths
    dense = _run(layer, x, mask)
    with monkeypatch.context() as m:
        m.setattr(block_dense, "MAX_TOKENS", 0)
        torch.manual_seed(seed)
        gathered = _run(layer, x, mask)
    return dense, gathered


def _assert_same(dense, gathered):
    (y_d, g_d), (y_g, g_g) = dense, gathered
    torch.testing.assert_close(y_d, y_g, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_d, g_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_dense_path_equals_gather_path(case, padded, monkeypatch):
    _assert_same(*_both_paths(*layer_and_input(case, padded), monkeypatch))


def test_training_mode_random_blocks_agree_per_element(monkeypatch):
    """Training draws sparse's random blocks afresh; padding gives each element its own table."""
    layer = build_attention("sparse", 24, 3, {"block_size": 4, "window_blocks": 1, "global_blocks": (0,),
                                              "random_blocks": 2}, max_len=64).double().train()
    x = torch.randn(3, 38, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _assert_same(*_both_paths(layer, x, _masks(38)[1], monkeypatch, seed=5))


def test_dense_path_is_taken_on_the_cpu_up_to_max_tokens(monkeypatch):
    calls = []
    original = block_dense.dense_attention
    monkeypatch.setattr(block_dense, "dense_attention",
                        lambda *a, **k: calls.append(a[0].shape[2]) or original(*a, **k))
    mask = torch.ones(1, 32, dtype=torch.bool)
    q = k = v = torch.randn(1, 2, 32, 4)
    block_sparse_attention(q, k, v, block=4, key_mask=mask, reach=1)
    monkeypatch.setattr(block_dense, "MAX_TOKENS", 31)
    block_sparse_attention(q, k, v, block=4, key_mask=mask, reach=1)
    assert calls == [32]


def test_a_row_with_no_key_is_zero_with_finite_gradients():
    """No real key in reach (a window far from any real token): zeros, and no NaN flows back."""
    q, k, v = (torch.randn(1, 1, 8, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, :2] = True
    out = block_sparse_attention(q, k, v, block=2, key_mask=mask, reach=1)
    assert out[0, 0, 4:].abs().max() == 0  # blocks 2 and 3 see blocks 1-3 only: no real key
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
