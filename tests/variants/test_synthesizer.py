"""Synthesizer: each kind against its formula written densely here in float64 (there is no
softmax-attention limit case), padding, the fixed and factorised forms, and the length limit."""
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

KINDS = [
    {"kind": "dense"},
    {"kind": "random"},
    {"kind": "random", "fixed": True},
    {"kind": "random", "factorized": True, "factor_rank": 3},
    {"kind": "random", "factorized": True, "factor_rank": 3, "fixed": True},
    {"kind": "random", "dot_product": True},
    {"kind": "dense", "dot_product": True},
]
IDS = [",".join(f"{k}={v}" for k, v in p.items()) for p in KINDS]


def make(params, max_len=24, seed=0, spread=True):
    """The layer in float64; ``spread``: the random logits redrawn at scale 1 (LRA's init makes them
    nearly zero, which would test little)."""
    torch.manual_seed(seed)
    layer = build_attention("synthesizer", DIM, HEADS, params, max_len=max_len).double().eval()
    if spread:
        with torch.no_grad():
            for name in ("random", "random1", "random2"):
                if hasattr(layer, name):
                    t = getattr(layer, name)
                    t.copy_(randn(*t.shape, seed=seed + 100) / (math.sqrt(t.shape[-2]) if name == "random2" else 1))
    return layer


def heads(t):  # (B, N, D) -> (B, H, N, Dh)
    return t.reshape(t.shape[0], t.shape[1], HEADS, DH).transpose(1, 2)


def reference(layer, x, mask=None):
    """softmax(B + M) V per head, from the layer's weights, as loops and explicit sums."""
    b, n, _ = x.shape
    cfg = layer.cfg
    v = heads(x @ layer.v.weight.T + layer.v.bias)
    logits = torch.zeros(b, HEADS, n, n, dtype=torch.float64)
    for h in range(HEADS):
        if cfg.kind == "dense":
            w1 = layer.w1.weight[h * DH:(h + 1) * DH]                # head h's hidden units
            b1 = layer.w1.bias[h * DH:(h + 1) * DH]
            hidden = torch.relu(x @ w1.T + b1)                       # (B, N, Dh)
            full_row = hidden @ layer.w2.weight.T + layer.w2.bias    # (B, N, max_len)
            logits[:, h] = full_row[:, :, :n]
        elif cfg.factorized:
            r = layer.random1[h] @ layer.random2[h]                  # (max_len, max_len)
            logits[:, h] = r[:n, :n]
        else:
            logits[:, h] = layer.random[h, :n, :n]
    if cfg.dot_product:
        wq, wk = layer.qk.weight[:DIM], layer.qk.weight[DIM:]
        q, k = heads(x @ wq.T + layer.qk.bias[:DIM]), heads(x @ wk.T + layer.qk.bias[DIM:])
        logits = logits + torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(DH)
    out = torch.zeros(b, HEADS, n, DH, dtype=torch.float64)
    for bi in range(b):
        real = torch.ones(n, dtype=torch.bool) if mask is None else mask[bi]
        if not real.any():
            continue  # no real key: zeros
        s = logits[bi][..., real]                                    # (H, N, n_real)
        w = torch.exp(s - s.amax(-1, keepdim=True))
        out[bi] = (w / w.sum(-1, keepdim=True)) @ v[bi][:, real]
    return out.transpose(1, 2).reshape(b, n, DIM) @ layer.out.weight.T + layer.out.bias


@pytest.mark.parametrize("params", KINDS, ids=IDS)
def test_layer_equals_its_formula_with_padding(params):
    layer = make(params)
    n = 20
    x = randn(BATCH, n, DIM, seed=2)
    holes = torch.rand(BATCH, n, generator=torch.Generator().manual_seed(3)) > 0.4
    for mask in (None, torch.ones(BATCH, n, dtype=torch.bool), lengths_mask([n, 7, 0], n), holes):
        with torch.no_grad():
            torch.testing.assert_close(layer(x, mask), reference(layer, x, mask), rtol=0, atol=1e-12)
    with torch.no_grad():  # at max_len itself too
        x = randn(2, 24, DIM, seed=4)
        mask = lengths_mask([24, 13], 24)
        torch.testing.assert_close(layer(x, mask), reference(layer, x, mask), rtol=0, atol=1e-12)


@pytest.mark.parametrize("params", KINDS, ids=IDS)
def test_padding_invariance_and_ragged_batches(params):
    """What the registry-wide tests check with the default (dense), for every kind."""
    assert_padding_invariant(make(params, max_len=40), randn(BATCH, 18, DIM, seed=5), junk_seed=6)


@pytest.mark.parametrize("params", KINDS, ids=IDS)
def test_gradients_are_finite_and_fixed_logits_are_not_trained(params):
    layer = make(params).float().train()
    x = randn(BATCH, 16, DIM, dtype=torch.float32).requires_grad_()
    out = layer(x, lengths_mask([16, 5, 0], 16))  # an element without real keys: zeros, no NaN
    out.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()
    names = dict(layer.named_parameters())
    for name, p in names.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    random = {"random", "random1", "random2"}
    if params.get("fixed"):
        buffers = random & set(dict(layer.named_buffers()))
        assert buffers and not random & set(names) and buffers <= set(layer.state_dict())  # saved, never trained
    elif params["kind"] == "random":
        assert random & set(names)
    assert ("qk.weight" in names) == bool(params.get("dot_product"))
    assert not any(n.startswith("qkv") for n in names)      # no query/key projections of its own otherwise


def test_a_batch_element_without_real_keys_gives_zeros_before_the_output_projection():
    layer = make({"kind": "random"})
    with torch.no_grad():
        logits = layer.synthetic_logits(None, 10, torch.float64)
        v = randn(BATCH, HEADS, 10, DH)
        o = layer.weighted_values(logits, v, lengths_mask([10, 0, 2], 10))
    assert torch.equal(o[1], torch.zeros_like(o[1])) and torch.isfinite(o).all()
    torch.testing.assert_close(o[2], torch.softmax(logits[0, :, :, :2], -1) @ v[2, :, :2], rtol=0, atol=1e-12)
    torch.testing.assert_close(o[0], torch.softmax(logits[0], -1) @ v[0], rtol=0, atol=1e-12)


def test_shapes_of_the_weights():
    dense = make({}, max_len=30, spread=False)
    assert tuple(dense.w1.weight.shape) == (DIM, DIM) and tuple(dense.w2.weight.shape) == (30, DH)
    rand = make({"kind": "random"}, max_len=30, spread=False)
    assert tuple(rand.random.shape) == (HEADS, 30, 30)
    bound = math.sqrt(6 / (2 * HEADS * 30))  # LRA's xavier_uniform, the heads counted into the fans
    assert rand.random.abs().max() <= bound and rand.random.abs().max() > bound / 2
    fact = make({"kind": "random", "factorized": True, "factor_rank": 4}, max_len=30, spread=False)
    assert tuple(fact.random1.shape) == (HEADS, 30, 4) and tuple(fact.random2.shape) == (HEADS, 4, 30)
    assert not hasattr(fact, "random") and not hasattr(rand, "w1")


def test_config_defaults_and_bad_values():
    cfg = VARIANTS.make_config("synthesizer", {})
    assert (cfg.kind, cfg.fixed, cfg.factorized, cfg.factor_rank, cfg.dot_product) == ("dense", False, False, 32, False)
    with pytest.raises(ValueError):
        build_attention("synthesizer", DIM, HEADS, {"kind": "sparse"}, max_len=8)
    with pytest.raises(ValueError):
        build_attention("synthesizer", DIM, HEADS, {"kind": "random", "factorized": True, "factor_rank": 0}, max_len=8)


@pytest.mark.parametrize("params", [{}, {"kind": "random"}])
def test_longer_input_than_max_len_is_refused(params):
    layer = make(params, max_len=8)
    with pytest.raises(ValueError, match="9 tokens, but this layer was built for at most 8"):
        layer(randn(1, 9, DIM))
    assert layer(randn(1, 8, DIM)).shape == (1, 8, DIM)
    assert layer(randn(1, 3, DIM)).shape == (1, 3, DIM)


@pytest.mark.parametrize("params", KINDS[1:], ids=IDS[1:])
@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_autocast_stays_close_to_float32(params, kind):
    """The registry-wide precision test covers the default (dense); the other kinds here."""
    torch.manual_seed(0)
    layer = build_attention("synthesizer", 32, 4, params, max_len=64).eval()
    x = randn(2, 40, 32, dtype=torch.float32)
    mask = lengths_mask([40, 31], 40)
    with torch.no_grad():
        want = layer(x, mask)
        with precision.autocast(kind, torch.device("cpu")):
            got = layer(x, mask)
    err = (got.float() - want)[mask].abs().max() / want[mask].abs().max()
    assert torch.isfinite(got).all() and err < {"bf16": 0.05, "fp16": 0.01}[kind]


def test_flops_are_analytic():
    b, n = 2, 50
    base = 2 * 2 * b * n * DIM * DIM + 2 * b * HEADS * n * n * DH  # values, output, weights x values
    assert make({}, max_len=64).flops(b, n) == base + 2 * b * n * DIM * DIM + 2 * b * HEADS * n * n * DH
    assert make({"kind": "random"}, max_len=64).flops(b, n) == base
    assert make({"kind": "random", "factorized": True, "factor_rank": 5}, max_len=64).flops(b, n) == \
        base + 2 * HEADS * n * n * 5
    assert make({"kind": "random", "dot_product": True}, max_len=64).flops(b, n) == \
        base + 2 * b * n * DIM * 2 * DIM + 2 * b * HEADS * n * n * DH


def test_metadata():
    cls = VARIANTS.get("synthesizer").cls
    assert not cls.linear_memory and not cls.exact and cls.complexity == "O(N^2)"
    assert cls.published_as({"kind": "random", "dot_product": True}) == "Synthesizer"  # as LRA ran it
    assert cls.published_as({}) is None and cls.published_as({"kind": "random"}) is None  # no published row
