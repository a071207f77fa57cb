"""``lsh`` as LRA's code ran Reformer (issue 30 item 4), its options one by one, and its padded query rows
(issue 32 item 1).

Two references, both float64 and dense, neither calling the layer's chunking code:

- ``lra_reformer``: LRA's ``ReformerAttention`` re-implemented from its code
  (lra_benchmarks/models/reformer/reformer_attention.py): the input padded with 1 to 10 zero tokens to a
  multiple of ``chunk_len`` = 10 (:308-312), one projection for queries and keys and one for values, no
  biases (reformer.py's ReformerBlock passes ``bias=False``); per head, the rotations of ``PRNGKey(0)``
  (:149-150, copied in from the layer, the same for every head), ``hash_vectors``' argmax over [xR, -xR]
  plus the round's offset, one sort of all rounds by (round, bucket, position) (:159-169), the sorted
  rounds cut into ``n_hashes * n_buckets`` chunks (:145, :176-178), ``look_one_back`` with wraparound
  (:23-32, :186-188), logits q.k * sqrt(d) on keys not normalised (:191), no self-mask and no padding
  mask, the rounds combined by their log-sum-exp (:199-212); no output projection (:337-339), the zero
  tokens cut off (:338);
- ``dense_oracle``: the layer's function for any combination of its options, written as one softmax per
  (query, round) over (round, key) pairs with a visibility count per window offset, from the layer's own
  buckets (the hashing is what the LRA reference checks).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnbench.harness.conformance import checks
from attnbench.variants import build_attention
from attnbench.variants.lib import flash_cpu
from attnbench.variants.lib.flash_cpu import MASK_VALUE
from attnbench.variants.lib.lsh_chunks import SELF_OFFSET
from attnbench.variants.lsh import LSHAttention, LSHConfig

DIM, HEADS = 8, 2
#: LRA's Reformer, its defaults (reformer_attention.py:242-245: 1 hash, 10 buckets, chunk_len 10)
LRA = {"n_hashes": 1, "n_buckets": 10, "n_chunks": 10, "wrap": True, "scale": "lra", "self_mask": False,
       "fixed_rotations": True, "out_projection": False, "pad_multiple": 10, "chunks_before": 1, "chunks_after": 0}


def randn(*shape, seed=1, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def make(seed=0, dim=DIM, heads=HEADS, **params) -> LSHAttention:
    torch.manual_seed(seed)
    return build_attention("lsh", dim, heads, params, max_len=64).double().eval()


@pytest.fixture(params=["flash", "explicit"])
def path(request, monkeypatch):
    """Both implementations of the chunk step: the CPU flash kernel's and the explicit score tensors'."""
    if request.param == "explicit":
        monkeypatch.setattr(flash_cpu, "usable", lambda *a: False)
    return request.param


# ---------------------------------------------------------------- LRA's code, re-implemented

def _look_one_back(t: torch.Tensor) -> torch.Tensor:
    """LRA's look_one_back: (chunks, len, ...) -> (chunks, 2 len, ...), chunk i with chunk i - 1 (chunk 0: the last)."""
    return torch.cat([t, torch.cat([t[-1:], t[:-1]], dim=0)], dim=1)


def _lra_single_head(query, value, rot, n_buckets, n_hashes):
    """lsh_attention_single_head (reformer_attention.py:145-215), length_norm=False, causal_mask a no-op."""
    seqlen, qdim = query.shape
    chunk_size = n_hashes * n_buckets  # LRA's name for the number of chunks
    rotated = torch.einsum("tf,fhi->hti", query.detach(), rot)  # hash_vectors (:80-105)
    buckets = torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)  # first index on ties, as jnp.argmax
    buckets = (buckets + n_buckets * torch.arange(n_hashes)[:, None]).reshape(-1)
    ticker = torch.arange(n_hashes * seqlen)
    sticker = torch.sort(seqlen * buckets + ticker % seqlen).indices  # the keys are distinct
    undo_sort = torch.argsort(sticker)
    st = sticker % seqlen
    bq = query[st].reshape(chunk_size, -1, qdim)
    bk = _look_one_back(bq)
    bv = _look_one_back(value[st].reshape(chunk_size, -1, qdim))
    dots = torch.einsum("hie,hje->hij", bq, bk) * qdim ** 0.5
    dots_logsumexp = torch.logsumexp(dots, dim=-1, keepdim=True)
    x = (torch.exp(dots - dots_logsumexp) @ bv).reshape(-1, qdim)
    o = x[undo_sort].reshape(n_hashes, seqlen, qdim)
    logits = dots_logsumexp.reshape(-1)[undo_sort].reshape(n_hashes, seqlen, 1)
    probs = torch.exp(logits - torch.logsumexp(logits, dim=0, keepdim=True))
    return (o * probs).sum(dim=0)


def lra_reformer(x, wq, wv, rot, heads, n_hashes, n_buckets, chunk_len=10):
    """ReformerAttention.apply (reformer_attention.py:221-339) on (B, N, D): weights as torch's Linear
    (out, in), rotations (d, n_hashes, n_buckets / 2)."""
    b, orig_seqlen, dim = x.shape
    extra_len = chunk_len - orig_seqlen % chunk_len
    x = F.pad(x, (0, 0, 0, extra_len))  # zero tokens, before the projections
    qlength, head_dim = x.shape[1], dim // heads
    query = (x @ wq.T).view(b, qlength, heads, head_dim)
    value = (x @ wv.T).view(b, qlength, heads, head_dim)
    out = torch.stack([torch.stack([_lra_single_head(query[i, :, h], value[i, :, h], rot, n_buckets, n_hashes)
                                    for h in range(heads)], dim=1) for i in range(b)])
    return out.reshape(b, qlength, dim)[:, :orig_seqlen]


@pytest.mark.parametrize(("n", "n_hashes", "n_buckets"), [(23, 1, 10), (40, 1, 10), (17, 2, 10), (31, 3, 2)],
                         ids=["n23", "n40-ten-zero-tokens", "n17-two-hashes", "n31-three-hashes-two-buckets"])
def test_lra_form_equals_lra_code(n, n_hashes, n_buckets, path):
    """Outputs and gradients (input and weights) equal LRA's function, eval and training mode (the
    rotations are fixed in both), on inputs with no padding mask (LRA passes none)."""
    params = {**LRA, "n_hashes": n_hashes, "n_buckets": n_buckets, "n_chunks": n_buckets}
    layer = make(**params)
    rot = layer.eval_rotations[0]  # (d, R, K): every head has the same
    assert torch.equal(layer.eval_rotations, rot.expand_as(layer.eval_rotations))
    assert not hasattr(layer, "out")  # no output projection
    x = randn(2, n, DIM, seed=3)
    upstream = randn(2, n, DIM, seed=4)
    xr = x.clone().requires_grad_()
    wq, wv = (layer.qk.weight.detach().clone().requires_grad_(), layer.v.weight.detach().clone().requires_grad_())
    want = lra_reformer(xr, wq, wv, rot, HEADS, n_hashes, n_buckets)
    want_grads = torch.autograd.grad((want * upstream).sum(), [xr, wq, wv])
    for mode in ("eval", "train"):
        layer.train(mode == "train")
        xg = x.clone().requires_grad_()
        got = layer(xg)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        got_grads = torch.autograd.grad((got * upstream).sum(), [xg, layer.qk.weight, layer.v.weight])
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


def test_lra_reference_hand_checks():
    """The reference's quirks, by hand: 30 tokens (23 + 7 zero tokens) in 10 chunks of 3, each query seeing
    6 keys (its chunk and the previous one, chunk 0 the last); with one bucket's worth of rotation, the
    sorted order is the positions' and chunk 0 sees tokens 27-29, two of them zero tokens."""
    rot = torch.zeros(4, 1, 5, dtype=torch.float64)  # every rotated vector is 0: bucket 0, order = positions
    q = randn(30, 4, seed=5)
    v = randn(30, 4, seed=6)
    out = _lra_single_head(q, v, rot, 10, 1)
    keys = [*range(0, 3), *range(27, 30)]  # chunk 0 and, wrapping, chunk 9
    p = torch.softmax(q[1] @ q[keys].T * 2.0, dim=0)  # sqrt(4) = 2, keys not normalised, itself included
    torch.testing.assert_close(out[1], p @ v[keys], rtol=0, atol=1e-12)


# ---------------------------------------------------------------- every option, against a dense oracle

def dense_oracle(layer: LSHAttention, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's function densely, for any of its options. Query (round r, token i) sees key (round r',
    token j) once per window offset o in [-before, after] with chunk(r', j) = chunk(r, i) + o: within round
    r without ``wrap``, the rounds' chunks taken as one cycle with it. Its score is q_i.k_j times the scale,
    plus SELF_OFFSET for the o = 0 copy of itself (``self_mask``); padded keys are left out, and a query with
    no key left outputs zeros. Rounds combined by their log-sum-exp."""
    cfg = layer.cfg
    b, n, dim = x.shape
    h, d, r = layer.heads, layer.head_dim, cfg.n_hashes
    m = n + cfg.pad_multiple - n % cfg.pad_multiple if cfg.pad_multiple else n
    x = F.pad(x, (0, 0, 0, m - n))
    if mask is not None:
        mask = F.pad(mask, (0, m - n), value=True)
    qk = (x @ layer.qk.weight.T).view(b, m, h, d).transpose(1, 2)  # (B, H, M, d)
    v = (x @ layer.v.weight.T).view(b, m, h, d).transpose(1, 2)
    keys = qk if cfg.scale == "lra" else qk / qk.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    scale = {"paper": 1 / math.sqrt(d), "trax": 1.0, "lra": math.sqrt(d)}[cfg.scale]
    s = qk @ keys.transpose(-1, -2) * scale  # (B, H, M, M)
    buckets = layer.hash(qk, mask)  # (B, H, R, M)
    order = torch.sort(buckets, dim=-1, stable=True).indices
    slot = torch.empty_like(order).scatter_(-1, order, torch.arange(m).expand_as(order))
    c = -(-m // cfg.n_chunks) if cfg.n_chunks else cfg.chunk_size
    n_chunks = -(-m // c)
    chunk = slot // c + n_chunks * torch.arange(r)[:, None]  # (B, H, R, M): chunk in the cycle of rounds
    cq = chunk.reshape(b, h, r * m)[..., :, None]  # (round, query) x (round, key)
    ck = chunk.reshape(b, h, r * m)[..., None, :]
    same_round = (torch.arange(r * m) // m)[:, None] == (torch.arange(r * m) // m)[None, :]
    itself = torch.eye(r * m, dtype=torch.bool)
    scores = s.repeat(1, 1, r, r)  # (B, H, R*M, R*M)
    valid = torch.ones(b, 1, 1, r * m, dtype=torch.bool) if mask is None else mask.repeat(1, r)[:, None, None, :]
    terms = []
    for o in range(-cfg.chunks_before, cfg.chunks_after + 1):
        if cfg.wrap:
            seen = (cq + o) % (r * n_chunks) == ck
        else:
            seen = (cq + o == ck) & same_round
        offset = SELF_OFFSET * (itself & (o == 0)) if cfg.self_mask else 0.0
        terms.append(torch.where(seen & valid, scores + offset, -math.inf))
    terms = torch.stack(terms)  # (W, B, H, R*M, R*M)
    has_key = torch.isfinite(terms).any(dim=0).any(dim=-1)  # (B, H, R*M)
    terms = torch.where(has_key[None, ..., None], terms, 0.0)  # no key: anything finite, zeroed below
    lse = torch.logsumexp(torch.logsumexp(terms, dim=0), dim=-1)  # (B, H, R*M)
    weights = torch.exp(terms - lse[None, ..., None]).sum(dim=0)  # (B, H, R*M, R*M)
    out_r = (weights @ v.repeat(1, 1, r, 1)) * has_key[..., None]  # (B, H, R*M, d)
    w_r = torch.softmax(lse.view(b, h, r, m), dim=2)
    out = (w_r[..., None] * out_r.view(b, h, r, m, d)).sum(dim=2)  # (B, H, M, d)
    out = out.transpose(1, 2).reshape(b, m, dim)[:, :n]
    return layer.out(out) if cfg.out_projection else out


OPTIONS = {  # each option alone, then combinations, at several chunks per round
    "defaults": {},
    "wrap": {"wrap": True},
    "wrap-two-back-one-ahead": {"wrap": True, "chunks_before": 2, "chunks_after": 1},
    "wrap-window-over-the-cycle": {"wrap": True, "chunk_size": 8, "n_hashes": 1, "chunks_after": 2},
    "n_chunks": {"n_chunks": 5},
    "n_chunks-wrap": {"n_chunks": 3, "wrap": True, "n_hashes": 3},
    "scale-trax": {"scale": "trax"},
    "scale-lra": {"scale": "lra"},
    "no-self-mask": {"self_mask": False},
    "fixed-rotations": {"fixed_rotations": True},
    "no-out-projection": {"out_projection": False},
    "pad_multiple": {"pad_multiple": 7},
    "lra": {**LRA, "n_buckets": 4, "n_chunks": 4, "pad_multiple": 4},
}


def _masks(b, n):
    ragged = torch.arange(n)[None, :] < torch.tensor([n, 9, 0])[:, None]  # a tail, an all-padding element
    holes = torch.rand(b, n, generator=torch.Generator().manual_seed(8)) > 0.3
    return {"no-mask": None, "tails": ragged, "holes": holes}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_options_equal_dense_oracle(option, path):
    """Outputs of every token (padded ones included: zeros where no valid key is in reach) and the gradients
    of all of them, for the input and every weight."""
    n = 22
    layer = make(**{"chunk_size": 3, "n_buckets": 4, "n_hashes": 2, **OPTIONS[option]})
    x = randn(3, n, DIM, seed=6)
    upstream = randn(3, n, DIM, seed=7)
    params = dict(layer.named_parameters())
    for name, mask in _masks(3, n).items():
        xg = x.clone().requires_grad_()
        got = layer(xg, mask)
        grads = torch.autograd.grad((got * upstream).sum(), [xg, *params.values()])
        xw = x.clone().requires_grad_()
        want = dense_oracle(layer, xw, mask)
        want_grads = torch.autograd.grad((want * upstream).sum(), [xw, *params.values()])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=lambda e, name=name: f"{name}: {e}")
        for pname, g, w in zip(["x", *params], grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-10, msg=lambda e, p=pname, name=name: f"{name} {p}: {e}")


def test_oracle_sees_what_the_options_change():
    """The options do change the function (else the oracle tests would prove little)."""
    x = randn(2, 22, DIM, seed=9)
    base = make(chunk_size=3, n_buckets=4, n_hashes=2)
    with torch.no_grad():
        ref = base(x)
        for option in ("wrap", "n_chunks", "scale-trax", "scale-lra", "no-self-mask", "fixed-rotations",
                       "no-out-projection", "pad_multiple"):
            layer = make(**{"chunk_size": 3, "n_buckets": 4, "n_hashes": 2, **OPTIONS[option]})
            assert (layer(x) - ref).abs().max() > 1e-3, option


def test_scales_are_reparametrisations_of_each_other():
    """trax's q.k/|k| is the paper's logits times sqrt(d): the paper's layer with its shared vectors
    scaled by sqrt(d) (qk weight times sqrt(d): same buckets, keys unchanged) equals trax's."""
    d = DIM // HEADS
    paper, trax = make(chunk_size=3, n_buckets=4), make(chunk_size=3, n_buckets=4, scale="trax")
    with torch.no_grad():
        paper.qk.weight.mul_(math.sqrt(d))
        x = randn(2, 19, DIM, seed=10)
        torch.testing.assert_close(paper(x), trax(x), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- rotations, projections, flags

def test_fixed_rotations_are_one_draw_for_every_head_layer_and_step():
    torch.manual_seed(0)
    a = build_attention("lsh", DIM, HEADS, {"fixed_rotations": True}, max_len=64)
    b = build_attention("lsh", DIM, HEADS, {"fixed_rotations": True}, max_len=64)
    assert torch.equal(a.eval_rotations, b.eval_rotations)  # every layer
    assert torch.equal(a.eval_rotations[0], a.eval_rotations[1])  # every head
    assert a.eval_rotations.shape == (HEADS, DIM // HEADS, 2, 16)  # the buffer keeps its shape
    c = build_attention("lsh", DIM, HEADS, {"fixed_rotations": True, "eval_seed": 1}, max_len=64)
    assert not torch.equal(a.eval_rotations, c.eval_rotations)  # its seed is eval_seed
    default = build_attention("lsh", DIM, HEADS, {}, max_len=64)
    assert not torch.equal(default.eval_rotations[0], default.eval_rotations[1])
    x = randn(2, 24, DIM, seed=11, dtype=torch.float32)
    a.train()
    with torch.no_grad():
        state = torch.get_rng_state()
        first = a(x)
        assert torch.equal(a(x), first)  # training: the same hashes every step
        assert torch.equal(torch.get_rng_state(), state)  # nothing drawn
        assert torch.equal(a.eval()(x), first)


def test_without_output_projection_the_heads_are_the_output():
    layer = make(out_projection=False)
    assert {n for n, _ in layer.named_parameters()} == {"qk.weight", "v.weight"}
    with_out = make(out_projection=True)
    assert with_out.projection_flops(2, 64) - layer.projection_flops(2, 64) == 2 * 2 * 64 * DIM * DIM
    with torch.no_grad():
        x = randn(2, 24, DIM, seed=12)
        torch.testing.assert_close(with_out(x), with_out.out(layer(x)), rtol=0, atol=1e-12)


def test_flops_with_lra_chunks_grow_quadratically():
    layer = make(**LRA)
    f1, f2 = layer.flops(1, 1000), layer.flops(1, 2000)
    # chunks of N/10, windows of 2 chunks: the chunked part quadruples when N doubles
    assert 3.5 * f1 < f2 < 4 * f1
    default = make()
    assert default.flops(1, 2048) == 2 * default.flops(1, 1024)


def test_flags_say_which_options_break_the_padding_convention():
    """n_chunks, wrap and pad_multiple tie the chunks to the whole length: appended padding changes the
    real tokens' outputs by design (LRA's form has no padding mask), and the layer says so through
    ``supports_padding_mask`` (and ``linear_memory`` where its chunks grow with N); the others keep both."""
    assert LSHAttention.supports_padding_mask and LSHAttention.linear_memory
    for params in ({}, {"scale": "lra"}, {"self_mask": False}, {"fixed_rotations": True}, {"out_projection": False}):
        layer = make(**params)
        assert layer.supports_padding_mask and layer.linear_memory, params
    for params, linear in (({"n_chunks": 4}, False), ({"wrap": True}, True), ({"pad_multiple": 10}, True),
                           (LRA, False)):
        layer = make(**params)
        assert not layer.supports_padding_mask and layer.linear_memory == linear, params
    x = randn(3, 24, DIM, seed=13)
    mask = torch.cat([torch.ones(3, 24, dtype=torch.bool), torch.zeros(3, 7, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        for params in ({"n_chunks": 4, "n_buckets": 4}, {"wrap": True, "chunk_size": 4, "n_buckets": 4},
                       {"pad_multiple": 5, "chunk_size": 4, "n_buckets": 4}):
            layer = make(**params)
            padded = layer(torch.cat([x, randn(3, 7, DIM, seed=14)], dim=1), mask)[:, :24]
            assert (padded - layer(x)).abs().max() > 1e-6, params


LRA_SMALL = {**LRA, "n_hashes": 2, "n_buckets": 4, "n_chunks": 4, "pad_multiple": 4}


def test_conformance_checks_of_the_lra_form(monkeypatch):
    """The registry-wide checks (harness/conformance/checks.py) on LRA's form: each passes, except the two
    padding checks, which skip because the layer says it does not keep the padding convention."""
    monkeypatch.setattr(LSHAttention, "small_params", LRA_SMALL)
    results = {r.check: r for r in checks.run_checks("lsh", checks.FAST_CHECKS)}
    for name, result in results.items():
        if name in ("padding invariance", "padding per element"):
            assert result.status == "skip" and result.detail == "supports_padding_mask is False", result
        else:
            assert result.status == "pass", result


def test_lra_form_on_padded_input_without_a_mask(path):
    """LRA passes no padding mask (model ``mask_padding: false``): padding tokens are tokens; outputs and
    gradients are finite, training and eval, and equal LRA's code on the same padded input."""
    layer = make(**{**LRA, "n_buckets": 4, "n_chunks": 4, "pad_multiple": 4})
    x = randn(2, 21, DIM, seed=15)
    x[1, 13:] = 0.0  # a padded element, as the embedding of padding would be there
    for mode in (True, False):
        xg = x.clone().requires_grad_()
        y = layer.train(mode)(xg, None)
        y.square().sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(xg.grad).all()
    with torch.no_grad():
        want = lra_reformer(x, layer.qk.weight, layer.v.weight, layer.eval_rotations[0], HEADS, 1, 4, chunk_len=4)
        torch.testing.assert_close(layer.eval()(x), want, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- issue 32, item 1

def test_issue_32_padded_row_gradient_is_the_forward_derivative(path):
    """The reproduction: a padded query with no valid key in reach (element 1's token 9) read token 0's
    value through the flash path's filler slots, and its backward ignored that (gradient 0, finite
    difference -0.43). Both paths now give it zeros, and the gradient is the finite difference."""
    torch.manual_seed(0)
    layer = build_attention("lsh", 8, 2, {"chunk_size": 3, "n_buckets": 6, "n_hashes": 3, "chunks_after": 1},
                            max_len=10).double().eval()
    x = torch.randn(2, 10, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.arange(10)[None] < torch.tensor([[10], [6]])
    y = layer(x, mask)
    (g,) = torch.autograd.grad(y[1, 9].sum(), x)
    x2 = x.detach().clone()
    x2[1, 0] += 1e-3
    fd = (layer(x2, mask)[1, 9].sum() - y[1, 9].sum()) / 1e-3
    torch.testing.assert_close(g[1, 0].sum(), fd.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(y[1, 9], layer.out.bias, rtol=0, atol=0)  # zeros before the projection


@pytest.mark.parametrize("params", [{"chunk_size": 2, "n_buckets": 4, "n_hashes": 2, "chunks_after": 1},
                                    {**LRA, "n_buckets": 4, "n_chunks": 4, "pad_multiple": 4}],
                         ids=["defaults-small", "lra"])
def test_gradcheck_with_padded_rows(params, path):
    """gradcheck of every output, padded rows included, for the input and every weight."""
    layer = make(dim=4, heads=2, **params)
    x = randn(2, 9, 4, seed=16).requires_grad_()
    mask = torch.arange(9)[None] < torch.tensor([[9], [3]])
    assert torch.autograd.gradcheck(lambda t: layer(t, mask), (x,), eps=1e-6, atol=1e-7, fast_mode=True)
    weights = dict(layer.named_parameters())

    def f(*ps):
        return torch.func.functional_call(layer, dict(zip(weights, ps, strict=True)), (x.detach(), mask))

    assert torch.autograd.gradcheck(f, tuple(p.detach().clone().requires_grad_() for p in weights.values()),
                                    eps=1e-6, atol=1e-7, fast_mode=True)


def test_new_parameters_default_to_the_papers_form():
    cfg = LSHConfig()
    assert (cfg.n_chunks, cfg.wrap, cfg.scale, cfg.self_mask, cfg.fixed_rotations, cfg.out_projection,
            cfg.pad_multiple) == (0, False, "paper", True, False, True, 0)
    assert MASK_VALUE < SELF_OFFSET < 0


@pytest.mark.slow
def test_lra_form_compiles_whole():
    """LRA's form traces into one graph too (config/lra.yaml may train compiled), padded or not, and the
    compiled layer computes what the plain one does."""
    from test_compile_fullgraph import assert_compiles_whole_and_matches  # the registry-wide test's helper

    torch.manual_seed(0)
    layer = build_attention("lsh", 16, 2, {**LRA, "n_buckets": 4, "n_chunks": 4, "pad_multiple": 4}, max_len=24)
    x = torch.randn(3, 24, 16, generator=torch.Generator().manual_seed(3))
    padded = torch.arange(24)[None, :] < torch.tensor([24, 13, 0])[:, None]
    try:
        for training in (True, False):
            layer.train(training)
            for mask in (None, padded):
                assert_compiles_whole_and_matches(layer, x, mask, grads=training)
    finally:
        torch._dynamo.reset()
