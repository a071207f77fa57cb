"""LRA's Local Attention against dense attention under its own block-diagonal mask, built here."""
from __future__ import annotations

import pytest
import torch
from test_flex_blocks import HostRoundTrips

from attnbench.harness.conformance.checks import lengths_mask
from attnbench.variants import VARIANTS, build_attention
from attnbench.variants.lib import block_dense
from attnbench.variants.lib.reference import explicit_softmax_attention
from conftest import largest_saved_tensor

#: the longest input these tests build layers for (local attention does not use it)
MAX_LEN = 4096

B, H, D = 3, 2, 4


def qkv(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g, dtype=dtype) for _ in range(3)]



def local(block, kernel="gather", dtype=torch.float64):
    return build_attention("local", H * D, H, {"block_size": block, "kernel": kernel},
                           max_len=MAX_LEN).to(dtype).eval()


def block_diagonal(n, block):
    """(N, N): query i may attend key j iff they lie in the same block [c b, (c + 1) b)."""
    pos = torch.arange(n) // block
    return pos[:, None] == pos[None, :]


@pytest.mark.parametrize("n", [1, 7, 16, 33])
def test_one_block_covering_the_sequence_equals_full_attention(n):
    q, k, v = qkv(n)
    mask = lengths_mask([n, max(1, n - 5), 0], n)  # ragged, and one element all padding
    for block in (n, n + 1, 4 * n, 64):
        for m in (None, mask):
            out = local(block).attend(q, k, v, m)
            want = explicit_softmax_attention(q, k, v, key_padding_mask=m)
            torch.testing.assert_close(out, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("block", [1, 2, 4, 5, 8, 28])
def test_blocks_equal_dense_attention_under_the_block_diagonal_mask(block):
    n = 29  # not a multiple of any block here but 1 and 29's own
    q, k, v = qkv(n, seed=block)
    mask = lengths_mask([n, 17, 3], n)
    holes = mask & (torch.rand(B, n, generator=torch.Generator().manual_seed(5)) > 0.3)
    for m in (None, mask, holes):
        out = local(block).attend(q, k, v, m)
        want = explicit_softmax_attention(q, k, v, key_padding_mask=m, attn_mask=block_diagonal(n, block))
        torch.testing.assert_close(out, want, rtol=0, atol=1e-12)  # rows without a real key: zeros in both


def test_appended_padding_leaves_real_outputs_unchanged():
    """Blocks are fixed from position 0: padding appended past any block boundary moves no real token."""
    n = 10
    q, k, v = qkv(n, seed=2)
    for block in (3, 4, 10, 64):
        layer = local(block)
        ref = layer.attend(q, k, v, None)
        for pad in (1, 2, 7, 30):
            junk = [torch.randn(B, H, pad, D, dtype=torch.float64) * 100 for _ in range(3)]
            qp, kp, vp = (torch.cat([t, j], dim=2) for t, j in zip((q, k, v), junk, strict=True))
            out = layer.attend(qp, kp, vp, lengths_mask([n] * B, n + pad))
            torch.testing.assert_close(out[:, :, :n], ref, rtol=0, atol=1e-12)


def test_gradients_match_dense_reference():
    n, block = 21, 4
    q, k, v = (t.requires_grad_() for t in qkv(n, seed=9))
    mask = lengths_mask([n, 15, 6], n)
    out = local(block).train().attend(q, k, v, mask)  # dropout 0: training runs the same computation
    want = explicit_softmax_attention(q, k, v, key_padding_mask=mask, attn_mask=block_diagonal(n, block))
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g1 = torch.autograd.grad((out * weight).sum(), (q, k, v))
    g2 = torch.autograd.grad((want * weight).sum(), (q, k, v))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_flex_equals_gather_forward_on_cpu(dtype, atol):
    n = 37
    q, k, v = qkv(n, seed=3, dtype=dtype)
    mask = lengths_mask([n, 20, 0], n)
    for block in (4, 5, 64):
        want = local(block, "gather", dtype).attend(q, k, v, mask)
        got = local(block, "flex", dtype).attend(q, k, v, mask)
        torch.testing.assert_close(got, want, rtol=0, atol=atol)


def test_auto_runs_gather_on_cpu_and_flex_refuses_gradients_there():
    layer = local(4, "auto")
    assert layer.kernel_used("cpu") == layer.train().kernel_used("cpu") == "gather"
    q, k, v = qkv(12)
    with pytest.raises(RuntimeError, match="no backward pass on CPU"):
        local(4, "flex").attend(q.requires_grad_(), k, v, None)


@pytest.mark.parametrize("training", [False, True])
def test_forward_makes_no_host_round_trip(training):
    layer = local(5).train(training)
    q, k, v = qkv(30)
    mask = lengths_mask([30, 12, 0], 30)
    with HostRoundTrips() as calls:
        layer.attend(q, k, v, mask)
        layer.attend(q, k, v, None)
    assert calls.seen == []


def test_scores_are_block_local_not_quadratic(monkeypatch):
    """The largest tensor kept for the backward pass grows with N b, not N^2 (on the block path, which
    sequences longer than block_dense.MAX_TOKENS take; shorter ones run one dense mask)."""
    monkeypatch.setattr(block_dense, "MAX_TOKENS", 0)
    layer = local(8)
    sizes = [largest_saved_tensor(layer.attend, *qkv(n), torch.ones(B, n, dtype=torch.bool)) for n in (256, 512)]
    assert sizes[1] / sizes[0] == pytest.approx(2.0, rel=0.05)
    assert sizes[1] < B * H * 512 * 512 / 4


def test_published_row_flops_and_config():
    entry = VARIANTS.get("local")
    assert entry.cls.lra_model == "Local Attention" and entry.cls.published_as({}) == "Local Attention"
    assert entry.cls.linear_memory and not entry.cls.exact
    layer = build_attention("local", 16, 2, max_len=MAX_LEN)
    assert layer.cfg.block_size == 50 and layer.cfg.kernel == "auto"  # LRA's default block (ListOps/Text/Retrieval)
    proj = layer.projection_flops(2, 120)
    assert layer.flops(2, 120) - proj == 2 * 2 * 2 * 2 * 150 * 50 * 8  # 120 tokens padded to 3 blocks of 50
    assert layer.flops(2, 30) - layer.projection_flops(2, 30) == 2 * 2 * 2 * 2 * 30 * 30 * 8  # one block of 30
    with pytest.raises(ValueError, match="block_size"):
        build_attention("local", 16, 2, {"block_size": 0}, max_len=MAX_LEN)
