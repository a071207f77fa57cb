"""Longformer-style window attention against dense attention under its own mask, built here."""
from __future__ import annotations

import pytest
import torch

from attnbench.harness.conformance.checks import lengths_mask
from attnbench.variants import build_attention
from attnbench.variants.lib import block_dense
from attnbench.variants.lib.blocks import resolve_positions
from attnbench.variants.lib.reference import explicit_softmax_attention
from conftest import largest_saved_tensor

#: the longest input these tests build layers for (the variants here do not use it)
MAX_LEN = 4096

B, H, D = 2, 2, 4


def qkv(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g, dtype=torch.float64) for _ in range(3)]



def band_mask(n, w, globals_, lengths):
    """|i - j| <= w, plus rows and columns of the global tokens (negatives from each real end)."""
    i = torch.arange(n)
    band = (i[:, None] - i[None, :]).abs() <= w
    out = band.expand(len(lengths), n, n).clone()
    for b, length in enumerate(lengths):
        seen = set()
        for pos in globals_:
            p = pos if pos >= 0 else length + pos
            if 0 <= p < length and p not in seen:
                seen.add(p)
                out[b, :, p] = True
                out[b, p, :] = True
    return out


def window(w, globals_=(), block=0):
    return build_attention("window", H * D, H, {"window": w, "global_tokens": globals_, "block_size": block},
                           max_len=MAX_LEN).double().eval()


def real_rows(t, mask):
    return t[mask[:, None, :, None].expand_as(t)]


@pytest.mark.parametrize("n", [7, 16, 33])
def test_window_covering_the_sequence_equals_full_attention(n):
    q, k, v = qkv(n)
    mask = lengths_mask([n, max(1, n - 5)], n)
    for w, block in ((n, 0), (n - 1, 4), (4 * n, 3)):
        out = window(w, (), block).attend(q, k, v, mask)
        want = explicit_softmax_attention(q, k, v, key_padding_mask=mask)
        torch.testing.assert_close(real_rows(out, mask), real_rows(want, mask), rtol=0, atol=1e-12)


@pytest.mark.parametrize("w,block,globals_", [(0, 4, ()), (1, 1, (0,)), (2, 4, (0, -1)), (3, 2, (5,)),
                                               (5, 16, (0, 3, -2)), (6, 4, (0, 0, -100))])
def test_window_equals_dense_attention_under_the_band_and_global_mask(w, block, globals_):
    n = 29
    lengths = [n, 17]
    q, k, v = qkv(n, seed=w)
    mask = lengths_mask(lengths, n)
    out = window(w, globals_, block).attend(q, k, v, mask)
    want = explicit_softmax_attention(q, k, v, key_padding_mask=mask,
                                      attn_mask=band_mask(n, w, globals_, lengths)[:, None])
    torch.testing.assert_close(real_rows(out, mask), real_rows(want, mask), rtol=0, atol=1e-12)


def test_global_key_inside_the_band_is_counted_once():
    # token 0 is global and also inside every early query's band: counting it twice would
    # change the softmax weights against dense attention
    n = 12
    q, k, v = qkv(n, seed=4)
    mask = torch.ones(B, n, dtype=torch.bool)
    out = window(3, (0,), 4).attend(q, k, v, mask)
    want = explicit_softmax_attention(q, k, v, attn_mask=band_mask(n, 3, (0,), [n, n])[:, None])
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)


def test_gradients_match_dense_reference():
    n, w = 21, 3
    q, k, v = (t.requires_grad_() for t in qkv(n, seed=9))
    mask = lengths_mask([n, 15], n)
    out = window(w, (0, -1), 4).attend(q, k, v, mask)
    want = explicit_softmax_attention(q, k, v, key_padding_mask=mask,
                                      attn_mask=band_mask(n, w, (0, -1), [n, 15])[:, None])
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64) * mask[:, None, :, None]
    g1 = torch.autograd.grad((out * weight).sum(), (q, k, v))
    g2 = torch.autograd.grad((want * weight).sum(), (q, k, v))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_layer_dense_mask_matches_the_specification():
    n, lengths = 23, [23, 11]
    layer = window(4, (0, -1), 5)
    assert torch.equal(layer.dense_mask(n, lengths_mask(lengths, n)), band_mask(n, 4, (0, -1), lengths))


def test_scores_are_banded_not_quadratic(monkeypatch):
    """The largest tensor the layer builds grows with N*w, not N^2 (on the block path, which sequences
    longer than block_dense.MAX_TOKENS take; shorter ones run one dense mask)."""
    monkeypatch.setattr(block_dense, "MAX_TOKENS", 0)
    layer = window(8, (0,), 8)
    sizes = [largest_saved_tensor(layer.attend, *qkv(n), torch.ones(B, n, dtype=torch.bool)) for n in (256, 512)]
    assert sizes[1] / sizes[0] == pytest.approx(2.0, rel=0.05)
    assert sizes[1] < B * H * 512 * 512 / 4


def test_resolve_positions_counts_negatives_from_the_real_end():
    idx, ok = resolve_positions((0, -1, 7, -1), torch.tensor([5, 1, 9]))
    assert idx.tolist()[0][:2] == [0, 4] and ok.tolist()[0] == [True, True, False, False]
    assert ok.tolist()[1] == [True, False, False, False]  # 0 and -1 are the same token
    assert idx.tolist()[2][:3] == [0, 8, 7] and ok.tolist()[2] == [True, True, True, False]


def test_resolve_positions_takes_the_layers_position_tensor():
    lengths = torch.tensor([5, 1, 9])
    for a, b in zip(resolve_positions((0, -1, 7), lengths), resolve_positions(torch.tensor([0, -1, 7]), lengths),
                    strict=True):
        assert torch.equal(a, b)
    layer = window(2, (0, -1), 4)
    assert layer.global_positions.tolist() == [0, -1]
    assert "global_positions" not in layer.state_dict()  # derived from the config: checkpoints keep their keys
