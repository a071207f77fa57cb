"""Linformer: its formula against a dense float64 reference written here, the limit case
(E = F = identity is full softmax attention), padding, the options and the length limit."""
from __future__ import annotations

import math

import pytest
import torch

from attnbench.harness.conformance.checks import lengths_mask, randn
from attnbench.harness.run import precision
from attnbench.variants import VARIANTS, build_attention
from conftest import assert_padding_invariant

DIM, HEADS, BATCH = 16, 2, 3
DH = DIM // HEADS


def make(params=None, max_len=32, seed=0):
    torch.manual_seed(seed)
    return build_attention("linformer", DIM, HEADS, params or {}, max_len=max_len).double().eval()


def heads(t):  # (B, N, D) -> (B, H, N, Dh)
    return t.reshape(t.shape[0], t.shape[1], HEADS, DH).transpose(1, 2)


def qkv(layer, x):
    w, b = layer.qkv.weight, layer.qkv.bias
    return [heads(x @ w[i * DIM:(i + 1) * DIM].T + b[i * DIM:(i + 1) * DIM]) for i in range(3)]


def softmax_attention(q, k, v, mask=None):
    """Dense float64 softmax attention over the keys, padded keys (mask False) excluded."""
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    w = torch.exp(scores - scores.amax(-1, keepdim=True))
    return torch.einsum("bhij,bhjd->bhid", w / w.sum(-1, keepdim=True), v)


def output(layer, o):
    b, _, n, _ = o.shape
    return o.transpose(1, 2).reshape(b, n, DIM) @ layer.out.weight.T + layer.out.bias


def linformer_reference(layer, x, mask=None):
    """The layer by its formula, densely: E and F per head (or shared) sliced to N, padded keys
    and values zeroed before the projection, softmax over the k projected rows."""
    n = x.shape[1]
    q, k, v = qkv(layer, x)
    if mask is not None:
        keep = mask[:, None, :, None].to(k.dtype)
        k, v = k * keep, v * keep
    e = layer.proj_e[..., :n]
    f = e if layer.proj_f is None else layer.proj_f[..., :n]
    if e.dim() == 2:
        e, f = e.expand(HEADS, -1, -1), f.expand(HEADS, -1, -1)
    kp, vp = torch.einsum("hkn,bhnd->bhkd", e, k), torch.einsum("hkn,bhnd->bhkd", f, v)
    return output(layer, softmax_attention(q, kp, vp))


# ---------------------------------------------------------------- the limit case

def set_identity(layer, n_real=None):
    """E = F = [I | 0]: the identity on the first n_real positions (k = n_real rows)."""
    k, n = layer.proj_e.shape[-2:]
    eye = torch.zeros(k, n, dtype=torch.float64)
    eye[:, : n_real or k] = torch.eye(k, n_real or k, dtype=torch.float64)
    with torch.no_grad():
        layer.proj_e.copy_(eye.expand_as(layer.proj_e))
        if layer.proj_f is not None:
            layer.proj_f.copy_(eye.expand_as(layer.proj_f))


@pytest.mark.parametrize("params", [{}, {"share_kv": True}, {"per_head": True}])
def test_identity_projection_is_full_softmax_attention(params):
    n = 12
    layer = make({"k": n, **params}, max_len=n)
    set_identity(layer)
    x = randn(BATCH, n, DIM, seed=2)
    with torch.no_grad():
        want = output(layer, softmax_attention(*qkv(layer, x)))
        torch.testing.assert_close(layer(x), want, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer(x, torch.ones(BATCH, n, dtype=torch.bool)), want, rtol=0, atol=1e-12)


def test_identity_on_the_real_positions_is_masked_full_attention():
    """With padding, the limit case is E = F = [I_L | 0] for a sequence of L real tokens padded to
    N: the k = L projected rows are exactly the real keys and values, so the output is full softmax
    attention over the real keys (what a masked full attention gives)."""
    n = 14
    x = randn(BATCH, n, DIM, seed=3) * 3
    for b, length in enumerate((14, 9, 4)):
        layer = make({"k": length}, max_len=n, seed=b)
        set_identity(layer, length)
        mask = lengths_mask([length], n)
        xb = x[b:b + 1]
        with torch.no_grad():
            want = output(layer, softmax_attention(*qkv(layer, xb), mask=mask))
            got = layer(xb, mask)
        torch.testing.assert_close(got[:, :length], want[:, :length], rtol=0, atol=1e-12)


def test_identity_over_padding_gives_the_padded_rows_weight():
    """E = F = I_N with padding is *not* masked full attention: a padded position becomes a zero
    key (score 0) with a zero value, which Linformer does not mask after the projection."""
    n = 10
    layer = make({"k": n}, max_len=n)
    set_identity(layer)
    x = randn(BATCH, n, DIM, seed=4)
    mask = lengths_mask([n, 6, 3], n)
    with torch.no_grad():
        q, k, v = qkv(layer, x)
        keep = mask[:, None, :, None].to(k.dtype)
        want = output(layer, softmax_attention(q, k * keep, v * keep))  # zeroed, but not masked
        masked = output(layer, softmax_attention(q, k, v, mask=mask))
        got = layer(x, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert (got[1:, :3] - masked[1:, :3]).abs().max() > 1e-3


# ---------------------------------------------------------------- the formula, padding, options

OPTIONS = [{"k": 5}, {"k": 5, "share_kv": True}, {"k": 5, "per_head": True},
           {"k": 5, "share_kv": True, "per_head": True}]


@pytest.mark.parametrize("params", OPTIONS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_layer_equals_its_formula_with_padding(params):
    layer = make(params)
    n = 20
    x = randn(BATCH, n, DIM, seed=5)
    holes = torch.rand(BATCH, n, generator=torch.Generator().manual_seed(6)) > 0.3
    for mask in (None, lengths_mask([n, 11, 1], n), holes):
        with torch.no_grad():
            torch.testing.assert_close(layer(x, mask), linformer_reference(layer, x, mask), rtol=0, atol=1e-12)


@pytest.mark.parametrize("params", OPTIONS[1:], ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_padding_invariance_of_the_options(params):
    """What the registry-wide tests check with the defaults, for the other options."""
    assert_padding_invariant(make(params), randn(BATCH, 18, DIM, seed=7), junk_seed=8)


def test_a_batch_element_without_real_keys_gives_zeros():
    layer = make({"k": 6})
    q, k, v = (randn(BATCH, HEADS, 16, DH, seed=s) for s in (9, 10, 11))
    o = layer.attend(q, k, v, lengths_mask([16, 0, 3], 16))
    assert torch.equal(o[1], torch.zeros_like(o[1]))
    assert torch.isfinite(o).all() and o[0].abs().sum() > 0 and o[2].abs().sum() > 0


def test_parameters_follow_the_options():
    layer = make({"k": 6}, max_len=20)
    assert tuple(layer.proj_e.shape) == tuple(layer.proj_f.shape) == (6, 20)
    assert abs(layer.proj_e).max() <= 1 / math.sqrt(6)  # U(-1/sqrt(k), 1/sqrt(k)), lucidrains' init
    shared = make({"k": 6, "share_kv": True}, max_len=20)
    assert shared.proj_f is None and "proj_f" not in dict(shared.named_parameters())
    per_head = make({"k": 6, "per_head": True}, max_len=20)
    assert tuple(per_head.proj_e.shape) == (HEADS, 6, 20)
    assert not torch.equal(per_head.proj_e[0], per_head.proj_e[1])


def test_k_larger_than_max_len_is_reduced_to_it():
    layer = make({}, max_len=17)  # the default k = 256
    assert layer.k == 17 and tuple(layer.proj_e.shape) == (17, 17)
    x = randn(2, 17, DIM)
    assert layer(x, lengths_mask([17, 5], 17)).shape == (2, 17, DIM)
    assert VARIANTS.make_config("linformer", {}).k == 256


def test_longer_input_than_max_len_is_refused():
    layer = make({"k": 4}, max_len=8)
    with pytest.raises(ValueError, match="9 tokens, but this layer was built for at most 8"):
        layer(randn(1, 9, DIM))
    with pytest.raises(ValueError, match="built for at most 8"):
        layer.attend(*(randn(1, HEADS, 9, DH, seed=s) for s in (1, 2, 3)), None)
    assert layer(randn(1, 8, DIM)).shape == (1, 8, DIM)  # max_len itself, and shorter, are fine
    assert layer(randn(1, 3, DIM)).shape == (1, 3, DIM)


def test_gradients_reach_e_and_f_only_on_the_real_columns():
    layer = make({"k": 4}, max_len=16).float().train()
    x = randn(2, 12, DIM, dtype=torch.float32)
    mask = lengths_mask([12, 7], 12)
    layer(x, mask).pow(2).sum().backward()
    for p in (layer.proj_e, layer.proj_f):
        assert torch.isfinite(p.grad).all()
        assert p.grad[:, :12].abs().sum() > 0 and torch.equal(p.grad[:, 12:], torch.zeros_like(p.grad[:, 12:]))


@pytest.mark.parametrize("params", [{"k": 6}, {"k": 6, "per_head": True, "share_kv": True}])
def test_bf16_autocast_stays_close_to_float32(params):
    torch.manual_seed(0)
    layer = build_attention("linformer", 32, 4, params, max_len=64).eval()
    x = randn(2, 48, 32, dtype=torch.float32)
    mask = lengths_mask([48, 30], 48)
    with torch.no_grad():
        want = layer(x, mask)
        with precision.autocast("bf16", torch.device("cpu")):
            got = layer(x, mask)
    err = (got.float() - want)[mask].abs().max() / want[mask].abs().max()
    assert torch.isfinite(got).all() and err < 0.05


def test_flops_are_analytic():
    layer = make({"k": 8}, max_len=4096)
    b, n = 2, 100
    proj = 2 * b * n * 4 * DIM * DIM
    assert layer.flops(b, n) == proj + 2 * 2 * b * HEADS * 8 * n * DH + 2 * 2 * b * HEADS * n * 8 * DH
    assert make({"k": 8}, max_len=4).flops(b, n) < layer.flops(b, n)  # k reduced to max_len = 4


def test_metadata():
    cls = VARIANTS.get("linformer").cls
    assert cls.linear_memory and not cls.exact and cls.complexity == "O(N k)"
    assert cls.published_as({}) == "Linformer"
