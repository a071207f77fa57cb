"""Nystromformer: the limit case against dense softmax attention, the algorithm against a dense reference
written here (per element, from its real tokens only), the pseudo-inverse, padding and precision."""
from __future__ import annotations

import math

import pytest
import torch
from test_flex_blocks import HostRoundTrips

from attnbench.harness.conformance.checks import lengths_mask
from attnbench.harness.run import precision
from attnbench.variants import VARIANTS, build_attention, nystrom
from attnbench.variants.lib.reference import explicit_softmax_attention

#: the longest input these tests build layers for (Nystromformer does not use it)
MAX_LEN = 4096

B, H, D = 3, 2, 16


def layer(landmarks, iterations=6, conv=0, dtype=torch.float64):
    params = {"landmarks": landmarks, "pinv_iterations": iterations, "conv_kernel": conv}
    return build_attention("nystrom", H * D, H, params, max_len=MAX_LEN).to(dtype).eval()



def gen(seed):
    return torch.Generator().manual_seed(seed)


def diagonal_qkv(n, c=3.0, seed=0):
    """Queries and keys near c times distinct basis vectors: softmax(Q K^T / sqrt(D)) is diagonally
    dominant, condition number about 5 (well-conditioned, so its pseudo-inverse converges fast)."""
    g = gen(seed)
    basis = torch.eye(D, dtype=torch.float64)[torch.arange(n) % D]
    q, k = (c * basis + 0.3 * torch.randn(B, H, n, D, generator=g, dtype=torch.float64) for _ in range(2))
    return q, k, torch.randn(B, H, n, D, generator=g, dtype=torch.float64)


def random_qkv(n, seed=1):
    g = gen(seed)
    return [torch.randn(B, H, n, D, generator=g, dtype=torch.float64) for _ in range(3)]


def softmax_condition(q, k):
    s = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), dim=-1)
    return torch.linalg.cond(s).max().item()


def real_rows(t, mask):
    return t if mask is None else t[mask[:, None, :, None].expand_as(t)]


# ---------------------------------------------------------------- limit case: every token a landmark

@pytest.mark.parametrize("n", [5, 12, 16])
def test_landmarks_equal_to_length_give_full_attention(n):
    """m = N: each segment is one token, F = A = Bk = softmax(Q K^T) and F A^+ Bk V = softmax(Q K^T) V.
    On a well-conditioned softmax (condition number ~5) 6 iterations reach rounding: 1e-12."""
    q, k, v = diagonal_qkv(n)
    assert softmax_condition(q, k) < 10
    mask = lengths_mask([n, n - 2, 1], n)  # shorter elements: every real token its own landmark, the rest empty
    for m in (None, mask):
        out = layer(n).attend(q, k, v, m)
        want = explicit_softmax_attention(q, k, v, key_padding_mask=m)
        torch.testing.assert_close(real_rows(out, m), real_rows(want, m), rtol=0, atol=1e-12)
    out = layer(4 * n).attend(q, k, v, mask)  # more landmarks than tokens: the same, with empty segments
    torch.testing.assert_close(real_rows(out, mask), real_rows(explicit_softmax_attention(q, k, v, mask), mask),
                               rtol=0, atol=1e-12)


def test_more_pseudo_inverse_iterations_tighten_the_limit_case():
    """Random inputs: softmax(Q K^T) has condition number ~4e3 here. The paper's 6 iterations leave an error
    of ~4e-2 (8: ~7e-3, 10: ~3e-3, 12: ~3e-5); by 15 it is rounding (~1e-14) and stays there."""
    n = 12
    q, k, v = random_qkv(n)
    assert 1e3 < softmax_condition(q, k) < 1e4
    mask = lengths_mask([n, 9, 4], n)
    want = real_rows(explicit_softmax_attention(q, k, v, key_padding_mask=mask), mask)
    errors = {}
    for iterations in (6, 8, 10, 12, 15, 25):
        out = real_rows(layer(n, iterations).attend(q, k, v, mask), mask)
        errors[iterations] = (out - want).abs().max().item()
    assert 1e-2 < errors[6] < 5e-2
    assert errors[6] > errors[8] > errors[10] > errors[12] > 1e6 * errors[15]
    assert errors[15] < 1e-12 and errors[25] < 1e-12


# ---------------------------------------------------------------- the algorithm, landmarks < tokens

def dense_nystrom(q, k, v, m, mask, conv_weight=None):
    """Nystromformer written out per element and head from its real tokens: segment means by loops,
    the three softmax kernels, torch.linalg.pinv, and the conv skip as an explicit sum. (B, H, N, D)."""
    b_, h_, n, d = q.shape
    out = torch.zeros_like(q)
    for b in range(b_):
        idx = torch.arange(n) if mask is None else mask[b].nonzero().flatten()
        length = len(idx)
        if length == 0:
            continue
        segments = [[idx[r] for r in range(length) if r * m // length == s] for s in range(m)]
        segments = [s for s in segments if s]  # empty landmarks contribute nothing
        for h in range(h_):
            qq, kk, vv = q[b, h, idx], k[b, h, idx], v[b, h, idx]
            ql = torch.stack([q[b, h, s].mean(0) for s in segments])
            kl = torch.stack([k[b, h, s].mean(0) for s in segments])
            f = torch.softmax(qq @ kl.T / math.sqrt(d), -1)
            a = torch.softmax(ql @ kl.T / math.sqrt(d), -1)
            bk = torch.softmax(ql @ kk.T / math.sqrt(d), -1)
            res = f @ torch.linalg.pinv(a) @ bk @ vv
            out[b, h, idx] = res
        if conv_weight is not None:  # depthwise along the sequence, zero values outside the real tokens
            vm = v[b] if mask is None else v[b] * mask[b][None, :, None]
            ksz = conv_weight.shape[2]
            for h in range(h_):
                for i in range(n):
                    for t in range(ksz):
                        j = i + t - ksz // 2
                        if 0 <= j < n:
                            out[b, h, i] += conv_weight[h, 0, t, 0] * vm[h, j]
    return out


def segment_qkv(n, m, c=4.0, seed=2):
    """Tokens of segment s (of an unpadded length-n element) near c e_s: the landmark kernel A is then
    well-conditioned, so the pseudo-inverse iteration converges to torch.linalg.pinv."""
    g = gen(seed)
    seg = torch.arange(n) * m // n
    basis = torch.eye(D, dtype=torch.float64)[seg % D]
    q, k = (c * basis + 0.5 * torch.randn(B, H, n, D, generator=g, dtype=torch.float64) for _ in range(2))
    return q, k, torch.randn(B, H, n, D, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("n,m", [(24, 4), (23, 5), (16, 16), (10, 3)])
def test_equals_the_dense_reference_with_landmarks(n, m):
    q, k, v = segment_qkv(n, m)
    mask = lengths_mask([n, n - 3, 2], n)
    holes = mask.clone()
    holes[0, 1::4] = False
    for msk in (None, mask, holes):
        out = layer(m, iterations=30).attend(q, k, v, msk)
        want = dense_nystrom(q, k, v, m, msk)
        torch.testing.assert_close(real_rows(out, msk), real_rows(want, msk), rtol=0, atol=1e-9)


def test_conv_skip_equals_a_depthwise_convolution_of_the_real_values():
    n, m = 13, 3
    q, k, v = segment_qkv(n, m)
    mask = lengths_mask([n, 8, 0], n)
    attention = layer(m, iterations=30, conv=5)
    with torch.no_grad():
        attention.conv.weight.copy_(torch.randn(attention.conv.weight.shape, generator=gen(3)))
    for msk in (None, mask):
        out = attention.attend(q, k, v, msk)
        want = dense_nystrom(q, k, v, m, msk, conv_weight=attention.conv.weight.detach())
        torch.testing.assert_close(real_rows(out, msk), real_rows(want, msk), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="odd"):
        layer(m, conv=4)


# ---------------------------------------------------------------- landmarks and padding

def test_segments_split_each_elements_real_tokens():
    mask = torch.tensor([[True] * 10 + [False] * 2,
                         [True, False, True, True, False, True, True, False, False, True, False, False],
                         [True, True] + [False] * 10,
                         [False] * 12])
    weights, valid = nystrom.segment_weights(mask, 4, torch.float64)
    segment = torch.where(mask, weights.argmax(-1), -1)
    assert segment[0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, -1, -1]  # floor(r * 4 / 10)
    assert segment[1].tolist() == [0, -1, 0, 1, -1, 2, 2, -1, -1, 3, -1, -1]  # ranks among the 6 real tokens
    assert segment[2].tolist()[:2] == [0, 2] and valid[2].tolist() == [True, False, True, False]
    assert not valid[3].any() and not weights[3].any()
    assert valid[:2].all()
    torch.testing.assert_close(weights.sum(1)[valid], torch.ones(int(valid.sum()), dtype=torch.float64))
    assert not weights[~mask].any()  # padding is in no landmark


def test_appended_padding_and_junk_change_nothing_and_empty_landmarks_stay_finite():
    n, m = 9, 4
    q, k, v = random_qkv(n, seed=4)
    attention = layer(m, conv=3)
    for length in (9, 5, 3, 1):  # 3 and 1 real tokens: fewer than the landmarks
        qs, ks, vs = (t[:, :, :length] for t in (q, k, v))
        ref = attention.attend(qs, ks, vs, None)
        assert torch.isfinite(ref).all()
        for pad in (1, 6):
            junk = [1e3 * torch.randn(B, H, pad, D, generator=gen(pad), dtype=torch.float64) for _ in range(3)]
            qp, kp, vp = (torch.cat([t, j], 2) for t, j in zip((qs, ks, vs), junk, strict=True))
            out = attention.attend(qp, kp, vp, lengths_mask([length] * B, length + pad))
            assert torch.isfinite(out).all()
            torch.testing.assert_close(out[:, :, :length], ref, rtol=0, atol=1e-12)


def test_element_without_real_tokens_gives_zeros_and_finite_gradients():
    n = 8
    q, k, v = (t.requires_grad_() for t in random_qkv(n, seed=5))
    attention = layer(4, conv=3).train()
    mask = lengths_mask([n, 2, 0], n)
    out = attention.attend(q, k, v, mask)
    assert torch.isfinite(out).all() and not out[2].any()
    out.sum().backward()
    for t in (q, k, v, attention.conv.weight):
        assert torch.isfinite(t.grad).all()


@pytest.mark.slow
def test_gradients_by_finite_differences_with_empty_landmarks():
    n = 6
    q, k, v = (t[:2, :, :, :3].clone().requires_grad_() for t in random_qkv(n, seed=6))  # head dim 3: quick
    mask = lengths_mask([n, 3], n)  # the second element has 3 real tokens for 4 landmarks
    attention = layer(4, iterations=6)
    assert torch.autograd.gradcheck(lambda a, b, c: attention.attend(a, b, c, mask), (q, k, v))


# ---------------------------------------------------------------- the pseudo-inverse

def test_iterative_pinv_per_matrix_with_zero_blocks():
    g = gen(7)
    a = torch.softmax(3 * torch.randn(4, 6, 6, generator=g, dtype=torch.float64) + 4 * torch.eye(6), -1)
    z = nystrom.iterative_pinv(a, 30)
    torch.testing.assert_close(z, torch.linalg.pinv(a), rtol=0, atol=1e-10)
    # each matrix on its own (the initial scale is per matrix, not one maximum over the batch)
    scaled = torch.cat([a[:1] * 1e-3, a[1:]])
    torch.testing.assert_close(nystrom.iterative_pinv(scaled, 6)[1:], nystrom.iterative_pinv(a, 6)[1:],
                               rtol=0, atol=1e-14)
    # zero rows and columns (empty landmarks) stay zero; the valid block is inverted alone
    padded = torch.zeros(4, 8, 8, dtype=torch.float64)
    padded[:, :6, :6] = a
    zp = nystrom.iterative_pinv(padded, 6)
    assert not zp[:, 6:].any() and not zp[:, :, 6:].any()
    torch.testing.assert_close(zp[:, :6, :6], nystrom.iterative_pinv(a, 6), rtol=0, atol=1e-14)
    assert not nystrom.iterative_pinv(torch.zeros(2, 3, 3), 6).any()


# ---------------------------------------------------------------- precision, syncs, metadata

def test_softmaxes_and_pseudo_inverse_run_in_float32_under_autocast(monkeypatch):
    seen = []
    real = nystrom.iterative_pinv
    monkeypatch.setattr(nystrom, "iterative_pinv", lambda a, it: seen.append(a.dtype) or real(a, it))
    attention = build_attention("nystrom", H * D, H, {"landmarks": 4, "conv_kernel": 3}, max_len=MAX_LEN).eval()
    x = torch.randn(2, 20, H * D, generator=gen(8))
    mask = lengths_mask([20, 11], 20)
    with torch.no_grad():
        want = attention(x, mask)
        for kind in ("bf16", "fp16"):
            with precision.autocast(kind, torch.device("cpu")):
                got = attention(x, mask)
            assert got.dtype == (torch.bfloat16 if kind == "bf16" else torch.float16)
            real_ = mask[:, :, None].expand_as(want)
            assert ((got.float() - want)[real_].abs().max() / want[real_].abs().max()) < 0.02
        attention.double()(x.double(), mask)
    assert seen == [torch.float32, torch.float32, torch.float32, torch.float64]


@pytest.mark.parametrize("training", [False, True])
def test_forward_makes_no_host_round_trip(training):
    attention = layer(4, conv=3).train(training)
    q, k, v = random_qkv(14)
    mask = lengths_mask([14, 3, 0], 14)
    with HostRoundTrips() as calls:
        attention.attend(q, k, v, mask)
        attention.attend(q, k, v, None)       # 14 % 4 != 0: the segment weights
        attention.attend(q[:, :, :12], k[:, :, :12], v[:, :, :12], None)  # the reshape-means
    assert calls.seen == []


def test_metadata_config_and_flops():
    entry = VARIANTS.get("nystrom")
    assert entry.cls.published_as({}) == "Nystromformer"  # its own paper's LRA row, not LRA Table 1's
    assert entry.cls.linear_memory and not entry.cls.exact and entry.cls.complexity.startswith("O(N m)")
    attention = build_attention("nystrom", 64, 4, max_len=MAX_LEN)
    cfg = attention.cfg
    assert (cfg.landmarks, cfg.pinv_iterations, cfg.conv_kernel) == (64, 6, 0) and attention.conv is None
    # linear in N once N is well above m (the m^3 pseudo-inverse is a constant)
    attn = [attention.flops(2, n) - attention.projection_flops(2, n) for n in (4096, 8192, 16384)]
    assert attn[2] - attn[1] == 2 * (attn[1] - attn[0])
    with pytest.raises(ValueError, match="landmarks"):
        build_attention("nystrom", 64, 4, {"landmarks": 0}, max_len=MAX_LEN)
