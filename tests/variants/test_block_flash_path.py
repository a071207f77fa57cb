"""Block attention's CPU flash path (variants/lib/block_flash.py) against the gather path.

Window, local and sparse attention run through the CPU flash kernel where it applies and pays
(``block_flash.worthwhile``: the kernel applies, N >= ``MIN_TOKENS``; lowered to 0 here): the band
of neighbour blocks as overlapping key windows, sparse's strided and random blocks as a table of
their own, the global keys beside. Otherwise (CUDA, attention dropout) the key blocks are gathered
into SDPA. Whole layers (fused projections, so the kernel reads strided views) must agree between
the two, forward and backward, with global tokens, padding holes and tails, a fully padded element,
and sequences that are not a multiple of the block. tests/variants/test_window.py, tests/variants/test_local.py and
tests/variants/test_sparse.py hold both against dense references.
"""
from __future__ import annotations

import pytest
import torch

from attnbench.variants import build_attention
from attnbench.variants.lib import block_dense, block_flash, flash_cpu
from attnbench.variants.lib.blocks import block_sparse_attention


@pytest.fixture(autouse=True)
def short_sequences_take_the_flash_path(monkeypatch):
    monkeypatch.setattr(block_flash, "MIN_TOKENS", 0)
    monkeypatch.setattr(block_dense, "MAX_TOKENS", 0)  # and, where the kernel does not apply, the gather path

CASES = [  # (variant, params, n)
    ("window", {"window": 3, "block_size": 4, "global_tokens": (0, -1)}, 21),
    ("window", {"window": 5, "block_size": 4, "global_tokens": ()}, 24),  # reach 2
    ("window", {"window": 8, "block_size": 0, "global_tokens": (0,)}, 40),  # block = max(w, 16)
    ("window", {"window": 64, "global_tokens": (2,)}, 10),  # the window covers everything
    ("local", {"block_size": 5}, 23),  # reach 0, no band
    ("sparse", {"block_size": 4, "window_blocks": 1, "global_blocks": (0, -1), "random_blocks": 2}, 38),
    ("sparse", {"block_size": 4, "window_blocks": 0, "global_blocks": (), "random_blocks": 1, "strided_every": 3},
     33),
    ("sparse", {"block_size": 3, "window_blocks": 2, "global_blocks": (1,), "random_blocks": 0}, 20),  # band only
    ("sparse", {"block_size": 4, "window_blocks": 1, "global_blocks": (0,), "random_blocks": 9}, 16),  # all blocks
]


def _masks(n):
    m = torch.ones(3, n, dtype=torch.bool)
    m[0, n - n // 3:] = False  # padded tail
    m[1, 2:5] = False  # a hole (a global position may fall in it)
    m[2] = False  # nothing real
    return [None, m]


def _run(layer, x, mask):
    xg = x.clone().requires_grad_(True)
    y = layer(xg, mask)
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
    if mask is not None:  # padded tokens' outputs reach no loss
        upstream = upstream * mask[..., None]
    return y, torch.autograd.grad((y * upstream).sum(), [xg, *layer.parameters()])


def case_id(case) -> str:
    return f"{case[0]}-{case[2]}-" + "-".join(f"{k}{v}" for k, v in case[1].items())


def layer_and_input(case, padded: bool):
    """A float64 layer of the case in eval mode (sparse's random blocks fixed, the same on every path; no
    dropout), its input (3, n, 24) and its key padding mask (None unless ``padded``)."""
    variant, params, n = case
    torch.manual_seed(0)
    layer = build_attention(variant, 24, 3, params, max_len=64).double().eval()
    x = torch.randn(3, n, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return layer, x, _masks(n)[padded]


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_flash_path_equals_gather_path(case, padded, monkeypatch):
    layer, x, mask = layer_and_input(case, padded)
    y_f, g_f = _run(layer, x, mask)
    monkeypatch.setattr(flash_cpu, "usable", lambda *a: False)
    y_g, g_g = _run(layer, x, mask)
    # every row agrees, padded queries' too (they see real keys); a row with no key at all is zero on both
    torch.testing.assert_close(y_f, y_g, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_f, g_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_flash_path_is_taken_on_cpu_without_dropout_from_min_tokens(monkeypatch):
    calls = []
    original = block_flash.block_attention
    monkeypatch.setattr(block_flash, "block_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    q = k = v = torch.randn(1, 2, 16, 4)
    mask = torch.ones(1, 16, dtype=torch.bool)
    block_sparse_attention(q, k, v, block=4, key_mask=mask, reach=1)
    block_sparse_attention(q, k, v, block=4, key_mask=mask, reach=1, dropout=0.1, training=False)
    block_sparse_attention(q, k, v, block=4, key_mask=mask, reach=1, dropout=0.1, training=True)
    assert len(calls) == 2  # dropout in training mode takes the gather path
    monkeypatch.setattr(block_flash, "MIN_TOKENS", 17)
    block_sparse_attention(q, k, v, block=4, key_mask=mask, reach=1)
    assert len(calls) == 2  # shorter than MIN_TOKENS: the gather path
