"""Reformer LSH attention (variants/lsh.py) against a dense shared-QK oracle.

LSH attention never equals standard softmax attention (shared QK, unit-length keys, no attention
to self), so the oracle is *full shared-QK attention* with the same key normalisation, scale,
self-mask rule and padding mask, computed densely here. With one chunk per round the layer must
equal it; with several chunks the error against it must fall as hash rounds are added.

Memory (for ``linear_memory = True``): peak resident memory of one forward+backward in a fresh
live-memory process (tests/harness/measure/test_memory_scaling.py), B=1, H=4, head dim 64, default config (chunk 64,
2 hashes, 32 buckets), fp32, CPU flash path: 88 MiB at N=2048, 142 MiB at N=4096, 249 MiB at N=8192.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnbench.harness.conformance.checks import lengths_mask
from attnbench.harness.core.registry import dataclass_schema
from attnbench.variants import VARIANTS, build_attention
from attnbench.variants.lsh import LSHAttention, LSHConfig, gather_rows, lsh_sort, unsort_rows

#: the longest input these tests build layers for (the variants here do not use it)
MAX_LEN = 4096

DIM, HEADS = 16, 2


def randn(*shape, seed=1, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)



def make(seed=0, dim=DIM, heads=HEADS, dtype=torch.float64, **params) -> LSHAttention:
    torch.manual_seed(seed)
    return build_attention("lsh", dim, heads, params, max_len=MAX_LEN).to(dtype).eval()


def shared_qk_reference(layer: LSHAttention, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dense full shared-QK attention with the layer's weights: queries = qk(x), keys = qk(x) of unit
    length, scale 1/sqrt(d), own position offset by -1e5, padded keys excluded."""
    b, n, dim = x.shape
    h, d = layer.heads, layer.head_dim
    qk = (x @ layer.qk.weight.T).view(b, n, h, d).transpose(1, 2)
    v = (x @ layer.v.weight.T).view(b, n, h, d).transpose(1, 2)
    keys = qk / qk.norm(dim=-1, keepdim=True)
    scores = qk @ keys.transpose(-1, -2) / math.sqrt(d)
    scores = scores - 1e5 * torch.eye(n, dtype=scores.dtype)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    o = torch.softmax(scores, dim=-1) @ v
    return o.transpose(1, 2).reshape(b, n, dim) @ layer.out.weight.T + layer.out.bias


def value_path(layer: LSHAttention, x: torch.Tensor) -> torch.Tensor:
    """What a token that attends only to itself outputs: out(v(x))."""
    return layer.out(layer.v(x))


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------- config and registration

def test_registered_with_documented_bounded_config():
    entry = VARIANTS.get("lsh")
    assert entry.cls is LSHAttention and entry.config is LSHConfig
    assert not LSHAttention.exact and LSHAttention.linear_memory
    schema = dataclass_schema(LSHConfig)["properties"]
    numbers = {"chunk_size", "n_hashes", "n_buckets", "chunks_before", "chunks_after", "eval_seed", "n_chunks",
               "pad_multiple"}
    # LRA's code's forms (tests/variants/test_lsh_lra.py), each off by default
    switches = {"wrap", "scale", "self_mask", "fixed_rotations", "out_projection"}
    assert set(schema) == numbers | switches
    for name, prop in schema.items():
        assert prop["description"] and ("minimum" in prop or name in switches), name
    assert LSHConfig().n_buckets % 2 == 0 and "2 * N / chunk_size" in schema["n_buckets"]["description"]
    assert (LSHConfig().chunk_size, LSHConfig().n_hashes, LSHConfig().chunks_before,
            LSHConfig().chunks_after) == (64, 2, 1, 0)
    with pytest.raises(ValueError, match="even"):
        build_attention("lsh", DIM, HEADS, {"n_buckets": 5}, max_len=MAX_LEN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        LSHConfig().chunk_size = 3  # type: ignore[misc]


def test_shared_qk_projections_replace_fused_qkv():
    layer = make()
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"qk.weight", "v.weight", "out.weight", "out.bias"}
    # the eval rotations are saved with the weights, so a reloaded checkpoint hashes the same way
    assert set(layer.state_dict()) == names | {"eval_rotations"}
    assert layer.eval_rotations.shape == (HEADS, DIM // HEADS, 2, 16)


def test_flops_linear_in_length_and_batch():
    layer = make()
    f = layer.flops(1, 2048)
    assert layer.flops(1, 4096) == 2 * f and layer.flops(3, 2048) == 3 * f
    # the chunked part: 2 matmuls x R rounds x N x window x d, 2 FLOPs per multiply-add
    cfg = layer.cfg
    chunked = 2 * 2 * HEADS * cfg.n_hashes * 2048 * cfg.chunk_size * 2 * (DIM // HEADS)
    assert f > chunked + layer.projection_flops(1, 2048)


# ---------------------------------------------------------------- against the shared-QK oracle

@pytest.mark.parametrize("n_hashes", [1, 2, 5])
@pytest.mark.parametrize("around", [(1, 0), (0, 0), (1, 1)])
def test_one_chunk_equals_shared_qk_reference(n_hashes, around):
    """chunk_size >= N: each round attends over every position, so every round (and their logsumexp
    combination) equals full shared-QK attention; missing neighbour chunks are masked, not wrapped."""
    n = 24
    layer = make(chunk_size=32, n_buckets=4, n_hashes=n_hashes, chunks_before=around[0], chunks_after=around[1])
    x = randn(3, n, DIM, seed=2)
    holes = torch.rand(3, n, generator=torch.Generator().manual_seed(4)) > 0.3
    holes[:, 0] = True
    with torch.no_grad():
        for mask in (None, lengths_mask([n, 9, 1], n), holes):
            want = shared_qk_reference(layer, x, mask)
            keep = torch.ones(3, n, dtype=torch.bool) if mask is None else mask
            for mode in ("eval", "train"):  # train: fresh rotations, same single chunk
                layer.train(mode == "train")
                got = layer(x, mask)
                torch.testing.assert_close(got[keep], want[keep], rtol=0, atol=1e-12)
    # chunk_size == N exactly (no empty slots) too
    layer = make(chunk_size=n, n_buckets=4, n_hashes=n_hashes)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), shared_qk_reference(layer, x), rtol=0, atol=1e-12)


def test_error_against_reference_falls_with_n_hashes():
    """Several chunks: each round sees a subset of keys; more rounds cover more of each query's
    best keys, so the mean relative error against the oracle falls."""
    n, dim = 64, 32
    errs = {}
    for n_hashes in (1, 2, 4, 8):
        e = []
        for s in range(4):
            layer = make(seed=s, dim=dim, chunk_size=8, n_buckets=8, n_hashes=n_hashes, eval_seed=s)
            x = randn(2, n, dim, seed=100 + s)
            with torch.no_grad():
                e.append(rel_err(layer(x), shared_qk_reference(layer, x)))
        errs[n_hashes] = sum(e) / len(e)
    assert errs[1] > errs[2] > errs[4] > errs[8], errs
    assert errs[8] < 0.6 * errs[1], errs
    assert errs[1] > 0.1, errs  # several chunks really do drop keys


def dense_lsh_oracle(layer: LSHAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The LSH layer written densely from its own buckets: for each round, key j is visible to query i
    when j's chunk of the (bucket, position)-sorted order lies within [chunk(i) - before, chunk(i) + after];
    the rounds are pooled as one softmax in which a key seen in k rounds counts k times (the logsumexp
    combination)."""
    b, n, dim = x.shape
    h, d = layer.heads, layer.head_dim
    cfg = layer.cfg
    qk = (x @ layer.qk.weight.T).view(b, n, h, d).transpose(1, 2)
    v = (x @ layer.v.weight.T).view(b, n, h, d).transpose(1, 2)
    scores = qk @ (qk / qk.norm(dim=-1, keepdim=True)).transpose(-1, -2) / math.sqrt(d)
    scores = scores - 1e5 * torch.eye(n, dtype=scores.dtype)
    buckets = layer.hash(qk, mask)  # (B, H, R, N)
    order = torch.sort(buckets, dim=-1, stable=True).indices  # ties keep position order
    slot = torch.empty_like(order).scatter_(-1, order, torch.arange(n).expand_as(order))
    chunk = slot // cfg.chunk_size  # (B, H, R, N)
    delta = chunk[..., None, :] - chunk[..., :, None]  # key chunk - query chunk, (B, H, R, N, N)
    visible = (delta >= -cfg.chunks_before) & (delta <= cfg.chunks_after)
    if mask is not None:
        visible = visible & mask[:, None, None, None, :]
    weights = torch.where(visible, scores[:, :, None], float("-inf"))  # (B, H, R, N, N)
    weights = torch.softmax(weights.transpose(2, 3).reshape(b, h, n, -1), dim=-1).view(b, h, n, -1, n)
    o = torch.einsum("bhirj,bhjd->bhid", weights, v)
    return o.transpose(1, 2).reshape(b, n, dim) @ layer.out.weight.T + layer.out.bias


@pytest.mark.parametrize("around", [(1, 0), (0, 0), (2, 1)])
def test_several_chunks_equal_dense_oracle_given_buckets(around):
    """Chunking, neighbour windows without wraparound, masks and the round combination, checked against
    a dense computation from the layer's buckets (hashing itself is tested through the padding tests)."""
    n = 24
    layer = make(chunk_size=4, n_buckets=4, n_hashes=3, chunks_before=around[0], chunks_after=around[1])
    x = randn(3, n, DIM, seed=14)
    holes = torch.rand(3, n, generator=torch.Generator().manual_seed(15)) > 0.3
    holes[:, 0] = True
    with torch.no_grad():
        for mask in (None, lengths_mask([n, 13, 2], n), holes):
            got = layer(x, mask)
            want = dense_lsh_oracle(layer, x, mask)
            keep = torch.ones(3, n, dtype=torch.bool) if mask is None else mask
            torch.testing.assert_close(got[keep], want[keep], rtol=0, atol=1e-12)
            assert rel_err(got[keep], shared_qk_reference(layer, x, mask)[keep]) > 1e-3  # not the full one


# ---------------------------------------------------------------- mechanism

def test_sort_then_unsort_is_identity_and_orders_by_bucket_then_position():
    b, h, r, n, nb = 2, 3, 4, 37, 6
    gen = torch.Generator().manual_seed(0)
    buckets = torch.randint(0, nb, (b, h, r, n), generator=gen)
    buckets[0, :, :, 30:] = nb  # padding: a bucket of its own
    sort_idx, undo_idx = lsh_sort(buckets)
    sorted_buckets = buckets.gather(-1, sort_idx)
    assert (sorted_buckets.diff(dim=-1) >= 0).all()
    same = sorted_buckets.diff(dim=-1) == 0
    assert (sort_idx.diff(dim=-1)[same] > 0).all()  # stable: positions ascend within a bucket
    assert (sort_idx[0, :, :, -7:] == torch.arange(30, 37)).all()  # pads last, in order
    t = randn(b, h, n, 5)
    sorted_t = gather_rows(t, sort_idx)  # (B, H, R, N, 5)
    back = unsort_rows(sorted_t, undo_idx)
    assert torch.equal(back, t[:, :, None].expand(b, h, r, n, 5))
    assert torch.equal(unsort_rows(sort_idx, undo_idx), torch.arange(n).expand(b, h, r, n))


def test_token_alone_attends_to_itself():
    x = randn(2, 10, DIM, seed=5)
    # chunk of one token, no neighbours: every token's only key is itself
    layer = make(chunk_size=1, n_buckets=4, n_hashes=3, chunks_before=0, chunks_after=0)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), value_path(layer, x), rtol=0, atol=1e-12)
    # one real token followed by padding: it can only attend to itself
    layer = make(**LSHAttention.small_params)
    xp = torch.cat([x[:, :1], 100 * randn(2, 9, DIM, seed=6)], dim=1)
    with torch.no_grad():
        out = layer(xp, lengths_mask([1, 1], 10))
        torch.testing.assert_close(out[:, 0], value_path(layer, x[:, 0]), rtol=0, atol=1e-12)
    # and otherwise a token never attends to itself: with two tokens each one takes the other's value
    with torch.no_grad():
        two = make(chunk_size=4, n_buckets=2, n_hashes=2)
        torch.testing.assert_close(two(x[:, :2]), value_path(two, x[:, :2].flip(1)), rtol=0, atol=1e-12)


def test_padding_holes_equal_the_compacted_sequence():
    """Padding anywhere (not just appended): real tokens keep their relative order in every bucket, so
    their outputs equal running the real tokens alone."""
    layer = make(**LSHAttention.small_params)
    n = 24
    x = randn(2, n, DIM, seed=8)
    holes = torch.rand(2, n, generator=torch.Generator().manual_seed(9)) > 0.35
    xj = torch.where(holes[..., None], x, 100 * randn(2, n, DIM, seed=10))
    with torch.no_grad():
        out = layer(xj, holes)
        for i in range(2):
            alone = layer(x[i:i + 1, holes[i]])
            torch.testing.assert_close(out[i, holes[i]], alone[0], rtol=0, atol=1e-10)


def test_eval_deterministic_training_draws_new_rotations():
    layer = make(**LSHAttention.small_params)
    x = randn(2, 24, DIM, seed=11)
    with torch.no_grad():
        state = torch.get_rng_state()
        a, b = layer(x), layer(x)
        assert torch.equal(a, b)
        assert torch.equal(torch.get_rng_state(), state)  # eval does not consume the global generator
        layer.train()
        t1, t2 = layer(x), layer(x)
        assert not torch.allclose(t1, t2)
        torch.manual_seed(123)
        t3 = layer(x)
        torch.manual_seed(123)
        assert torch.equal(layer(x), t3)  # training rotations come from torch's global generator


def test_eval_rotations_fixed_per_layer_and_seed():
    torch.manual_seed(0)
    l1 = build_attention("lsh", DIM, HEADS, {"eval_seed": 3}, max_len=MAX_LEN)
    l2 = build_attention("lsh", DIM, HEADS, {"eval_seed": 3}, max_len=MAX_LEN)
    assert not torch.equal(l1.eval_rotations, l2.eval_rotations)  # per-layer offset
    torch.manual_seed(0)
    again = build_attention("lsh", DIM, HEADS, {"eval_seed": 3}, max_len=MAX_LEN)
    assert torch.equal(again.eval_rotations, l1.eval_rotations)  # reproducible under the model seed
    torch.manual_seed(0)
    other = build_attention("lsh", DIM, HEADS, {"eval_seed": 4}, max_len=MAX_LEN)
    assert not torch.equal(other.eval_rotations, l1.eval_rotations)


def test_float32_close_to_float64():
    layer = make(**LSHAttention.small_params)
    x = randn(2, 24, DIM, seed=12)
    with torch.no_grad():
        want = layer(x)
        got = layer.float()(x.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)


def test_gradcheck_eval_mode():
    layer = make(dim=4, heads=2, chunk_size=2, n_buckets=4, n_hashes=2, chunks_before=1, chunks_after=1)
    x = randn(1, 7, 4, seed=13).requires_grad_()
    mask = lengths_mask([6], 7)
    assert torch.autograd.gradcheck(lambda t: layer(t, mask)[:, :6], (x,), eps=1e-6, atol=1e-7)

    # and with respect to every parameter
    params = dict(layer.named_parameters())

    def f(*ps):
        return torch.func.functional_call(layer, dict(zip(params, ps, strict=True)), (x.detach(), mask))[:, :6]

    assert torch.autograd.gradcheck(f, tuple(p.detach().clone().requires_grad_() for p in params.values()),
                                    eps=1e-6, atol=1e-7, fast_mode=True)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_quadratic_tensor_in_forward_and_backward():
    """The largest tensor of a forward+backward is the scores, R * N * c * W per head, never N x N."""
    n, c, r = 512, 8, 2
    layer = make(dtype=torch.float32, chunk_size=c, n_buckets=8, n_hashes=r).train()
    x = randn(1, n, DIM, dtype=torch.float32).requires_grad_()
    with _LargestTensor() as mode:
        layer(x).sum().backward()
    scores = HEADS * r * n * c * 2
    assert mode.largest <= scores < n * n
