"""``sparse_fixed``: Sparse Transformer's fixed pattern as LRA's code ran it (issue 30, item 3), against a dense
float64 re-implementation of LRA's ``SparseAttention`` written here from its code
(google-research/long-range-arena, lra_benchmarks/models/sparse_transformer/sparse_attention.py):
``_build_mask``'s Fixed1 and Fixed2 (:71-95, causal), ``build_mask``'s union (:63-68), the CLS row and
column (``use_cls_token``, :185-191), the padding mask on queries and keys and its -1e10 bias, softmax
attention (flax's ``dot_product_attention``).

The layer is causal, unlike every other variant: the tests below say what that changes (a token's output
depends on no later token) and what it does not (the registry's conventions, padding invariance included).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from attnbench.harness.conformance.checks import FAST_CHECKS, run_checks
from attnbench.variants import VARIANTS, build_attention

H, D = 2, 4


def layer(dropout=0.0, **params):
    torch.manual_seed(0)
    return build_attention("sparse_fixed", H * D, H, params, max_len=4096, dropout=dropout).double().eval()


def qkv(b, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, H, n, D, generator=g, dtype=torch.float64) for _ in range(3)]


def masks(n):
    m = torch.ones(3, n, dtype=torch.bool)
    m[1, n - 7:] = False  # padding
    m[2, 3:6] = False  # masked pixels among the real tokens
    m[2, n - 2:] = False
    return m


# ---------------------------------------------------------------- LRA's code, densely

def lra_build_mask(n, block_size, c):
    """``build_mask(n, [Fixed1Pattern(block_size), Fixed2Pattern(block_size, c)])``, transcribed: (n, n) bool."""
    r = np.arange(n)
    q = r[:, np.newaxis]
    k = r[np.newaxis, :]
    lower_triangular = k <= q
    fixed1 = np.floor_divide(q, block_size) == np.floor_divide(k, block_size)
    remainder = np.remainder(k, block_size)
    fixed2 = np.logical_or(remainder == 0, remainder >= block_size - c)
    return np.logical_or(np.logical_and(lower_triangular, fixed1), np.logical_and(lower_triangular, fixed2))


def lra_sparse_attention(q, k, v, mask, block_size, c, use_cls_token, causal=True):
    """LRA's SparseAttention after its projections, in float64: q, k, v (B, H, N, D), mask (B, N) bool
    (``inputs > 0``, the CLS's copied). ``causal=False`` drops ``lower_triangular`` (not LRA's: the layer's
    bidirectional option)."""
    n = q.shape[2]
    size = n - 1 if use_cls_token else n
    if causal:
        sparse = lra_build_mask(size, block_size, c)
    else:  # the same patterns without their lower triangle
        r = np.arange(size)
        qq, kk = r[:, None], r[None, :]
        rem = np.remainder(kk, block_size)
        sparse = (qq // block_size == kk // block_size) | (rem == 0) | (rem >= block_size - c)
    if use_cls_token:  # jnp.pad(sparse_mask, [[1, 0], [1, 0]], constant_values=1.0)
        sparse = np.pad(sparse, ((1, 0), (1, 0)), constant_values=True)
    allowed = torch.from_numpy(sparse)[None, None] & mask[:, None, :, None] & mask[:, None, None, :]
    bias = torch.where(allowed, 0.0, -1e10).to(q.dtype)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
    return torch.softmax(logits, -1) @ v


# ---------------------------------------------------------------- the reference against the layer

def real_rows(t, mask):
    return t[mask[:, None, :, None].expand_as(t)]


@pytest.mark.parametrize("block_size,c,n", [(5, 2, 23), (4, 1, 24), (50, 10, 161)])
@pytest.mark.parametrize("first_global", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_equals_lras_sparse_attention_forward_and_backward(block_size, c, n, first_global, causal):
    """Real queries' outputs and every gradient through them. A masked query's row differs by design: LRA
    gives it -1e10 on every key (in float32: equal weights on all keys, padding included), here it attends the
    real keys of its pattern (the registry's convention for masked queries)."""
    lyr = layer(block_size=block_size, summary=c, first_global=first_global, causal=causal)
    q, k, v = qkv(3, n, seed=block_size + n)
    mask = masks(n)
    qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
    got = lyr.attend(qs, ks, vs, mask)
    qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
    want = lra_sparse_attention(qr, kr, vr, mask, block_size, c, first_global, causal)
    torch.testing.assert_close(real_rows(got, mask), real_rows(want, mask), rtol=0, atol=1e-10)
    up = torch.randn(got.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    up = up * mask[:, None, :, None]  # masked queries' rows reach no loss
    for a, b in zip(torch.autograd.grad((got * up).sum(), (qs, ks, vs)),
                    torch.autograd.grad((want * up).sum(), (qr, kr, vr)), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_lras_pattern_by_hand():
    """Blocks of 4, c = 1 (each block's first and last position are its summary), causal, CLS at position 0:
    the pattern is LRA's on positions 1..8, shifted by one, with row and column 0 all allowed."""
    want = torch.tensor([
        [1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 1, 0, 0, 0],  # block 1 (positions 5-8): its own so far, and block 0's 1 and 4
        [1, 1, 0, 0, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(layer(block_size=4, summary=1).pattern(9), want)
    assert torch.equal(layer(block_size=4, summary=1, first_global=False).pattern(8), want[1:, 1:])


def test_lras_default_is_blocks_of_50_with_10_summary_positions():
    lyr = build_attention("sparse_fixed", 8, 2, {}, max_len=301)
    assert (lyr.cfg.block_size, lyr.cfg.summary, lyr.cfg.causal, lyr.cfg.first_global) == (50, 10, True, True)
    want = torch.from_numpy(np.pad(lra_build_mask(300, 50, 10), ((1, 0), (1, 0)), constant_values=True))
    assert torch.equal(lyr.pattern(301), want)
    assert VARIANTS.get("sparse_fixed").cls.published_as({}) == "Sparse Trans."


# ---------------------------------------------------------------- causal: what it changes, what it keeps

def test_a_token_depends_on_no_later_token():
    """Unlike every other variant: changing tokens 12.. leaves outputs 1..11 as they were; position 0 (global)
    sees them. Without causality, earlier outputs change."""
    x = torch.randn(2, 20, H * D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = x.clone()
    y[:, 12:] += 1.0
    for causal in (True, False):
        lyr = layer(block_size=4, summary=1, causal=causal)
        a, b = lyr(x), lyr(y)
        assert not torch.equal(a[:, 0], b[:, 0]), "position 0 attends every token"
        assert torch.equal(a[:, 1:12], b[:, 1:12]) == causal


def test_the_causal_layer_keeps_the_registrys_conventions():
    """variants/base.py asks for padding invariance, fixed randomness and float32/float64; causality breaks none
    (appended padding is later than every real token). The registry-wide checks run on it
    (tests/variants/test_variants.py); here they are named for this layer."""
    for result in run_checks("sparse_fixed", FAST_CHECKS):
        assert result.status == "pass", f"{result.check}: {result.detail}"


# ---------------------------------------------------------------- its N x N tensors, counted

class _LiveQuadratic(TorchDispatchMode):
    """Bytes of the new tensors with two dimensions of size ``n`` alive at once (peak) and at the end."""

    def __init__(self, n, exclude):
        super().__init__()
        self.n, self.exclude, self.live, self.peak = n, set(exclude), {}, 0

    def alive(self):
        self.live = {key: (ref, size) for key, (ref, size) in self.live.items() if not ref.expired()}
        return sum(size for _, size in self.live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.alive()
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and sum(size == self.n for size in t.shape) >= 2:
                key = t.untyped_storage().data_ptr()
                if key not in self.live and key not in self.exclude:
                    self.live[key] = (StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes())
        self.peak = max(self.peak, self.alive())
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("training", [False, True])
def test_memory_estimate_is_what_a_forward_allocates(training, padded, dtype):
    n, batch = 40, 3
    lyr = build_attention("sparse_fixed", H * D, H, {"block_size": 8, "summary": 2}, max_len=n).to(dtype)
    lyr.train(training)
    x = torch.randn(batch, n, H * D, dtype=dtype)
    mask = torch.ones(batch, n, dtype=torch.bool)
    if padded:
        mask[0, -5:] = False
    exclude = {t.untyped_storage().data_ptr() for t in (*lyr.parameters(), x, mask)}
    with torch.set_grad_enabled(training):
        mode = _LiveQuadratic(n, exclude)
        with mode:
            out = lyr(x, mask)
        kept = mode.alive()
        del out
    assert lyr.materialized_bytes(batch, n, training=training, padded=padded, dtype=dtype, device="cpu") == mode.peak
    if training:
        assert lyr.saved_bytes(batch, n, padded=padded, dtype=dtype, device="cpu") == kept
