"""Linear attention (elu+1, FAVOR+ and LRA's relu+1e-3): the explicit kernel formula, FAVOR+ convergence to softmax,
positivity, precision, randomness conventions and the random projection's structure."""
from __future__ import annotations

import math

import pytest
import torch

from attnbench.variants import build_attention
from attnbench.variants.lib.reference import explicit_softmax_attention
from attnbench.variants.linear import (
    FAVOR_EPS,
    RELU_EPS,
    LinearAttention,
    elu_feature_map,
    orthogonal_gaussian_projection,
)

#: the longest input these tests build layers for (the variants here do not use it)
MAX_LEN = 4096

DIM, HEADS = 32, 2          # head dim 16; FAVOR+ default m = int(16 ln 16) = 44, i.e. 3 blocks (16, 16, 12)
DH = DIM // HEADS
MAPS = ["elu", "favor", "relu"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors on shared cores: one thread is faster (conftest restores the count)."""
    torch.set_num_threads(1)


def make(params=None, dtype=torch.float64, seed=0, dim=DIM, heads=HEADS) -> LinearAttention:
    torch.manual_seed(seed)
    return build_attention("linear", dim, heads, params or {}, max_len=MAX_LEN).to(dtype).eval()


def randn(*shape, seed=1, dtype=torch.float64, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


def qkv(b, n, seed=3, dh=DH, heads=HEADS, dtype=torch.float64, scale=1.0):
    return tuple(randn(b, heads, n, dh, seed=seed + i, dtype=dtype, scale=scale) for i in range(3))


def masks(b, n):
    holes = torch.rand(b, n, generator=torch.Generator().manual_seed(5)) > 0.4
    holes[:, 0] = True
    return {
        "none": None,
        "all-real": torch.ones(b, n, dtype=torch.bool),
        "ragged": torch.arange(n)[None, :] < torch.tensor([n, n // 2, 3][:b])[:, None],
        "holes": holes,
    }


# ---------------------------------------------------------------- the explicit formula, written out here

def dense_phi(layer, x, is_query, mask):
    """The feature map written out independently of the implementation, in float64."""
    if layer.cfg.feature_map == "elu":
        return torch.nn.functional.elu(x) + 1
    if layer.cfg.feature_map == "relu":
        return torch.relu(x) + RELU_EPS
    w = layer.projection.to(torch.float64)                                  # (m, d)
    m, d = w.shape
    xs = x * d ** -0.25
    logits = xs @ w.T - (xs ** 2).sum(-1, keepdim=True) / 2                 # (B, H, N, m)
    if is_query:
        stab = logits.max(dim=-1, keepdim=True).values
    else:
        stab = torch.empty(logits.shape[0], logits.shape[1], 1, 1, dtype=x.dtype)
        for b in range(logits.shape[0]):
            real = slice(None) if mask is None else mask[b]
            for h in range(logits.shape[1]):
                stab[b, h] = logits[b, h][real].max()
    return (torch.exp(logits - stab) + FAVOR_EPS) / math.sqrt(m)


def dense_linear_attention(layer, q, k, v, mask):
    """A = phi(Q) phi(K)^T with padded key columns zeroed, row-normalised (+eps), times V."""
    a = dense_phi(layer, q, True, mask) @ dense_phi(layer, k, False, mask).transpose(-2, -1)  # (B, H, N, N)
    if mask is not None:
        a = a * mask[:, None, None, :]
    return (a @ v) / (a.sum(-1, keepdim=True) + layer.cfg.eps)


@pytest.mark.parametrize("n", [64, 128])
@pytest.mark.parametrize("fmap", MAPS)
def test_attend_equals_dense_kernel_formula(fmap, n):
    layer = make({"feature_map": fmap})
    q, k, v = qkv(3, n)
    for name, mask in masks(3, n).items():
        kk, vv = k.clone(), v.clone()
        if mask is not None:  # whatever sits at padded positions must not matter
            kk[~mask[:, None, :].expand(-1, HEADS, -1)] = 1e3
            vv[~mask[:, None, :].expand(-1, HEADS, -1)] = float("nan")
        got = layer.attend(q, kk, vv, mask)
        want = dense_linear_attention(layer, q, k, v, mask)
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10, msg=lambda m, name=name: f"{fmap} mask {name}: {m}")


def test_dense_formula_is_not_trivially_uniform():
    """Guard for the test above: the kernel weights really vary, so the comparison has teeth."""
    for fmap in MAPS:
        layer = make({"feature_map": fmap})
        q, k, v = qkv(1, 64)
        out = layer.attend(q, k, v, None)
        uniform = v.mean(dim=-2, keepdim=True).expand_as(v)
        assert (out - uniform).abs().max() > 0.05, fmap


@pytest.mark.parametrize("fmap", MAPS)
def test_fully_masked_element_gives_zeros(fmap):
    layer = make({"feature_map": fmap})
    q, k, v = qkv(2, 16)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1] = False
    out = layer.attend(q, k, v, mask)
    assert torch.isfinite(out).all() and torch.equal(out[1], torch.zeros_like(out[1]))


# ---------------------------------------------------------------- FAVOR+ approximates softmax attention

def test_favor_error_to_softmax_falls_with_features():
    q, k, v = qkv(1, 128, dh=16, heads=4, seed=11, scale=0.5)
    want = explicit_softmax_attention(q, k, v)
    err = {}
    for m in (16, 256, 2048):
        errs = []
        for seed in range(4):
            layer = make({"feature_map": "favor", "n_features": m}, seed=seed, dim=64, heads=4)
            got = layer.attend(q, k, v, None)
            errs.append(((got - want).norm() / want.norm()).item())
        err[m] = sum(errs) / len(errs)
    assert err[16] > 1.8 * err[256] > 1.8 * 1.5 * err[2048], err
    assert err[2048] < 0.1, err
    # and elu features are not softmax: the FAVOR+ approximation must beat them
    elu = make({}, dim=64, heads=4).attend(q, k, v, None)
    assert err[2048] < ((elu - want).norm() / want.norm()).item()


def test_favor_padding_and_holes_equal_compact_run():
    """Non-contiguous padding: real tokens' outputs equal running on the real tokens alone."""
    layer = make({"feature_map": "favor"})
    mask = masks(3, 40)["holes"]
    # scale 4: every real key's logits w^T k' - |k'|^2/2 are negative, so a stabiliser that let a padded
    # (zeroed) key in would be 0 instead of the real keys' max, and the FAVOR_EPS term would show it
    for scale in (1.0, 4.0):
        q, k, v = qkv(3, 40, scale=scale)
        k = torch.where(mask[:, None, :, None], k, torch.full_like(k, 50.0))  # junk that would dominate the max
        out = layer.attend(q, k, v, mask)
        for b in range(3):
            idx = mask[b].nonzero().squeeze(1)
            alone = layer.attend(q[b:b + 1, :, idx], k[b:b + 1, :, idx], v[b:b + 1, :, idx], None)
            torch.testing.assert_close(out[b:b + 1, :, idx], alone, rtol=0, atol=1e-10,
                                       msg=lambda m, scale=scale: f"scale {scale}: {m}")


@pytest.mark.parametrize("params", [{"feature_map": "favor"}, {"feature_map": "favor", "redraw": True}])
def test_favor_layer_gradients_and_padding(params):
    """The registry tests run the default (elu); the same checks for FAVOR+ at the layer level."""
    layer = make(params, dtype=torch.float32).train()
    x = randn(3, 24, DIM, dtype=torch.float32).requires_grad_()
    mask = torch.arange(24)[None, :] < torch.tensor([24, 20, 5])[:, None]
    (layer(x, mask) * randn(3, 24, DIM, seed=2, dtype=torch.float32)).sum().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    layer = make(params)  # eval, float64: appended junk padding changes nothing
    x = randn(2, 24, DIM)
    ref = layer(x)
    xp = torch.cat([x, randn(2, 5, DIM, seed=9) * 100], dim=1)
    mask = torch.arange(29)[None, :] < 24
    torch.testing.assert_close(layer(xp, mask.expand(2, -1))[:, :24], ref, rtol=0, atol=1e-10)


# ---------------------------------------------------------------- positivity and precision

def test_elu_features_strictly_positive_and_normaliser_positive():
    x = torch.linspace(-60, 60, 1001, dtype=torch.float32)
    phi = elu_feature_map(x)
    assert (phi > 0).all()
    x64 = x.double()  # reference: elu+1 where float64 keeps it accurate, exp(x) beyond
    want = torch.where(x64 > -10, torch.nn.functional.elu(x64) + 1, torch.exp(x64)).float()
    torch.testing.assert_close(phi, want, rtol=1e-6, atol=0)
    assert (torch.nn.functional.elu(x) + 1 == 0).any(), "the naive form underflows here; this guards the rewrite"
    layer = make({}, dtype=torch.float32)
    q, k, _ = qkv(2, 64, dtype=torch.float32, scale=20.0)  # many very negative entries
    mask = masks(2, 64)["holes"]
    phi_q, phi_k = layer.feature_maps(q, k, mask)
    assert (phi_q > 0).all() and (phi_k[mask[:, None, :].expand(-1, HEADS, -1)] > 0).all()
    assert (phi_k[~mask[:, None, :].expand(-1, HEADS, -1)] == 0).all()
    den = torch.einsum("bhnf,bhf->bhn", phi_q, phi_k.sum(-2))
    assert (den > 0).all()


@pytest.mark.parametrize("fmap", MAPS)
def test_half_precision_inputs_computed_in_float32(fmap):
    layer = make({"feature_map": fmap}, dtype=torch.float32)
    q, k, v = qkv(2, 64, dtype=torch.bfloat16)
    mask = masks(2, 64)["ragged"]
    out = layer.attend(q, k, v, mask)
    assert out.dtype == torch.bfloat16
    ref32 = layer.attend(q.float(), k.float(), v.float(), mask)
    # the same float32 computation on the same values, rounded once at the end
    assert torch.equal(out, ref32.to(torch.bfloat16))
    ref64 = dense_linear_attention(layer, q.double(), k.double(), v.double(), mask)
    torch.testing.assert_close(out.double(), ref64, rtol=1e-2, atol=1e-2)
    # autocast does not push the sums down to bf16 either
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = layer.attend(q.float(), k.float(), v.float(), mask)
    assert auto.dtype == torch.float32 and torch.equal(auto, ref32)
    # float64 stays float64
    assert layer.double().attend(q.double(), k.double(), v.double(), mask).dtype == torch.float64


# ---------------------------------------------------------------- randomness conventions

def test_eval_deterministic_and_redraw_in_training():
    x = randn(2, 24, DIM)
    a = make({"feature_map": "favor", "redraw": True})
    b = make({"feature_map": "favor", "redraw": True})
    assert torch.equal(a.projection, b.projection)  # same model seed -> same layer features
    out = a(x)
    torch.manual_seed(123)  # eval ignores the global generator
    assert torch.equal(a(x), out) and torch.equal(b(x), out)
    a.train()
    t1, t2 = a(x), a(x)
    assert not torch.allclose(t1, t2), "redraw=True: training forwards use fresh features"
    assert not torch.allclose(t1, out)
    assert torch.equal(a.eval()(x), out), "training redraws leave the fixed eval features alone"
    # without redraw, training uses the fixed features
    c = make({"feature_map": "favor"})
    ref = c(x)
    c.train()
    assert torch.equal(c(x), ref) and torch.equal(c(x), ref)
    # layers built one after another get different features; eval_seed changes them too
    torch.manual_seed(0)
    l1 = build_attention("linear", DIM, HEADS, {"feature_map": "favor"}, max_len=MAX_LEN)
    l2 = build_attention("linear", DIM, HEADS, {"feature_map": "favor"}, max_len=MAX_LEN)
    assert not torch.allclose(l1.projection, l2.projection)
    assert not torch.allclose(make({"feature_map": "favor", "eval_seed": 1}, dtype=torch.float32).projection,
                              l1.projection)
    # the fixed features travel with the state dict
    assert "projection" in l1.state_dict()


def test_projection_block_orthogonal_with_chi_norms():
    layer = make({"feature_map": "favor"})
    w = layer.projection
    assert w.shape == (int(DH * math.log(DH)), DH) == (44, 16)
    for proj in (w, orthogonal_gaussian_projection(300, DH)):  # fixed, and a redraw-style draw
        norms = proj.norm(dim=1)
        for start in range(0, proj.shape[0], DH):
            block = proj[start:start + DH]
            gram = block @ block.T
            off = gram - torch.diag(torch.diagonal(gram))
            assert off.abs().max() < 1e-5 * gram.diagonal().max(), f"block at row {start}"
        assert norms.std() > 0.1 * norms.mean(), "rows keep chi-distributed, not equal, norms"
    big = orthogonal_gaussian_projection(4096, DH, torch.Generator().manual_seed(0))
    sq = big.norm(dim=1) ** 2  # chi^2_d: mean d, variance 2d
    assert abs(sq.mean().item() - DH) < 4 * math.sqrt(2 * DH / 4096)
    assert abs(sq.var().item() - 2 * DH) < 0.2 * 2 * DH
    # directions within a block are uniformly oriented (Haar): the mean direction is near zero
    assert (big / big.norm(dim=1, keepdim=True)).mean(0).abs().max() < 0.1


# ---------------------------------------------------------------- config and cost

def test_config_and_flops():
    assert make({}).n_features == DH and not hasattr(make({}), "projection")
    assert make({"feature_map": "favor", "n_features": 7}).projection.shape == (7, DH)
    with pytest.raises(ValueError, match="feature_map"):
        build_attention("linear", DIM, HEADS, {"feature_map": "gelu"}, max_len=MAX_LEN)
    for fmap in MAPS:
        layer = make({"feature_map": fmap})
        assert layer.flops(2, 2048) == 2 * layer.flops(2, 1024), "linear in N"
        assert layer.flops(2, 1024) > layer.projection_flops(2, 1024)
    assert LinearAttention.linear_memory and not LinearAttention.exact


def test_elu_feature_map_gradient_matches_finite_differences():
    from attnbench.variants.linear import elu_feature_map

    x = (torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_()
    assert torch.autograd.gradcheck(elu_feature_map, (x,))
    # and equals elu(x) + 1 with autograd's own derivative
    y = torch.nn.functional.elu(x) + 1
    torch.testing.assert_close(elu_feature_map(x), y, rtol=0, atol=1e-15)
    (g1,) = torch.autograd.grad(elu_feature_map(x).sum(), x)
    (g2,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-15)


@pytest.mark.parametrize("is_query,padded", [(True, False), (False, False), (False, True)])
def test_favor_features_gradient_equals_autograd_of_the_formula(is_query, padded):
    """The FAVOR+ features' hand-written backward pass (queries; keys, with padded keys zeroed and left
    out of the stabiliser) against autograd through the formula written out, stabiliser included (the
    forward depends on it: the constant is added after exp(. - s)), and against finite differences."""
    from attnbench.variants.linear import favor_features

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    proj = orthogonal_gaussian_projection(6, 4, g)
    mask = torch.ones(2, 7, dtype=torch.bool)
    if padded:
        mask[0, 5:] = False
        mask[1, 1] = False
    upstream = torch.randn(2, 2, 7, 6, generator=g, dtype=torch.float64)
    ours = favor_features(x, proj, is_query, mask if padded else None)
    (d_ours,) = torch.autograd.grad((ours * upstream).sum(), x)

    xs = x * 4 ** -0.25
    logits = xs @ proj.T - 0.5 * (xs * xs).sum(-1, keepdim=True)
    keep = mask[:, None, :, None]
    if is_query:
        stab = logits.amax(-1, keepdim=True)
    else:
        stab = logits.masked_fill(~keep, float("-inf")).amax(dim=(-2, -1), keepdim=True)
    want = (torch.exp(logits - stab) + FAVOR_EPS) / math.sqrt(6)
    if not is_query:
        want = want.masked_fill(~keep, 0.0)
    (d_want,) = torch.autograd.grad((want * upstream).sum(), x)
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d_ours, d_want, rtol=1e-10, atol=1e-12)
    if padded:
        assert torch.count_nonzero(d_ours[0, :, 5:]) == 0  # padded keys get no gradient
    assert torch.autograd.gradcheck(lambda t: favor_features(t, proj, is_query, mask if padded else None), (x,))


class _Made(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the device of every tensor an operator makes."""

    def __init__(self):
        super().__init__()
        self.devices: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.devices.append((str(func), t.device.type))
        return out


def test_favor_redraw_draws_on_the_layers_device_reproducibly():
    """FAVOR+ ``redraw: true`` draws each training forward's projection where the layer lives (the
    default generator of its device, QR there too): no tensor of the draw is made in host memory and
    copied over, which on a GPU is a blocking copy per layer per step. The layer is put on the meta device
    here, which any host tensor would stand out from (autocast has no meta device, so the feature maps
    stand for the forward). A seed fixes the draws."""
    layer = make({"feature_map": "favor", "redraw": True}, dtype=torch.float32).train().to("meta")
    spy = _Made()
    with spy:
        proj = layer.current_projection()
        q, k = (torch.empty(2, HEADS, 24, DH, device="meta") for _ in range(2))
        phi_q, phi_k = layer.feature_maps(q, k, None)  # what a training forward computes with it
    assert proj.device.type == "meta" and proj.shape == (layer.n_features, DH) and proj.dtype == torch.float32
    assert phi_q.device.type == phi_k.device.type == "meta" and phi_q.shape == (2, HEADS, 24, layer.n_features)
    on_host = [name for name, device in spy.devices if device != "meta"]
    assert spy.devices and not on_host, f"made in host memory: {on_host}"
    # on the CPU (the layer's device there): the same seed gives the same draws, another seed others
    layer = make({"feature_map": "favor", "redraw": True}, dtype=torch.float32).train()
    draws = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        draws.append((layer.current_projection(), layer.current_projection()))
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert not torch.equal(draws[0][0], draws[0][1]) and not torch.equal(draws[0][0], draws[2][0])
    assert not torch.equal(draws[0][0], layer.projection)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run make gpu-check)")
def test_cuda_favor_redraw_draws_on_the_gpu_without_a_copy():
    layer = make({"feature_map": "favor", "redraw": True}, dtype=torch.float32).train().cuda()
    torch.manual_seed(5)
    layer.current_projection()  # cuSOLVER / cuBLAS set-up on first use may synchronise
    torch.manual_seed(5)
    spy = _Made()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # the draw (QR included) queues its work and goes on
    try:
        with spy:
            a = layer.current_projection()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert a.is_cuda and all(device == "cuda" for _, device in spy.devices), spy.devices
    torch.manual_seed(5)
    assert torch.equal(layer.current_projection(), a)
    w = a.double()
    for start in range(0, w.shape[0], DH):  # block-orthogonal rows, as on the CPU
        gram = w[start:start + DH] @ w[start:start + DH].T
        off = gram - torch.diag(torch.diagonal(gram))
        assert off.abs().max() < 1e-4 * gram.diagonal().max()
