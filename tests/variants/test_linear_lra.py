"""``linear`` in the forms LRA's code ran its Performer row (issue 30, item 1), against dense float64
re-implementations of google-research/long-range-arena's lra_benchmarks/models/performer/
performer_attention.py written here from its code:

- ``{feature_map: relu, eps: 0}`` or ``{feature_map: relu, stabiliser: lra}`` (the same function):
  ``make_fast_generalized_attention`` with its defaults (:263-272):
  deterministic features relu(x) + 1e-3 of the unscaled queries and keys (:186, :267-269, :293), no
  numerical stabiliser in the normaliser (:265, :695-696);
- ``{feature_map: favor, n_features: 2, redraw: true, stabiliser: lra}``: ListOps'
  ``make_fast_softmax_attention(nb_features=2, ortho_scaling=0)`` (listops/configs/performer_base.py:27):
  ratio (exp(x' W^T - |x'|^2/2 - max(x' W^T)) + 1e-6) features (:98-106, the max per query row and
  per (batch, head) over keys and features), W = Q'(K'^T V), R = Q' K'^T 1, R + 2e-6 where |R| <= 1e-6
  (:695-696), W / R; features redrawn every call (:580-584; here from torch's generator in training).

LRA's Performer masks no padding; attnbench does, so with padding the layer must equal LRA's function
on the element without its padding (the real keys only), which is what is checked for padded inputs.
"""
from __future__ import annotations

import pytest
import torch

from attnbench.harness.conformance import checks
from attnbench.variants import build_attention
from attnbench.variants.linear import LinearAttention, orthogonal_gaussian_projection

DIM, HEADS = 16, 2
DH = DIM // HEADS
LISTOPS = {"feature_map": "favor", "n_features": 2, "redraw": True, "stabiliser": "lra"}
GENERALIZED = {"feature_map": "relu", "eps": 0.0}
#: the same function: LRA's guard adds 2 eps only where R <= eps, and relu + 1e-3 features make R >= d 1e-6 > eps
#: wherever there is a real key (an element without any gives zeros either way)
GENERALIZED_GUARDED = {"feature_map": "relu", "stabiliser": "lra"}


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors on shared cores: one thread is faster (conftest restores the count)."""
    torch.set_num_threads(1)


def make(params, seed=0) -> LinearAttention:
    torch.manual_seed(seed)
    return build_attention("linear", DIM, HEADS, params, max_len=64).double().eval()


def randn(*shape, seed, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


# ---------------------------------------------------------------- LRA's functions, densely, in float64

def lra_generalized_features(x):
    """generalized_kernel_feature_creator with projection_matrix None, normalize_data False (:186)."""
    return torch.relu(x) + 0.001


def lra_softmax_features(x, projection, is_query, eps=1e-6):
    """nonnegative_softmax_kernel_feature_creator (:57-108) with normalize_data True, on (B, H, N, d)."""
    normalizer = 1.0 / x.shape[-1] ** 0.25
    ratio = 1.0 / projection.shape[0] ** 0.5
    dash = (normalizer * x) @ projection.T
    diag = ((x ** 2).sum(-1, keepdim=True) / 2.0) * normalizer * normalizer
    stab = dash.amax(-1, keepdim=True) if is_query else dash.amax((-2, -1), keepdim=True)
    return ratio * (torch.exp(dash - diag - stab) + eps)


def lra_renormalised(q_prime, k_prime, v, stabilizer):
    """FastAttentionviaLowRankDecomposition, bidirectional and renormalised (:647-699), via the dense
    N x N matrix A = Q' K'^T: W = A V, R = A 1, R + 2 stabilizer where |R| <= stabilizer, W / R."""
    a = q_prime @ k_prime.transpose(-2, -1)
    w, r = a @ v, a.sum(-1, keepdim=True)
    r = r + 2 * stabilizer * (r.abs() <= stabilizer).to(r.dtype)  # (a bool times a float is float32)
    return w * torch.reciprocal(r)


def lra_generalized(q, k, v):
    return lra_renormalised(lra_generalized_features(q), lra_generalized_features(k), v, 0.0)


def lra_favor(q, k, v, projection):
    return lra_renormalised(lra_softmax_features(q, projection, True),
                            lra_softmax_features(k, projection, False), v, 1e-6)


def per_element_without_padding(fn, q, k, v, mask):
    """LRA's function on each element's real keys only (LRA masks nothing; attnbench drops padding)."""
    if mask is None:
        return fn(q, k, v)
    return torch.cat([fn(q[b:b + 1], k[b:b + 1, :, mask[b]], v[b:b + 1, :, mask[b]]) for b in range(q.shape[0])])


MASKS = {"none": None, "ragged": torch.arange(24)[None, :] < torch.tensor([24, 13, 5])[:, None]}


def inputs(scale, seed=1):
    return tuple(randn(3, HEADS, 24, DH, seed=seed + i, scale=s).requires_grad_()
                 for i, s in enumerate((scale, scale, 1.0)))


def check(layer, reference, q, k, v, mask, seed=None):
    """The layer's attend (re-seeding torch's generator with ``seed`` first, for a redraw) against the
    reference: outputs and gradients of q, k, v, at the real queries."""
    if seed is not None:
        torch.manual_seed(seed)
    got = layer.attend(q, k, v, mask)
    want = per_element_without_padding(reference, q, k, v, mask)
    real = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool) if mask is None else mask
    sel = real[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[sel], want[sel], rtol=0, atol=1e-10)
    up = randn(*got.shape, seed=99) * sel
    g_got = torch.autograd.grad((got * up).sum(), (q, k, v))
    g_want = torch.autograd.grad((want * up).sum(), (q, k, v))
    for name, a, b in zip("qkv", g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda m, name=name: f"d{name}: {m}")
    return got


# ---------------------------------------------------------------- the generalized (ReLU) form

@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
@pytest.mark.parametrize("scale", [0.5, 3.0])
@pytest.mark.parametrize("params", [GENERALIZED, GENERALIZED_GUARDED], ids=["eps 0", "stabiliser lra"])
def test_relu_equals_lras_generalized_attention(params, mask, scale):
    layer = make(params)
    assert not hasattr(layer, "projection"), "deterministic features: no random projection"
    q, k, v = inputs(scale)
    check(layer, lra_generalized, q, k, v, mask)


def test_relu_reference_has_teeth():
    """Many entries are negative (relu cuts them to the 1e-3 floor), the weights are far from uniform,
    and relu+1e-3 differs from elu+1 on the same inputs."""
    q, k, v = (t.detach() for t in inputs(3.0))
    assert (q < 0).float().mean() > 0.3
    out = lra_generalized(q, k, v)
    assert (out - v.mean(-2, keepdim=True)).abs().max() > 0.1
    assert (make(GENERALIZED).attend(q, k, v, None) - make({}).attend(q, k, v, None)).abs().max() > 0.05


def test_relu_is_published_as_performer():
    assert LinearAttention.published_as(GENERALIZED) == "Performer"
    assert LinearAttention.published_as({"feature_map": "favor"}) == "Performer"
    assert LinearAttention.published_as({}) == "Linear Trans."


# ---------------------------------------------------------------- ListOps' FAVOR+ (2 redrawn features)

@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
@pytest.mark.parametrize("scale", [0.5, 2.0, 4.0])  # at 2 the guard fires for some queries, at 4 for all
def test_favor_lra_equals_lras_softmax_attention_with_the_layers_features(mask, scale):
    """Eval: the layer's fixed features, copied into the reference."""
    layer = make(LISTOPS)
    assert layer.projection.shape == (2, DH)
    q, k, v = inputs(scale)
    check(layer, lambda *a: lra_favor(*a, layer.projection), q, k, v, mask)


def test_favor_lra_redraws_in_training_and_equals_lra_with_the_drawn_features():
    """Training: every call draws fresh features from torch's generator; the reference, given the same
    draw (re-seeded), agrees. Eval keeps the fixed draw (LRA redraws there too: a documented difference)."""
    layer = make(LISTOPS).train()
    q, k, v = inputs(2.0)
    mask = MASKS["ragged"]
    torch.manual_seed(5)
    drawn = orthogonal_gaussian_projection(2, DH)
    first = check(layer, lambda *a: lra_favor(*a, drawn), q, k, v, mask, seed=5)
    second = layer.attend(q, k, v, mask)
    assert not torch.allclose(first, second), "a fresh draw each training call"
    layer.eval()
    fixed = layer.attend(q, k, v, mask)
    torch.manual_seed(123)
    assert torch.equal(layer.attend(q, k, v, mask), fixed)


def test_favor_lra_reference_has_teeth():
    """At a large scale LRA's numerics matter: its stabiliser max(w^T x') leaves exp(-|x'|^2/2) against
    the 1e-6 constant, and its normaliser guard fires (R <= 1e-6) for some queries, not all; the default
    stabiliser gives another output there. At a small scale the two agree closely."""
    layer = make(LISTOPS)
    w = layer.projection
    q, k, v = (t.detach() for t in inputs(2.0))
    r = (lra_softmax_features(q, w, True) @ lra_softmax_features(k, w, False).transpose(-2, -1)).sum(-1)
    fired = r <= 1e-6
    assert fired.any() and not fired.all()
    default = make({**LISTOPS, "stabiliser": "default"})
    assert (layer.attend(q, k, v, None) - default.attend(q, k, v, None)).abs().max() > 0.1
    q, k, v = (t.detach() for t in inputs(0.3))
    torch.testing.assert_close(layer.attend(q, k, v, None), default.attend(q, k, v, None), rtol=0, atol=1e-3)


def test_favor_projection_has_lras_ortho_scaling_0_row_norms():
    """ortho_scaling 0 (:369-371): each row scaled by the norm of a d-dimensional Gaussian vector
    (chi(d)), as ours; with 2 features both rows come from one QR block and are orthogonal."""
    w = orthogonal_gaussian_projection(2, DH, torch.Generator().manual_seed(0))
    assert abs(float(w[0] @ w[1])) < 1e-12
    sq = orthogonal_gaussian_projection(20000, DH, torch.Generator().manual_seed(1)).norm(dim=1) ** 2
    assert abs(sq.mean().item() - DH) < 0.1 and abs(sq.var().item() - 2 * DH) < 0.6  # chi^2_d


# ---------------------------------------------------------------- gradients and configuration

@pytest.mark.slow
@pytest.mark.parametrize("params", [GENERALIZED, LISTOPS, {**LISTOPS, "eps": 0.0},
                                    {"feature_map": "relu"}, {"feature_map": "relu", "stabiliser": "lra"}])
def test_lra_forms_pass_gradcheck_with_padding(params):
    layer = make(params)  # eval: the fixed features
    x = randn(2, 7, DIM, seed=3, scale=2.0).requires_grad_()
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    assert torch.autograd.gradcheck(lambda t: layer(t, mask), (x,))


def test_stabiliser_lra_refused_for_elu_and_unknown_values():
    with pytest.raises(ValueError, match="Linear Trans"):
        build_attention("linear", DIM, HEADS, {"stabiliser": "lra"}, max_len=8)
    with pytest.raises(ValueError, match="stabiliser"):
        build_attention("linear", DIM, HEADS, {"feature_map": "favor", "stabiliser": "x"}, max_len=8)


def test_new_options_are_added_later_and_leave_defaults_unchanged():
    """The default form is unchanged: stabiliser 'default' is the elu/favor computation from before
    (its hash field is added_later, so existing configs keep their run hashes)."""
    from dataclasses import fields

    from attnbench.harness.core.registry import ADDED_LATER
    from attnbench.variants.linear import LinearConfig

    later = {f.name for f in fields(LinearConfig) if f.metadata.get(ADDED_LATER)}
    assert later == {"stabiliser"}
    assert LinearConfig().stabiliser == "default" and LinearConfig().feature_map == "elu"


#: the registry's conformance checks (harness/conformance/checks.py) on the LRA forms and on FAVOR+, whose
#: backward pass changed (the registry-wide tests build ``linear`` with its defaults, elu). These forms keep
#: every convention: padding is masked (LRA masks none, but that is the separate ``mask_padding`` question)
#: and the redrawn features are fixed in eval mode
CONFORMANCE_FORMS = {"relu": GENERALIZED, "favor-listops": LISTOPS, "favor": {"feature_map": "favor"}}


@pytest.mark.parametrize("check", checks.FAST_CHECKS)
@pytest.mark.parametrize("form", CONFORMANCE_FORMS)
def test_conformance_of_the_lra_forms(form, check, monkeypatch):
    monkeypatch.setattr(LinearAttention, "small_params", CONFORMANCE_FORMS[form])
    (result,) = checks.run_checks("linear", [check])
    assert result.status == "pass", result


@pytest.mark.slow
@pytest.mark.parametrize("form", CONFORMANCE_FORMS)
def test_lra_forms_compile_whole_and_compute_the_same(form):
    """As tests/variants/test_compile_fullgraph.py for the defaults: one graph for the forward (training,
    an all-padding element included), and the plain layer's outputs and gradients."""
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(0)
    layer = build_attention("linear", DIM, HEADS, CONFORMANCE_FORMS[form], max_len=24).train()
    x0 = torch.randn(3, 24, DIM, generator=torch.Generator().manual_seed(3))
    mask = torch.arange(24)[None, :] < torch.tensor([24, 13, 0])[:, None]

    def run(fn):
        x = x0.clone().requires_grad_()
        torch.manual_seed(1)
        out = fn(x, mask)
        return [out, *torch.autograd.grad(out.square().sum(), [x, *layer.parameters()])]

    torch._dynamo.reset()
    graphs = CompileCounter()
    try:
        got = run(torch.compile(layer, backend=graphs))
        assert graphs.frame_count == 1, f"{graphs.frame_count} graphs: the forward breaks"
    finally:
        torch._dynamo.reset()
    for g, w in zip(got, run(layer), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
