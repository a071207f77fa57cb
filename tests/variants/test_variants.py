"""Every registered attention variant: the conformance checks; exact ones against the reference.

Tests iterate over the registry, so a new variant file is tested without editing this file.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnbench.harness.conformance.checks import FAST_CHECKS, lengths_mask, run_checks
from attnbench.harness.core.registry import UnknownNameError
from attnbench.variants import VARIANTS, Attention, build_attention
from attnbench.variants.lib.reference import explicit_softmax_attention

#: the longest input these tests build layers for (every input here is shorter)
MAX_LEN = 4096

ENTRIES = list(VARIANTS)
IDS = [e.name for e in ENTRIES]
EXACT = [e for e in ENTRIES if e.cls.exact]
PADDABLE = [e for e in ENTRIES if e.cls.supports_padding_mask]

DIM, HEADS, BATCH, N = 16, 2, 3, 24


def make(entry, dtype=torch.float64, seed=0) -> Attention:
    """The variant with its test-size hyper-parameters, so several blocks/chunks are exercised."""
    torch.manual_seed(seed)
    return build_attention(entry.name, DIM, HEADS, entry.cls.small_params, max_len=MAX_LEN).to(dtype).eval()


def randn(*shape, seed=1, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)



def test_registry_is_not_empty_and_has_full():
    assert "full" in IDS
    assert any(e.cls.exact for e in ENTRIES)


@pytest.mark.parametrize("check", FAST_CHECKS)
@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_conformance(entry, check):
    """The checks `attnbench check-variant` runs on a user's class (harness/conformance/checks.py):
    interface, construction errors, shapes and dtypes, gradients, padding invariance, padding per
    element, eval determinism, flops, max_len. (Linear memory: tests/harness/measure/test_memory_scaling.py.)"""
    (result,) = run_checks(entry.name, [check])
    if result.status == "skip":
        pytest.skip(result.detail)
    assert result.status == "pass", f"{entry.name}, {check}: {result.detail}"


# ---------------------------------------------------------------- the reference, anchored by hand

def test_explicit_reference_hand_computed():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)[None, None]
    k = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)[None, None]
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)[None, None]
    # row 0: scores (1, 1)/sqrt(2) -> equal weights; row 1: scores (0, 1)/sqrt(2)
    e0, e1 = math.exp(0.0), math.exp(1.0 / math.sqrt(2.0))
    p = e1 / (e0 + e1)
    expected = torch.tensor([[2.0, 3.0], [(1 - p) * 1 + p * 3, (1 - p) * 2 + p * 4]], dtype=torch.float64)
    out = explicit_softmax_attention(q, k, v)
    assert out.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-12)
    # key 1 masked: every query sees only value 0
    out = explicit_softmax_attention(q, k, v, key_padding_mask=torch.tensor([[True, False]]))
    torch.testing.assert_close(out[0, 0], torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    # causal mask: query 0 sees key 0 only, query 1 sees both
    causal = torch.tensor([[True, False], [True, True]])
    out = explicit_softmax_attention(q, k, v, attn_mask=causal)
    torch.testing.assert_close(out[0, 0], torch.stack([v[0, 0, 0], expected[1]]), rtol=0, atol=1e-12)
    # no key at all: zeros, not NaN
    out = explicit_softmax_attention(q, k, v, key_padding_mask=torch.tensor([[False, False]]))
    assert torch.equal(out, torch.zeros_like(out))


# ---------------------------------------------------------------- exact variants

def _qkv(n=N, seed=3):
    shape = (BATCH, HEADS, n, DIM // HEADS)
    return randn(*shape, seed=seed), randn(*shape, seed=seed + 1), randn(*shape, seed=seed + 2)


@pytest.mark.parametrize("entry", EXACT, ids=[e.name for e in EXACT])
def test_exact_attend_equals_reference(entry):
    layer = make(entry)
    q, k, v = _qkv()
    masks = {
        "none": None,
        "all-real": torch.ones(BATCH, N, dtype=torch.bool),
        "ragged": lengths_mask([N, 7, 1], N),
        "holes": torch.rand(BATCH, N, generator=torch.Generator().manual_seed(5)) > 0.4,
    }
    masks["holes"][:, 0] = True
    for name, mask in masks.items():
        got = layer.attend(q, k, v, mask)
        want = explicit_softmax_attention(q, k, v, key_padding_mask=mask)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10, msg=lambda m, name=name: f"mask {name}: {m}")


@pytest.mark.parametrize("entry", EXACT, ids=[e.name for e in EXACT])
def test_exact_attend_fully_masked_row_is_zero(entry):
    """A batch element without any real key gives zeros, as the reference defines (not NaN)."""
    layer = make(entry)
    q, k, v = _qkv()
    mask = lengths_mask([N, 0, 4], N)
    got = layer.attend(q, k, v, mask)
    torch.testing.assert_close(got, explicit_softmax_attention(q, k, v, key_padding_mask=mask), rtol=0, atol=1e-10)


@pytest.mark.parametrize("entry", EXACT, ids=[e.name for e in EXACT])
def test_exact_module_forward_equals_manual(entry):
    layer = make(entry)
    if not (isinstance(getattr(layer, "qkv", None), nn.Linear) and isinstance(getattr(layer, "out", None), nn.Linear)):
        pytest.skip(f"{entry.name} does not use the standard fused qkv/out projections")
    x = randn(BATCH, N, DIM, seed=7)
    mask = lengths_mask([N, 8, 3], N)
    dh = DIM // HEADS
    W, b = layer.qkv.weight, layer.qkv.bias

    def heads(t):  # (B, N, D) -> (B, H, N, Dh), head h = features [h*Dh, (h+1)*Dh)
        return t.reshape(BATCH, N, HEADS, dh).transpose(1, 2)

    with torch.no_grad():
        q = heads(x @ W[:DIM].T + b[:DIM])
        k = heads(x @ W[DIM:2 * DIM].T + b[DIM:2 * DIM])
        v = heads(x @ W[2 * DIM:].T + b[2 * DIM:])
        for m in (None, mask):
            o = explicit_softmax_attention(q, k, v, key_padding_mask=m)
            manual = o.transpose(1, 2).reshape(BATCH, N, DIM) @ layer.out.weight.T + layer.out.bias
            torch.testing.assert_close(layer(x, m), manual, rtol=0, atol=1e-10)

        # and against torch's own multi-head attention with the same weights
        mha = nn.MultiheadAttention(DIM, HEADS, batch_first=True, dtype=torch.float64).eval()
        mha.in_proj_weight.copy_(W)
        mha.in_proj_bias.copy_(b)
        mha.out_proj.weight.copy_(layer.out.weight)
        mha.out_proj.bias.copy_(layer.out.bias)
        want, _ = mha(x, x, x, key_padding_mask=~mask, need_weights=False)
        torch.testing.assert_close(layer(x, mask), want, rtol=0, atol=1e-10)


# ---------------------------------------------------------------- construction errors

def test_unknown_variant_lists_known_names():
    with pytest.raises(UnknownNameError) as info:
        build_attention("no-such-attention", DIM, HEADS, max_len=MAX_LEN)
    msg = str(info.value)
    assert "no-such-attention" in msg
    for name in IDS:
        assert name in msg
    assert isinstance(info.value, KeyError)
