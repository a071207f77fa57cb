"""``attnbench compare``'s peer adapters (``attnbench.harness.compare.peers``): each computes what ours does.

Peers are an optional extra: tests that use a real peer package skip when it is not installed.
The numerical tests copy our weights into a peer that supports an exactly equivalent configuration
and check that both compute the same function (float64).
"""
from __future__ import annotations

import math
import sys

import pytest
import torch

from attnbench.harness.compare.cases import plan
from attnbench.harness.compare.peers import full as full_peers
from attnbench.harness.compare.peers import linear as linear_peers
from attnbench.harness.compare.peers import linformer as linformer_peers
from attnbench.harness.compare.peers import local as local_peers
from attnbench.harness.compare.peers import lsh as lsh_peers
from attnbench.harness.compare.peers import nystrom as nystrom_peers
from attnbench.harness.compare.peers import sinkhorn as sinkhorn_peers
from attnbench.harness.compare.peers import window as window_peers
from attnbench.harness.compare.registry import PEERS, Shape, missing_modules, variant_defaults
from attnbench.variants import build_attention

#: the longest input these tests build layers for (the variants here do not use it)
MAX_LEN = 4096

DIM, HEADS = 32, 4


# --- the peer adapters ----------------------------------------------------------------------------

def _x(n, b=2, real=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, DIM, generator=g, dtype=torch.float64)
    mask = torch.ones(b, n, dtype=torch.bool)
    if real is not None:
        mask[1, real:] = False
    return x, mask


def _ours(variant, params):
    torch.manual_seed(0)
    return build_attention(variant, DIM, HEADS, params, max_len=MAX_LEN).double().eval()


def _copy(linear, weight, bias=None):
    with torch.no_grad():
        linear.weight.copy_(weight)
        if linear.bias is not None:
            linear.bias.copy_(bias)


def _qkv(ours):
    w, b = ours.qkv.weight, ours.qkv.bias
    return [(w[i * DIM:(i + 1) * DIM], b[i * DIM:(i + 1) * DIM]) for i in range(3)]


def _same(ours, peer, x, mask, atol=1e-6):
    with torch.no_grad():
        a, b = ours(x, mask), peer(x, mask)
    real = mask[..., None]
    assert a.shape == b.shape
    assert torch.allclose(a * real, b * real, atol=atol, rtol=0), (a - b).abs().max()


def test_full_equals_torch_mha_with_copied_weights():
    ours = _ours("full", {})
    peer = full_peers.TorchMHA(DIM, HEADS).double().eval()
    with torch.no_grad():
        peer.mha.in_proj_weight.copy_(ours.qkv.weight)
        peer.mha.in_proj_bias.copy_(ours.qkv.bias)
    _copy(peer.mha.out_proj, ours.out.weight, ours.out.bias)
    _same(ours, peer, *_x(40, real=27), atol=1e-12)


@pytest.mark.parametrize("real", [None, 27])
def test_full_equals_the_plain_sdpa_layer_with_copied_weights(real):
    ours = _ours("full", {})
    peer = full_peers.PlainSDPA(DIM, HEADS).double().eval()
    _copy(peer.qkv, ours.qkv.weight, ours.qkv.bias)
    _copy(peer.out, ours.out.weight, ours.out.bias)
    _same(ours, peer, *_x(40, real=real), atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("window,global_tokens", [(4, (0,)), (8, (0, -1)), (6, ())])
def test_window_equals_hf_longformer(window, global_tokens):
    pytest.importorskip("transformers")
    params, settings = PEERS["hf-longformer"].match(Shape(50), {"window": window, "global_tokens": global_tokens})
    ours = _ours("window", params)
    peer = window_peers.HFLongformer(DIM, HEADS, settings["one_sided_window"], tuple(settings["global_tokens"]))
    peer = peer.double().eval()
    q, k, v = _qkv(ours)
    a = peer.attn  # HF's separate global projections get the same weights: ours has one set
    for lin, wb in ((a.query, q), (a.key, k), (a.value, v), (a.query_global, q), (a.key_global, k),
                    (a.value_global, v)):
        _copy(lin, *wb)
    _copy(peer.out, ours.out.weight, ours.out.bias)
    # N = 50 is not a multiple of 2w: the adapter pads like LongformerModel; HF's softmax runs in float32
    _same(ours, peer, *_x(50, real=37), atol=1e-6)


@pytest.mark.parametrize("window", [4, 8])
def test_window_equals_local_attention_exact_window(window):
    pytest.importorskip("local_attention")
    params, settings = PEERS["local-attention"].match(Shape(48), {"window": window, "global_tokens": (0,)})
    assert params["global_tokens"] == ()
    ours = _ours("window", params)
    peer = window_peers.LucidrainsLocal(DIM, HEADS, settings["window_size"]).double().eval()
    _copy(peer.qkv, ours.qkv.weight, ours.qkv.bias)
    _copy(peer.out, ours.out.weight, ours.out.bias)
    _same(ours, peer, *_x(44, real=31), atol=1e-12)
    _same(ours, peer, *_x(44, real=44), atol=1e-12)  # every token real, N not a multiple of the window


def _fast_transformers_weights(ours, proj):
    (q, k, v) = _qkv(ours)
    for lin, wb in zip(proj, (q, k, v, (ours.out.weight, ours.out.bias)), strict=True):
        _copy(lin, *wb)


def test_linear_elu_equals_fast_transformers_formulation():
    params, settings = PEERS["fast-transformers"].match(Shape(40), {})
    ours = _ours("linear", params)
    peer = linear_peers.FastTransformersLinear(DIM, HEADS, settings["eps"]).double().eval()
    _fast_transformers_weights(ours, (peer.query_projection, peer.key_projection, peer.value_projection,
                                      peer.out_projection))
    _same(ours, peer, *_x(40, real=23), atol=1e-12)


def test_linear_elu_equals_fast_transformers_package():
    pytest.importorskip("fast_transformers.attention")
    params, settings = PEERS["fast-transformers"].match(Shape(40), {})
    ours = _ours("linear", params)
    peer, label = linear_peers.build_fast_transformers(Shape(40, 2, HEADS, DIM // HEADS), settings)
    assert "re-implemented" not in label
    peer = peer.double().eval()
    layer = peer.layer
    _fast_transformers_weights(ours, (layer.query_projection, layer.key_projection, layer.value_projection,
                                      layer.out_projection))
    _same(ours, peer, *_x(40, real=23), atol=1e-12)


def test_fast_transformers_falls_back_to_the_labelled_formulation(monkeypatch):
    monkeypatch.setitem(sys.modules, "fast_transformers", None)
    monkeypatch.setitem(sys.modules, "fast_transformers.attention", None)
    peer, label = linear_peers.build_fast_transformers(Shape(32, 1, HEADS, DIM // HEADS), {"eps": 1e-6})
    assert isinstance(peer, linear_peers.FastTransformersLinear)
    assert label == linear_peers.FAST_TRANSFORMERS_REIMPLEMENTED


def test_linear_favor_equals_performer_with_copied_features(monkeypatch):
    """Same projection matrix and weights. The two differ only in where the FAVOR+ eps (1e-4) meets
    the stabiliser (performer subtracts max(w.x), ours max(w.x - |x|^2/2)) and in our normaliser eps,
    so with both eps at 0 the stabilisers cancel and the outputs agree."""
    pp = pytest.importorskip("performer_pytorch.performer_pytorch")
    import functools

    import attnbench.variants.linear

    monkeypatch.setattr(attnbench.variants.linear, "FAVOR_EPS", 0.0)
    monkeypatch.setattr(pp, "softmax_kernel", functools.partial(pp.softmax_kernel, eps=0.0))
    params, settings = PEERS["performer-pytorch"].match(Shape(40, 2, HEADS, DIM // HEADS), {"n_features": 0})
    assert params["n_features"] == settings["nb_features"] == int(8 * math.log(8))
    ours = _ours("linear", {**params, "eps": 0.0})
    peer = linear_peers.PerformerFavor(DIM, HEADS, settings["nb_features"]).double().eval()
    with torch.no_grad():
        peer.attn.fast_attention.projection_matrix.copy_(ours.projection)
    a = peer.attn
    for lin, wb in zip((a.to_q, a.to_k, a.to_v, a.to_out), (*_qkv(ours), (ours.out.weight, ours.out.bias)),
                    strict=True):
        _copy(lin, *wb)
    _same(ours, peer, *_x(40), atol=1e-10)  # no padding: performer leaves padded keys in the normaliser


def test_lsh_equals_reformer_pytorch_full_qk_path():
    """At N <= bucket_size reformer-pytorch runs full shared-QK attention (unit keys, d^-1/2, self-mask);
    ours with one chunk holding every token is the same function."""
    pytest.importorskip("reformer_pytorch")
    ours = _ours("lsh", {"chunk_size": 64, "n_buckets": 2, "n_hashes": 1, "chunks_before": 0})
    peer = lsh_peers.LucidrainsReformerLSH(DIM, HEADS, bucket_size=64, n_hashes=1).double().eval()
    a = peer.attn
    _copy(a.toqk, ours.qk.weight)
    _copy(a.tov, ours.v.weight)
    _copy(a.to_out, ours.out.weight, ours.out.bias)
    x, mask = _x(40)
    with torch.no_grad():
        assert torch.allclose(ours(x, mask), a(x), atol=1e-12, rtol=0)


# --- the later variants' peers (linformer, nystrom, sinkhorn, local) -------------------------------

def _no_qkv_bias(ours):
    """Their q/k/v projections have no bias: ours with a zero bias computes the same projections."""
    with torch.no_grad():
        ours.qkv.bias.zero_()
    return ours


def test_later_variants_peers_are_registered_with_our_settings():
    shape = Shape(4096)
    want = {"linformer": ("linformer", "linformer-pytorch"), "nystrom": ("nystrom-attention",),
            "sinkhorn": ("sinkhorn-transformer",), "local": ("local-attention-blocks",)}
    for variant, names in want.items():
        assert {p.name for p in PEERS.values() if p.variant == variant} == set(names)
        for name in names:
            d = variant_defaults(variant)
            ours, theirs = PEERS[name].match(shape, d)
            if variant == "linformer":
                assert ours["k"] == theirs.get("k", theirs.get("dim_k")) == min(d["k"], shape.n)
                assert not ours["share_kv"] and not ours["per_head"]
            elif variant == "nystrom":
                assert (ours["landmarks"], ours["pinv_iterations"]) == (theirs["num_landmarks"],
                                                                       theirs["pinv_iterations"])
                assert theirs["residual"] == (ours["conv_kernel"] > 0)
            elif variant == "sinkhorn":
                assert (ours["block_size"], ours["sinkhorn_iterations"], ours["temperature"]) == \
                    (theirs["bucket_size"], theirs["sinkhorn_iter"], theirs["temperature"])
                assert theirs["non_permutative"] is False  # Sinkhorn sorting, not its top-k default
            else:
                assert ours["block_size"] == theirs["window_size"]
                assert theirs["look_backward"] == theirs["look_forward"] == 0
    # k is reduced to N on both sides, as ours reduces it to max_len
    assert PEERS["linformer"].match(Shape(100), {"k": 256})[1]["k"] == 100
    # the synthesizer has no public package: reported as skipped, not compared
    cases, skipped = plan(["synthesizer"], None, lambda n: Shape(n), [64])
    assert cases == [] and "no public peer" in skipped[0].reason


def test_linformer_equals_lucidrains_linformer_with_copied_weights():
    """Random E and F (not only the identity): lucidrains' proj_k, proj_v are (seq_len, k) = E^T, F^T."""
    pytest.importorskip("linformer")
    ours = _no_qkv_bias(_ours("linformer", {"k": 12}))
    peer = linformer_peers.LucidrainsLinformer(DIM, HEADS, MAX_LEN, 12).double().eval()
    a = peer.attn
    for lin, (w, _) in zip((a.to_q, a.to_k, a.to_v), _qkv(ours), strict=True):
        _copy(lin, w)
    _copy(a.to_out, ours.out.weight, ours.out.bias)
    with torch.no_grad():
        a.proj_k.copy_(ours.proj_e.T)
        a.proj_v.copy_(ours.proj_f.T)
    _same(ours, peer, *_x(40, real=27), atol=1e-12)  # padded rows zeroed by the adapter = our masking


@pytest.mark.parametrize("per_head,share_kv", [(False, False), (False, True), (True, False)])
def test_linformer_equals_linformer_pytorch_with_copied_weights(per_head, share_kv):
    """Its E, F are nn.Linear(N, k) with a bias: with the bias zero, the same function (padding masked too)."""
    pytest.importorskip("linformer_pytorch.linformer_pytorch")
    n = 40
    params, settings = PEERS["linformer-pytorch"].match(Shape(n), {"k": 12, "per_head": per_head,
                                                                   "share_kv": share_kv})
    assert (params["per_head"], params["share_kv"]) == (per_head, share_kv)
    ours = _no_qkv_bias(_ours("linformer", params))
    peer = linformer_peers.LinformerPytorch(DIM, HEADS, n, settings["dim_k"], settings["parameter_sharing"])
    peer = peer.double().eval()
    a, d = peer.attn, DIM // HEADS
    (wq, _), (wk, _), (wv, _) = _qkv(ours)
    e_all, f_all = ours.proj_e[..., :n], (ours.proj_e if ours.proj_f is None else ours.proj_f)[..., :n]
    for h in range(HEADS):
        rows = slice(h * d, (h + 1) * d)
        for lin, w in ((a.to_q[h], wq), (a.to_k[h], wk), (a.to_v[h], wv)):
            _copy(lin, w[rows])
        e, f = (e_all[h], f_all[h]) if per_head else (e_all, f_all)
        _copy(a.heads[h].E, e, torch.zeros(e.shape[0]))
        _copy(a.heads[h].F, f, torch.zeros(f.shape[0]))
    _copy(a.w_o, ours.out.weight, ours.out.bias)
    _same(ours, peer, *_x(n, real=27), atol=1e-12)


@pytest.mark.parametrize("n,landmarks,conv_kernel", [(48, 8, 3), (16, 16, 0)])
def test_nystrom_equals_nystrom_attention_once_the_pinv_converged(n, landmarks, conv_kernel):
    """No padding, N a multiple of m: the same landmarks and kernels. The pseudo-inverse iterations start
    from different Z0 (theirs: one norm over the batch and heads), so the outputs agree once both have
    converged (30 iterations); landmarks = N is the limit where both are full softmax attention."""
    pytest.importorskip("nystrom_attention")
    params, settings = PEERS["nystrom-attention"].match(Shape(n), {"landmarks": landmarks, "pinv_iterations": 30,
                                                                   "conv_kernel": conv_kernel})
    ours = _no_qkv_bias(_ours("nystrom", params))
    peer = nystrom_peers.LucidrainsNystrom(DIM, HEADS, settings["num_landmarks"], settings["pinv_iterations"],
                                       conv_kernel).double().eval()
    _copy(peer.attn.to_qkv, ours.qkv.weight)
    _copy(peer.attn.to_out[0], ours.out.weight, ours.out.bias)
    if conv_kernel:
        with torch.no_grad():
            peer.attn.res_conv.weight.copy_(ours.conv.weight)
    _same(ours, peer, *_x(n), atol=1e-9)


@pytest.mark.parametrize("n,block,real", [(44, 8, 31), (48, 8, None), (20, 50, 13)])
def test_local_equals_local_attention_without_look_around(n, block, real):
    pytest.importorskip("local_attention")
    params, settings = PEERS["local-attention-blocks"].match(Shape(n), {"block_size": block})
    ours = _ours("local", params)
    peer = local_peers.LucidrainsLocalBlocks(DIM, HEADS, settings["window_size"]).double().eval()
    _copy(peer.qkv, ours.qkv.weight, ours.qkv.bias)
    _copy(peer.out, ours.out.weight, ours.out.bias)
    _same(ours, peer, *_x(n, real=real), atol=1e-12)


def test_sinkhorn_transformer_one_bucket_uses_the_sorted_keys_as_values():
    """What the peer's note says: with one bucket its permutation is [[1]] and one softmax over the
    sorted and own keys (the same keys twice) weighs values [sorted keys; own values] (0.11.4 sets
    b_v_r = b_k_r), so it computes 1/2 (softmax(Q K^T) K + softmax(Q K^T) V) where ours (the mean of
    its two halves) is full attention softmax(Q K^T) V."""
    pytest.importorskip("sinkhorn_transformer")
    n = 16
    peer = sinkhorn_peers.LucidrainsSinkhorn(DIM, HEADS, n, n, 8, 0.75).double().eval()
    x, _ = _x(n)
    with torch.no_grad():
        q = peer.attn.to_q(x).view(2, n, HEADS, -1).transpose(1, 2)
        k, v = (t.view(2, n, HEADS, -1).transpose(1, 2) for t in peer.attn.to_kv(x).chunk(2, dim=-1))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS), dim=-1)
        o = 0.5 * (attn @ k + attn @ v)
        want = peer.attn.to_out(o.transpose(1, 2).reshape(2, n, DIM))
        assert torch.allclose(peer(x, None), want, atol=1e-10, rtol=0)


@pytest.mark.slow
def test_bigbird_mechanism_alone_computes_what_hf_ships_without_the_dense_matrix():
    """hf-bigbird-core skips only HF's N x N attention-probability reassembly: same weights and
    seed, the same output and gradients as hf-bigbird, and the dense tensor was never built."""
    pytest.importorskip("transformers.models.big_bird.modeling_big_bird")
    shape = Shape(256, 2, HEADS, DIM // HEADS)
    _, settings = PEERS["hf-bigbird"].match(shape, {**variant_defaults("sparse"), "block_size": 16,
                                                    "random_blocks": 1})
    results = []
    for name in ("hf-bigbird", "hf-bigbird-core"):
        torch.manual_seed(0)
        layer = PEERS[name].build(shape, settings).train()
        x = torch.randn(2, 256, DIM, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y = layer(x, None)
        y.square().sum().backward()
        results.append((y, x.grad, getattr(layer, "skipped_dense", None)))
    (y1, g1, _), (y2, g2, skipped) = results
    assert torch.equal(y1, y2) and torch.equal(g1, g2)
    assert skipped == 1


# every peer that is installed builds at a small size and runs forward+backward with padding
SMALL = {"hf-bigbird": ({"block_size": 16, "random_blocks": 1}, 256),
         "hf-bigbird-core": ({"block_size": 16, "random_blocks": 1}, 256),
         "linformer": ({"k": 16}, 72), "linformer-pytorch": ({"k": 16}, 72),
         "nystrom-attention": ({"landmarks": 8, "conv_kernel": 3}, 76),
         "sinkhorn-transformer": ({"block_size": 8}, 76), "local-attention-blocks": ({"block_size": 8}, 76)}


@pytest.mark.parametrize("name", list(PEERS))
def test_installed_peer_adapter_runs_forward_backward(name):
    peer = PEERS[name]
    missing = missing_modules(peer)
    if missing:
        pytest.skip("not installed: " + "; ".join(missing))
    over, n = SMALL.get(name, ({}, 72))
    shape = Shape(n, 2, HEADS, DIM // HEADS)
    ours_params, settings = peer.match(shape, {**variant_defaults(peer.variant), **over})
    built = peer.build(shape, settings)
    layer = (built[0] if isinstance(built, tuple) else built).train()
    ours = build_attention(peer.variant, DIM, HEADS, ours_params, max_len=n).train()
    x, mask = _x(n, real=n - 9)
    x = x.float().requires_grad_(True)
    for module in (layer, ours):
        y = module(x, mask)
        assert y.shape == x.shape and torch.isfinite(y[mask]).all()
        y.sum().backward()
        assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
