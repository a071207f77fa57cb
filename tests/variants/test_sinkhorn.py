"""Sparse Sinkhorn attention: the one-block limit against dense softmax attention, several blocks
against a dense float64 re-implementation written here (loops, probability-domain Sinkhorn on the
real blocks only), the sorting matrix, noise in training and none in eval, and padding."""
from __future__ import annotations

import math

import pytest
import torch

from attnbench.harness.conformance.checks import lengths_mask
from attnbench.variants import VARIANTS, build_attention
from attnbench.variants.sinkhorn import SinkhornConfig

#: the longest input these layers are built for (the sorting network has ceil(MAX_LEN / b) outputs)
MAX_LEN = 64

B, H, D = 3, 2, 4


def qkv(n, seed=0, batch=B, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, H, n, D, generator=g, dtype=dtype) for _ in range(3)]



def sinkhorn(max_len=MAX_LEN, **params):
    torch.manual_seed(0)
    return build_attention("sinkhorn", H * D, H, params, max_len=max_len).double().eval()


def dense_softmax(q, k, v, allowed):
    """softmax(q k^T / sqrt(d)) v over the allowed keys, by hand; zeros for a row without keys.
    q (m, d), k and v (j, d), allowed (j,) bool."""
    if not allowed.any():
        return torch.zeros(q.shape[0], v.shape[1], dtype=q.dtype)
    s = (q @ k[allowed].T) / math.sqrt(q.shape[1])
    w = torch.exp(s - s.max(dim=1, keepdim=True).values)
    return (w / w.sum(dim=1, keepdim=True)) @ v[allowed]


def full_reference(q, k, v, mask):
    """Dense softmax attention of every query over the real keys, (B, H, N, D)."""
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            out[b, h] = dense_softmax(q[b, h], k[b, h], v[b, h], mask[b])
    return out


def sorting_reference(layer, k_blocks, nbr):
    """P (H, nbr, nbr) for one element's real blocks: k_blocks (nb, b, H, D) with padded keys zeroed;
    block sums -> s W / temperature -> Sinkhorn in the probability domain (rows, then columns)."""
    w = layer.sort_weight.detach().double()
    out = []
    for h in range(H):
        summary = k_blocks[:nbr, :, h].sum(dim=1)  # (nbr, D)
        logits = summary @ w[:, :nbr] / layer.cfg.temperature
        a = torch.exp(logits - logits.max())
        for _ in range(layer.cfg.sinkhorn_iterations):
            a = a / a.sum(dim=1, keepdim=True)
            a = a / a.sum(dim=0, keepdim=True)
        out.append(a)
    return torch.stack(out)


def sinkhorn_reference(layer, q, k, v, mask):
    """The variant's formula (eval mode) written out per element, head and query block, float64.

    Query block i attends (1) its own block's real keys and (2) sorted slot t = sum_j P[i, j] m_j[t] k_j[t]
    (valid when sum_j P[i, j] m_j[t] > 0), two softmaxes averaged over the halves that have a key.
    Rows past the element's real blocks are left zero (not compared)."""
    n = q.shape[2]
    blk = layer.block(n)
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        real = torch.nonzero(mask[b]).flatten()
        length = int(real.max()) + 1 if len(real) else 0
        nbr = -(-length // blk)
        if nbr == 0:
            continue
        span = nbr * blk
        m = torch.zeros(span, dtype=torch.bool)
        m[:min(span, n)] = mask[b, :span]
        qb, kb, vb = (torch.zeros(span, H, D, dtype=q.dtype) for _ in range(3))
        qb[:min(span, n)] = q[b, :, :span].transpose(0, 1)
        kb[:min(span, n)] = k[b, :, :span].transpose(0, 1) * mask[b, :span, None, None]
        vb[:min(span, n)] = v[b, :, :span].transpose(0, 1) * mask[b, :span, None, None]
        kb, vb, qb = kb.view(nbr, blk, H, D), vb.view(nbr, blk, H, D), qb.view(nbr, blk, H, D)
        mb = m.view(nbr, blk)
        perm = sorting_reference(layer, kb, nbr)
        for h in range(H):
            for i in range(nbr):
                sk = sum(perm[h, i, j] * kb[j, :, h] for j in range(nbr))
                sv = sum(perm[h, i, j] * vb[j, :, h] for j in range(nbr))
                mass = sum(perm[h, i, j] * mb[j].double() for j in range(nbr))
                halves = [dense_softmax(qb[i, :, h], kb[i, :, h], vb[i, :, h], mb[i]),
                          dense_softmax(qb[i, :, h], sk, sv, mass > 0)]
                count = int(mb[i].any()) + int((mass > 0).any())
                rows = (halves[0] + halves[1]) / max(count, 1)
                lo, hi = i * blk, min((i + 1) * blk, n)
                out[b, h, lo:hi] = rows[:hi - lo]
    return out


def real_block_rows(t, mask, blk):
    """t (B, H, N, D) at the rows inside each element's real blocks (zeros elsewhere)."""
    n = mask.shape[1]
    pos = torch.arange(1, n + 1)
    length = (mask * pos).amax(dim=1)
    inside = torch.arange(n)[None, :] < (-(-length // blk) * blk)[:, None]
    return torch.where(inside[:, None, :, None], t, 0.0)


# ---------------------------------------------------------------- the one-block limit

@pytest.mark.parametrize("n,block_size", [(16, 16), (13, 64), (1, 4), (24, 24)])
@pytest.mark.parametrize("training", [False, True])
def test_one_block_equals_full_softmax_attention(n, block_size, training):
    """block_size >= N: P = [[1]] exactly, the sorted block is the block itself, both halves are full
    attention and so is their mean; in training too (the noise cannot move a 1 x 1 permutation)."""
    layer = sinkhorn(block_size=block_size).train(training)
    q, k, v = qkv(n)
    for mask in (None, lengths_mask([n, max(1, n - 5), 1], n)):
        got = layer.attend(q, k, v, mask)
        want = full_reference(q, k, v, torch.ones(B, n, dtype=torch.bool) if mask is None else mask)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_one_real_block_among_padding_blocks_is_full_attention():
    """Several blocks, but an element whose real tokens fit in the first one: its 1 x 1 real sorting
    matrix is exactly 1, so it gets full attention over its real keys."""
    layer = sinkhorn(block_size=8)
    n = 20
    q, k, v = qkv(n, seed=4)
    mask = lengths_mask([8, 5, 1], n)
    got = layer.attend(q, k, v, mask)
    want = full_reference(q, k, v, mask)
    real = mask[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[real], want[real], rtol=0, atol=1e-12)


# ---------------------------------------------------------------- several blocks

@pytest.mark.parametrize("n,block_size", [(24, 4), (22, 4), (30, 8), (9, 2)])
def test_several_blocks_equal_the_dense_reimplementation(n, block_size):
    layer = sinkhorn(block_size=block_size)
    q, k, v = qkv(n, seed=n)
    holes = torch.rand(B, n, generator=torch.Generator().manual_seed(7)) > 0.3
    holes[:, 0] = True
    masks = {"none": None, "ragged": lengths_mask([n, n - 3, max(1, n // 2 - 1)], n), "holes": holes}
    for name, mask in masks.items():
        got = layer.attend(q, k, v, mask)
        full = torch.ones(B, n, dtype=torch.bool) if mask is None else mask
        want = sinkhorn_reference(layer, q, k, v, full)
        torch.testing.assert_close(real_block_rows(got, full, layer.block(n)), want, rtol=0, atol=1e-12,
                                   msg=lambda m, name=name: f"mask {name}: {m}")


def test_several_blocks_differ_from_full_attention_and_use_the_sort_network():
    """Not a disguised full attention: the output depends on the sorting network's weights."""
    layer = sinkhorn(block_size=4)
    q, k, v = qkv(24, seed=2)
    got = layer.attend(q, k, v, None)
    assert (got - full_reference(q, k, v, torch.ones(B, 24, dtype=torch.bool))).abs().max() > 1e-3
    with torch.no_grad():
        layer.sort_weight.mul_(3.0)
    assert (layer.attend(q, k, v, None) - got).abs().max() > 1e-6


def test_attend_in_float64_and_float32_agree():
    layer = sinkhorn(block_size=4)
    q, k, v = qkv(22, seed=5)
    mask = lengths_mask([22, 13, 3], 22)
    want = layer.attend(q, k, v, mask)
    got = layer.float().attend(q.float(), k.float(), v.float(), mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- the sorting matrix

def _permutation(layer, k, mask):
    blk = layer.block(k.shape[2])
    k = k.masked_fill(~mask[:, None, :, None], 0.0)
    nb = k.shape[2] // blk
    return layer.soft_permutation(k.view(B, H, nb, blk, D), mask.view(B, nb, blk))


@pytest.mark.parametrize("iterations,row_tol", [(50, 1e-12), (8, 2e-3)])
def test_sorting_matrix_is_doubly_stochastic_and_padding_blocks_are_isolated(iterations, row_tol):
    layer = sinkhorn(block_size=4, sinkhorn_iterations=iterations)
    n = 28  # 7 blocks
    _, k, _ = qkv(n, seed=9)
    mask = lengths_mask([28, 18, 3], n)  # 7 real blocks; 5 (the last partly padded); 1
    perm = _permutation(layer, k, mask)
    assert perm.shape == (B, H, 7, 7) and (perm >= 0).all()
    eye = torch.eye(7, dtype=perm.dtype)
    for b, nbr in enumerate([7, 5, 1]):
        real, pad = perm[b, :, :nbr, :nbr], perm[b, :, nbr:, nbr:]
        # the last step normalises the columns: exact; the rows converge with the iterations
        torch.testing.assert_close(real.sum(dim=-2), torch.ones(H, nbr, dtype=perm.dtype), rtol=0, atol=1e-12)
        torch.testing.assert_close(real.sum(dim=-1), torch.ones(H, nbr, dtype=perm.dtype), rtol=0, atol=row_tol)
        assert torch.equal(pad, eye[nbr:, nbr:].expand_as(pad))
        assert (perm[b, :, :nbr, nbr:] == 0).all() and (perm[b, :, nbr:, :nbr] == 0).all()
    assert torch.equal(perm[2, :, 0, 0], torch.ones(H, dtype=perm.dtype))  # one real block: exactly 1
    # the real x real block is the Sinkhorn of the real blocks alone (the reference, probability domain)
    k_real = k[1:2, :, :20].masked_fill(~mask[1:2, None, :20, None], 0.0)
    want = sorting_reference(layer, k_real[0].view(H, 5, 4, D).permute(1, 2, 0, 3), 5)
    torch.testing.assert_close(perm[1, :, :5, :5], want, rtol=0, atol=1e-12)


def test_sorting_matrix_ignores_appended_padding():
    layer = sinkhorn(block_size=4)
    _, k, _ = qkv(20, seed=11)
    mask = lengths_mask([20, 14, 6], 20)
    ref = _permutation(layer, k, mask)
    for extra in (1, 4, 12):
        junk = torch.randn(B, H, extra, D, dtype=torch.float64, generator=torch.Generator().manual_seed(extra)) * 100
        kp = torch.cat([k, junk], dim=2)
        mp = torch.cat([mask, torch.zeros(B, extra, dtype=torch.bool)], dim=1)
        kp = torch.cat([kp, torch.zeros(B, H, (-kp.shape[2]) % 4, D, dtype=kp.dtype)], dim=2)
        mp = torch.cat([mp, torch.zeros(B, (-mp.shape[1]) % 4, dtype=torch.bool)], dim=1)
        perm = _permutation(layer, kp, mp)
        torch.testing.assert_close(perm[:, :, :5, :5], ref, rtol=0, atol=1e-14)


# ---------------------------------------------------------------- randomness

def test_training_draws_fresh_noise_and_eval_is_deterministic():
    layer = sinkhorn(block_size=4)
    x = torch.randn(B, 24, H * D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mask = lengths_mask([24, 15, 6], 24)
    with torch.no_grad():
        layer.train()
        torch.manual_seed(1)
        a = layer(x, mask)
        b = layer(x, mask)
        torch.manual_seed(1)
        a_again = layer(x, mask)
        layer.eval()
        state = torch.get_rng_state()
        e1 = layer(x, mask)
        e2 = layer(x, mask)
        assert torch.equal(torch.get_rng_state(), state), "eval mode drew from the global generator"
    assert (a - b).abs().max() > 1e-6, "training should draw fresh Gumbel noise each forward"
    torch.testing.assert_close(a, a_again, rtol=0, atol=0)  # from torch's global generator
    assert torch.equal(e1, e2)
    assert (a - e1).abs().max() > 1e-6


def test_eval_has_no_noise():
    """Eval mode is the noise-free Sinkhorn of s W / temperature (the reference above, without noise)."""
    layer = sinkhorn(block_size=4, temperature=0.3)
    _, k, _ = qkv(16, seed=6)
    mask = torch.ones(B, 16, dtype=torch.bool)
    perm = _permutation(layer, k, mask)
    want = sorting_reference(layer, k[0].view(H, 4, 4, D).permute(1, 2, 0, 3), 4)
    torch.testing.assert_close(perm[0], want, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- padding

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padding_invariance_with_several_blocks(dtype):
    """Appended padding (partial last block, whole padding blocks) leaves the real outputs unchanged,
    whatever sits in the padding."""
    layer = sinkhorn(block_size=4).to(dtype)
    n = 21  # 6 blocks, the last partly padded
    x = torch.randn(B, n, H * D, dtype=dtype, generator=torch.Generator().manual_seed(0))
    mask = lengths_mask([21, 10, 4], n)
    ref = layer(x, mask)
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    for pad in (1, 3, 4, 11, 40):
        if n + pad > MAX_LEN:
            continue
        junk = torch.randn(B, pad, H * D, dtype=dtype, generator=torch.Generator().manual_seed(pad)) * 100
        out = layer(torch.cat([x, junk], 1), torch.cat([mask, torch.zeros(B, pad, dtype=torch.bool)], 1))
        torch.testing.assert_close(out[:, :n][mask], ref[mask], rtol=0, atol=atol)
    for b, length in enumerate([21, 10, 4]):  # each element alone, unpadded
        alone = layer(x[b:b + 1, :length])
        torch.testing.assert_close(alone, ref[b:b + 1, :length], rtol=0, atol=atol)


def test_padded_keys_get_no_weight():
    """Changing the keys and values at masked positions changes no real output (holes included)."""
    layer = sinkhorn(block_size=4)
    q, k, v = qkv(22, seed=8)
    mask = torch.rand(B, 22, generator=torch.Generator().manual_seed(1)) > 0.35
    mask[:, 0] = True
    ref = layer.attend(q, k, v, mask)
    k2 = torch.where(mask[:, None, :, None], k, 1e3)
    v2 = torch.where(mask[:, None, :, None], v, -1e3)
    got = layer.attend(q, k2, v2, mask)
    real = mask[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[real], ref[real], rtol=0, atol=1e-12)


def test_element_without_real_tokens_gives_zeros_and_finite_gradients():
    layer = sinkhorn(block_size=4).float().train()
    q, k, v = (t.float().requires_grad_() for t in qkv(20, seed=12))
    mask = lengths_mask([20, 0, 7], 20)
    out = layer.attend(q, k, v, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    for t in (q, k, v, layer.sort_weight):
        assert torch.isfinite(t.grad).all()
    assert layer.sort_weight.grad.abs().sum() > 0


def test_gradients_match_finite_differences_with_padding():
    layer = sinkhorn(block_size=2, sinkhorn_iterations=4)
    q, k, v = (t.requires_grad_() for t in qkv(7, seed=13, batch=2))
    mask = lengths_mask([7, 4], 7)
    assert torch.autograd.gradcheck(lambda q, k, v: layer.attend(q, k, v, mask), (q, k, v), fast_mode=True)


# ---------------------------------------------------------------- limits, config, cost

def test_longer_input_than_built_for_is_refused():
    layer = build_attention("sinkhorn", H * D, H, {"block_size": 4}, max_len=8)
    assert layer.sort_weight.shape == (D, 2)
    layer(torch.randn(1, 8, H * D))
    layer(torch.randn(1, 3, H * D))
    with pytest.raises(ValueError, match="built for at most 8"):
        layer(torch.randn(1, 9, H * D))


def test_config_defaults_and_bounds():
    cfg = SinkhornConfig()
    assert (cfg.block_size, cfg.sinkhorn_iterations, cfg.temperature) == (64, 8, 0.75)
    for bad in ({"block_size": 0}, {"sinkhorn_iterations": 0}, {"temperature": 0.0}):
        with pytest.raises(ValueError):
            build_attention("sinkhorn", H * D, H, bad, max_len=MAX_LEN)


def test_metadata_and_flops():
    entry = VARIANTS.get("sinkhorn")
    assert entry.cls.published_as({}) == "Sinkhorn Trans."
    assert entry.cls.linear_memory and not entry.cls.exact
    layer = build_attention("sinkhorn", 64, 4, {"block_size": 64}, max_len=8192)
    proj = layer.projection_flops(1, 4096)
    attn = layer.flops(1, 4096) - proj
    # the two halves' attention alone: 2 x (QK^T + PV) over 64 keys per query, per head
    halves = 2 * 2 * 2 * 4 * 4096 * 64 * 16
    assert halves < attn < 3 * halves
    assert layer.flops(1, 8192) > layer.flops(1, 4096) > layer.flops(1, 2048)
    assert layer.flops(2, 4096) == 2 * layer.flops(1, 4096)
