"""LSH attention's flash-kernel path (variants/lib/lsh_chunks.py) against its explicit path.

``LSHAttention`` computes the chunk step through the CPU flash kernel when it can
(``flash_cpu.usable``) and with explicit score tensors otherwise (CUDA, attention dropout).
Both compute the same function: given the same buckets they must agree to rounding, forward
and backward, whatever the chunk geometry, padding (holes and tails, a fully padded element) or
a sorted length that is not a multiple of the chunk size. The explicit path is the one the
dense-oracle tests in tests/variants/test_lsh.py were written against; these tests tie the two together.
"""
from __future__ import annotations

import pytest
import torch

from attnbench.variants import build_attention
from attnbench.variants.lib import flash_cpu, lsh_chunks
from attnbench.variants.lsh import LSHAttention

GEOMETRIES = [  # (n, chunk_size, n_buckets, n_hashes, chunks_before, chunks_after)
    (48, 8, 8, 2, 1, 0),     # the defaults' shape: one chunk back
    (50, 8, 8, 3, 1, 0),     # sorted length padded to 56: empty slots
    (37, 5, 6, 2, 2, 1),     # two back, one ahead
    (40, 4, 4, 1, 0, 0),     # each chunk alone
    (16, 16, 2, 2, 1, 1),    # one chunk: only fillers around it
]


def _layer(n, c, nb, r, before, after, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    params = {"chunk_size": c, "n_buckets": nb, "n_hashes": r, "chunks_before": before, "chunks_after": after}
    return build_attention("lsh", 24, 3, params, max_len=64).to(dtype)


def _both_paths(layer, x, mask, monkeypatch, train_seed=0):
    """(output, input grad, weight grads) through the flash path, then the explicit path, with
    the same rotations (eval mode, or the same seed for training mode's fresh draws)."""
    results = []
    for flash in (True, False):
        if not flash:
            monkeypatch.setattr(flash_cpu, "usable", lambda *a: False)
        torch.manual_seed(train_seed)
        xg = x.clone().requires_grad_(True)
        y = layer(xg, mask)
        # padded tokens' outputs reach the loss too: both paths give zeros where a row has no valid key
        upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype)
        grads = torch.autograd.grad((y * upstream).sum(), [xg, *layer.parameters()])
        results.append((y, grads))
    return results


def _masks(b, n):
    tail = torch.ones(b, n, dtype=torch.bool)
    tail[0, n - n // 3:] = False  # a padded tail
    tail[1, 3:7] = False  # holes in the middle
    tail[1, -2:] = False
    tail[2] = False  # nothing real at all
    return [None, tail]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "n{}-c{}-nb{}-r{}-b{}a{}".format(*g))
@pytest.mark.parametrize("padded", [False, True])
def test_flash_path_equals_explicit_path(geometry, padded, monkeypatch):
    n = geometry[0]
    layer = _layer(*geometry).eval()
    x = torch.randn(3, n, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = _masks(3, n)[padded]
    (y_f, g_f), (y_e, g_e) = _both_paths(layer, x, mask, monkeypatch)
    # every token's output agrees, padded ones included: a padded query sees the real keys in its
    # window, or (none there) outputs zeros on both paths (issue 32: the flash path averaged the
    # masked filler rows, token 0's, there, and its backward ignored them)
    torch.testing.assert_close(y_f, y_e, rtol=1e-9, atol=1e-11)
    assert torch.isfinite(y_f).all()
    for a, b in zip(g_f, g_e, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_training_mode_float32_agrees_and_is_used_on_cpu(monkeypatch):
    """Training mode draws fresh rotations: with the same seed both paths hash alike, and in
    float32 they agree to float32 rounding. Without dropout the flash path is the one taken."""
    layer = _layer(96, 16, 12, 2, 1, 0, dtype=torch.float32).train()
    assert flash_cpu.usable(torch.zeros(1), layer.dropout)
    x = torch.randn(2, 96, 24, generator=torch.Generator().manual_seed(2))
    (y_f, g_f), (y_e, g_e) = _both_paths(layer, x, None, monkeypatch, train_seed=7)
    torch.testing.assert_close(y_f, y_e, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_f, g_e, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_flash_path_taken_only_where_the_kernel_applies(monkeypatch):
    calls = []
    monkeypatch.setattr(LSHAttention, "shared_qk_attention",
                        lambda self, *a: calls.append("explicit") or torch.zeros_like(a[0]))
    monkeypatch.setattr(LSHAttention, "flash_attention",
                        lambda self, qk, v, m: calls.append("flash") or torch.zeros_like(qk))
    x = torch.randn(1, 16, 24)
    _layer(16, 4, 4, 1, 1, 0, dtype=torch.float32).eval()(x)
    _layer(16, 4, 4, 1, 1, 0, dtype=torch.float32).train()(x)  # no dropout configured
    with_dropout = build_attention("lsh", 24, 3, {"chunk_size": 4, "n_buckets": 4}, max_len=16, dropout=0.1)
    with_dropout.train()(x)
    with_dropout.eval()(x)  # dropout is off in eval mode
    assert calls == ["flash", "flash", "explicit", "flash"]
    assert not flash_cpu.usable(torch.zeros(1, dtype=torch.float16), 0.0)


def test_windows_are_views_and_fold_sums_every_window_a_row_is_in():
    """The key windows are an overlapping view of the sorted rows (nothing copied), and the
    backward fold adds each window's gradient back to the rows it came from."""
    sort_idx = torch.arange(10).expand(1, 1, 1, 10)
    lay = lsh_chunks.Layout(sort_idx, sort_idx, c=2, before=1, after=1)
    rows = torch.arange(lay.kv_len, dtype=torch.float64).view(1, -1, 1).clone()
    win = lay.windows(rows)
    assert win.shape == (1, 5, 6, 1) and win.untyped_storage().data_ptr() == rows.untyped_storage().data_ptr()
    assert win[0, 0, :, 0].tolist() == [0, 1, 2, 3, 4, 5] and win[0, 4, :, 0].tolist() == [8, 9, 10, 11, 12, 13]
    folded = flash_cpu.fold_windows(torch.ones_like(win).contiguous(), 2)
    # a row is in as many windows as chunks see it: three in the middle, fewer at the ends
    assert folded[0, :, 0].tolist() == [1, 1, 2, 2] + [3] * 6 + [2, 2, 1, 1]
