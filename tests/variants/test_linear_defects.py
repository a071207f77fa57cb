"""Regression tests for issue 32's ``linear`` defects, each its reproduction from the issue:

2. FAVOR+'s hand-written backward treated the stabiliser as a constant although the forward depends
   on it (the constant is added after exp(. - s)): gradcheck failed with the default constants;
3. ``eps: 0`` gave NaN (0/0) for a batch element without any real token, for elu and favor (and the
   relu map added since), although the docstring promises zeros.
"""
from __future__ import annotations

import pytest
import torch

from attnbench.variants import build_attention


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors on shared cores: one thread is faster (conftest restores the count)."""
    torch.set_num_threads(1)


@pytest.mark.slow
def test_issue32_favor_gradcheck_with_the_default_constants():
    """The issue's reproduction, verbatim: it printed False."""
    torch.manual_seed(0)
    x = torch.randn(1, 10, 8, dtype=torch.float64, requires_grad=True)
    layer = build_attention("linear", 8, 2, {"feature_map": "favor", "n_features": 32}, max_len=10).double().eval()
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,), raise_exception=False)


@pytest.mark.slow
@pytest.mark.parametrize("params", [{"feature_map": "favor"}, {"feature_map": "favor", "n_features": 3},
                                    {"feature_map": "favor", "stabiliser": "lra"}])
def test_favor_gradcheck_with_padded_rows_and_an_empty_element(params):
    """Padded rows included (their outputs are in the checked function), and an element without real keys."""
    torch.manual_seed(1)
    layer = build_attention("linear", 8, 2, params, max_len=7).double().eval()
    x = (torch.randn(3, 7, 8, dtype=torch.float64) * 2).requires_grad_()
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4, [False] * 7])
    assert torch.autograd.gradcheck(lambda t: layer(t, mask), (x,))


def test_favor_gradient_differs_from_the_detached_stabiliser_one():
    """The fix has teeth: with the stabiliser detached (the old backward) the gradient is off by more
    than rounding, at a scale where FAVOR_EPS is not negligible against exp(. - s)."""
    from attnbench.variants.linear import FAVOR_EPS, favor_features

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(1, 1, 6, 4, generator=g, dtype=torch.float64) * 3).requires_grad_()
    proj = torch.randn(5, 4, generator=g, dtype=torch.float64)
    up = torch.randn(1, 1, 6, 5, generator=g, dtype=torch.float64)
    for is_query in (True, False):
        (ours,) = torch.autograd.grad((favor_features(x, proj, is_query) * up).sum(), x)
        xs = x * 4 ** -0.25
        logits = xs @ proj.T - 0.5 * (xs * xs).sum(-1, keepdim=True)
        stab = logits.amax(-1, keepdim=True) if is_query else logits.amax((-2, -1), keepdim=True)
        detached = (torch.exp(logits - stab.detach()) + FAVOR_EPS) / 5 ** 0.5
        (old,) = torch.autograd.grad((detached * up).sum(), x)
        assert (ours - old).abs().max() > 1e-6, is_query


@pytest.mark.parametrize("fmap", ["elu", "favor", "relu"])
def test_issue32_eps_0_gives_zeros_for_an_element_without_real_tokens(fmap):
    """The issue's reproduction (elu), for every feature map: it gave NaN."""
    torch.manual_seed(0)
    layer = build_attention("linear", 8, 2, {"eps": 0.0, "feature_map": fmap}, max_len=6).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 6, [False] * 6])
    out = layer(x, mask)
    assert torch.isfinite(out).all()
    # the layer's output for an element with nothing to attend to: zeros through the output projection
    torch.testing.assert_close(out[1], layer.out.bias.expand(6, -1), rtol=0, atol=0)
    q, k, v = (t.detach() for t in layer.qkv(x).view(2, 6, 3, 2, 4).permute(2, 0, 3, 1, 4))
    assert torch.equal(layer.eval().attend(q, k, v, mask)[1], torch.zeros(2, 6, 4, dtype=torch.float64))
    # the real element is what eps 0 means there: the plain ratio, no epsilon
    full = build_attention("linear", 8, 2, {"eps": 0.0, "feature_map": fmap}, max_len=6).double().eval()
    full.load_state_dict(layer.state_dict())
    torch.testing.assert_close(out[0], full(x[:1])[0], rtol=0, atol=1e-14)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all() and torch.count_nonzero(grad[1]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("fmap", ["elu", "favor", "relu"])
def test_eps_0_gradcheck_with_an_element_without_real_tokens(fmap):
    torch.manual_seed(2)
    layer = build_attention("linear", 8, 2, {"eps": 0.0, "feature_map": fmap}, max_len=5).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 3 + [False] * 2, [False] * 5])
    assert torch.autograd.gradcheck(lambda t: layer(t, mask), (x,))
