"""LRA's released Local and Sinkhorn layers (issue 30, items 5 and 6): ``local`` with ``groups: strided`` and
``sinkhorn`` with ``form: lra_released``, against dense float64 re-implementations of LRA's functions written
here from its code (``lra_benchmarks/models/local/local_attention.py``,
``models/sinkhorn_transformer/sinkhorn_attention.py``), in LRA's own layout (batch, L, heads, d), with its
reshapes and einsums: the strided (batch, b, L/b, ...) grouping, the padding mask reshaped in consecutive runs,
Local's extra block of zero tokens counted as real, Sinkhorn's einsum that adds every group's keys and its
sorted mask, the -1e10 bias, the two halves added. Then hand-computed cases, the conventions these forms
break by design (stated, not skipped), and that they compile whole.

LRA adds -1e10 to a masked logit. In its float32 that absorbs the logit (|logit| < 512), so the
references here, in float64, replace the logit by -1e10 instead: the float32 outcome
(``test_minus_1e10_absorbs_the_logit_in_float32`` checks the premise).
"""
from __future__ import annotations

import math

import pytest
import torch
from test_compile_fullgraph import assert_compiles_whole_and_matches

from attnbench.harness.conformance import checks
from attnbench.harness.conformance.checks import lengths_mask
from attnbench.harness.core.registry import as_dict
from attnbench.variants import VARIANTS, build_attention
from attnbench.variants.lib.strided_groups import lra_group_attention
from attnbench.variants.local import LocalAttention, LocalConfig
from attnbench.variants.sinkhorn import LRA_MAX_NUM_BLOCKS, SinkhornAttention, SinkhornConfig
from conftest import largest_saved_tensor

B, H, D = 3, 2, 4
MAX_LEN = 4096
NEG = -1e10  # LRA's bias on a masked logit


def qkv(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g, dtype=dtype) for _ in range(3)]


def local(block, dtype=torch.float64, **params):
    torch.manual_seed(0)
    return build_attention("local", H * D, H, {"block_size": block, "groups": "strided", **params},
                           max_len=MAX_LEN).to(dtype).eval()


def sinkhorn(block, dtype=torch.float64, **params):
    torch.manual_seed(0)
    return build_attention("sinkhorn", H * D, H, {"block_size": block, "form": "lra_released", **params},
                           max_len=MAX_LEN).to(dtype).eval()


def masks(n):
    """No mask, ragged lengths with an all-padding element, and holes (black pixels) in real tokens."""
    ragged = lengths_mask([n, max(1, n - 7), 0], n)
    noise = torch.rand(B, n, generator=torch.Generator().manual_seed(7))
    holes = lengths_mask([n, n, max(1, n - 3)], n) & (noise > 0.3)
    return [None, ragged, holes]


# ---------------------------------------------------------------- LRA's functions, densely, in its layout

def lra_dot_product_attention(query, key, value, bias):
    """LRA's ``local_dot_product_attention`` with ``attention_axis=(1,)``: (bs, b, nb, H, d) inputs, softmax
    along the b axis; ``bias`` (bs, nb, b, b) with 0 = allowed, -1e10 = masked, put in place of the logit."""
    qt, kt, vt = (t.permute(0, 2, 3, 1, 4) for t in (query, key, value))  # (bs, nb, H, b, d)
    logits = (qt / math.sqrt(query.shape[-1])) @ kt.transpose(-1, -2)
    if bias is not None:
        logits = torch.where(bias[:, :, None] < 0, NEG, logits)  # float32's -1e10 + logit
    y = torch.softmax(logits, dim=-1) @ vt  # (bs, nb, H, b, d)
    return y.permute(0, 3, 1, 2, 4)  # back to (bs, b, nb, H, d)


def lra_padding_bias(padding_mask, bs, nb, b):
    """LRA's padding mask (bs, L) reshaped to (bs * nb, b, 1), ``make_padding_mask`` of it with itself, reshaped
    to (bs, nb, b, b): the mask (as 0/1) and its bias."""
    pm = padding_mask.reshape(bs * nb, b, 1).to(torch.float64)
    pair = (pm[:, :, None, :] * pm[:, None, :, :].transpose(-1, -2)).reshape(bs, nb, b, b)
    return pair, torch.where(pair > 0, 0.0, NEG)


def to_lra(t):
    return t.transpose(1, 2)  # (B, H, N, D) -> (bs, L, H, d)


def lra_local(q, k, v, mask, block):
    """local_attention.py: pad by extra_len zero tokens (mask padded with -1e9: True), reshape to
    (bs, block, L/block, H, d), attend along block, cut back to the original length."""
    q, k, v = (to_lra(t) for t in (q, k, v))
    bs, n = q.shape[:2]
    extra = block - n % block
    q, k, v = (torch.cat([t, t.new_zeros(bs, extra, H, D)], dim=1) for t in (q, k, v))
    pad_mask = torch.ones(bs, n + extra, dtype=torch.bool)
    if mask is not None:
        pad_mask[:, :n] = mask
    nb = (n + extra) // block
    query, key, value = (t.reshape(bs, block, nb, H, D) for t in (q, k, v))
    _, bias = lra_padding_bias(pad_mask, bs, nb, block)
    x = lra_dot_product_attention(query, key, value, bias).reshape(bs, n + extra, H, D)
    return x[:, :n].transpose(1, 2)


def lra_sinkhorn(layer, q, k, v, mask):
    """sinkhorn_attention.py with ``sort_activation='softmax'``: strided blocks, the sort net on the key sums,
    softmax, the einsums 'bskhd,bnhl->bsnhd' and 'bksj,bnhl->bnsj', two attentions added. A length that is not
    a multiple of the block (LRA's reshape would fail) is padded with zero tokens that are padding (mask
    False), as the layer documents."""
    q, k, v = (to_lra(t) for t in (q, k, v))
    bs, n = q.shape[:2]
    block = layer.block(n)
    extra = (-n) % block
    q, k, v = (torch.cat([t, t.new_zeros(bs, extra, H, D)], dim=1) for t in (q, k, v))
    padding_mask = torch.zeros(bs, n + extra, dtype=torch.bool)
    padding_mask[:, :n] = True if mask is None else mask
    nb = (n + extra) // block
    block_query, block_key, block_value = (t.reshape(bs, block, nb, H, D) for t in (q, k, v))
    sum_key = block_key.sum(dim=1)  # (bs, nb, H, d)
    sort_out = (sum_key @ layer.sort_weight.to(torch.float64))[..., :nb]  # (bs, nb, H, min(25, nb))
    permutation = torch.softmax(sort_out, dim=-1)
    sorted_key = torch.einsum("bskhd,bnhl->bsnhd", block_key, permutation)
    sorted_value = torch.einsum("bskhd,bnhl->bsnhd", block_value, permutation)
    bias = sorted_bias = None
    if mask is not None or extra:
        pair, bias = lra_padding_bias(padding_mask, bs, nb, block)
        sorted_pair = torch.einsum("bksj,bnhl->bnsj", pair, permutation)
        sorted_bias = torch.where(sorted_pair > 0, 0.0, NEG)
    x = lra_dot_product_attention(block_query, block_key, block_value, bias)
    sorted_x = lra_dot_product_attention(block_query, sorted_key, sorted_value, sorted_bias)
    return (x + sorted_x).reshape(bs, n + extra, H, D)[:, :n].transpose(1, 2)


def test_minus_1e10_absorbs_the_logit_in_float32():
    """The premise of the references: in float32, -1e10 + a logit is -1e10 (so a fully masked row is uniform)."""
    logits = torch.linspace(-500, 500, 1001, dtype=torch.float32)
    assert torch.equal(logits + NEG, torch.full_like(logits, NEG))


def test_group_attention_equals_lra_float32_bias_literally():
    """The shared kernel against LRA's float32 arithmetic as written (the bias added, not put in place)."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(5, H, 6, D, generator=g) * 3 for _ in range(3))
    allowed = torch.rand(5, 1, 6, 6, generator=g) > 0.5
    allowed[0] = False  # a group without any allowed pair
    allowed[1, :, 2] = False  # one fully masked query row
    logits = (q / math.sqrt(D)) @ k.transpose(-1, -2) + torch.where(allowed, 0.0, NEG)
    want = torch.softmax(logits, dim=-1) @ v
    torch.testing.assert_close(lra_group_attention(q, k, v, allowed, 0.0), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lra_group_attention(q, k, v, None, 0.0),
                               torch.softmax((q / math.sqrt(D)) @ k.transpose(-1, -2), -1) @ v, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- local, groups: strided

@pytest.mark.parametrize("n,block", [(24, 5), (20, 5), (3, 5), (29, 4), (12, 1), (17, 17)])
def test_local_strided_equals_lra_local_attention(n, block):
    """Multiples of the block (a whole extra block), other lengths, shorter than a block, block 1."""
    q, k, v = qkv(n, seed=n + block)
    layer = local(block)
    for mask in masks(n):
        torch.testing.assert_close(layer.attend(q, k, v, mask), lra_local(q, k, v, mask, block), rtol=0, atol=1e-12)


def test_local_strided_gradients_equal_the_reference():
    n, block = 22, 4
    q, k, v = (t.requires_grad_() for t in qkv(n, seed=9))
    mask = masks(n)[2]
    out = local(block).train().attend(q, k, v, mask)  # dropout 0: training computes the same
    want = lra_local(q, k, v, mask, block)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((out * weight).sum(), (q, k, v)),
                    torch.autograd.grad((want * weight).sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_local_strided_groups_by_hand():
    """6 tokens, block 2: 2 zero tokens appended (6 % 2 == 0: a whole block), 8 positions in 4 groups
    {0, 4}, {1, 5}, {2, 6}, {3, 7}. With zero queries every weight is equal: a token's output is the mean of
    its group's values, the appended zero token counting as a real one."""
    n = 6
    q = torch.zeros(1, 1, n, 3, dtype=torch.float64)
    v = torch.eye(n, dtype=torch.float64)[None, None].expand(1, 1, n, n)
    layer = build_attention("local", 3, 1, {"block_size": 2, "groups": "strided"}, max_len=n).double()
    out = layer.attend(q, q, v, None)[0, 0]
    e = torch.eye(n, dtype=torch.float64)
    want = torch.stack([(e[0] + e[4]) / 2, (e[1] + e[5]) / 2, e[2] / 2, e[3] / 2, (e[4] + e[0]) / 2,
                        (e[5] + e[1]) / 2])
    torch.testing.assert_close(out, want, rtol=0, atol=1e-15)
    # the mask is cut in consecutive runs: masking token 5 (entry 5 = group 2, slot 1) masks the query in
    # group 2's slot 1 (token 6, cut off) and key slot 1 of group 2 (token 6): token 2 then sees itself alone,
    # while token 5 itself still attends and is attended in group 1
    mask = torch.tensor([[True] * 5 + [False]])
    out = layer.attend(q, q, v, mask)[0, 0]
    want[2] = e[2]
    torch.testing.assert_close(out, want, rtol=0, atol=1e-15)


def test_local_strided_flops_kernel_and_refusals():
    layer = local(50)
    proj = layer.projection_flops(2, 2001)
    assert layer.flops(2, 2001) - proj == 2 * 2 * 2 * H * 2050 * 50 * D  # ListOps with the [CLS]: 41 groups
    assert layer.flops(2, 1000) - layer.projection_flops(2, 1000) == 2 * 2 * 2 * H * 1050 * 50 * D  # one extra
    assert layer.kernel_used("cpu") == layer.kernel_used("cuda") == "gather"
    assert layer.cfg.kernel == "auto"
    with pytest.raises(ValueError, match="groups: strided runs its own SDPA path"):
        local(50, kernel="flex")


# ---------------------------------------------------------------- sinkhorn, form: lra_released

@pytest.mark.parametrize("n,block", [(24, 4), (24, 6), (20, 20), (30, 1), (23, 4), (3, 5)])
def test_sinkhorn_lra_released_equals_lra_sinkhorn_attention(n, block):
    """LRA's case (a multiple of the block), 30 groups (more than the sort net's 25 outputs), one group, and
    this layer's extensions: a length that is not a multiple, one shorter than a block."""
    q, k, v = qkv(n, seed=n + block)
    layer = sinkhorn(block)
    assert tuple(layer.sort_weight.shape) == (D, LRA_MAX_NUM_BLOCKS)
    for mask in masks(n):
        torch.testing.assert_close(layer.attend(q, k, v, mask), lra_sinkhorn(layer, q, k, v, mask),
                                   rtol=0, atol=1e-12)


def test_sinkhorn_lra_released_gradients_equal_the_reference_and_the_sort_net_gets_none():
    """Gradients for q, k, v as the reference's; the sorting network's is zero up to rounding in both (the
    einsum uses only the row sums of its softmax), as in LRA."""
    n, block = 24, 4
    layer = sinkhorn(block).train()
    q, k, v = (t.requires_grad_() for t in qkv(n, seed=4))
    mask = masks(n)[1]
    out = layer.attend(q, k, v, mask)
    want = lra_sinkhorn(layer, q, k, v, mask)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = torch.autograd.grad((out * weight).sum(), (q, k, v, layer.sort_weight))
    ref = torch.autograd.grad((want * weight).sum(), (q, k, v, layer.sort_weight))
    for a, b in zip(got[:3], ref[:3], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    scale = got[1].abs().max()
    assert got[3].abs().max() < 1e-12 * scale and ref[3].abs().max() < 1e-12 * scale


def test_sinkhorn_lra_released_by_hand():
    """Zero queries: every weight is equal, so the own half is the mean of the group's values and the sorted
    half the mean over the slots of the sums over the groups, i.e. the sum of all values / b."""
    n, block = 8, 2  # 4 groups {0, 4}, {1, 5}, {2, 6}, {3, 7}
    q = torch.zeros(1, 1, n, 3, dtype=torch.float64)
    v = torch.eye(n, dtype=torch.float64)[None, None]
    layer = build_attention("sinkhorn", 3, 1, {"block_size": block, "form": "lra_released"}, max_len=n).double()
    out = layer.attend(q, q, v, None)[0, 0]
    e = torch.eye(n, dtype=torch.float64)
    own = torch.stack([(e[i] + e[(i + 4) % n]) / 2 for i in range(n)])
    torch.testing.assert_close(out, own + torch.ones(n, n, dtype=torch.float64) / block, rtol=0, atol=1e-15)


def test_sinkhorn_lra_released_draws_nothing_and_trains_as_it_evaluates():
    """softmax sorting: no Gumbel noise, so a training forward (no dropout) equals eval and leaves torch's
    global generator where it was."""
    layer = sinkhorn(4)
    q, k, v = qkv(24, seed=5)
    mask = masks(24)[1]
    want = layer.attend(q, k, v, mask)
    state = torch.get_rng_state()
    got = layer.train().attend(q, k, v, mask)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_sinkhorn_lra_released_has_no_length_limit_and_counts_its_flops():
    layer = build_attention("sinkhorn", H * D, H, {"block_size": 4, "form": "lra_released"}, max_len=8).double()
    assert layer.attend(*qkv(40), None).shape == (B, H, 40, D)  # the paper form refuses past max_len
    big = sinkhorn(50)
    assert big.flops(2, 2000) > big.flops(2, 1000) > big.projection_flops(2, 1000)
    assert big.flops(2, 2000) < sinkhorn(50, form="paper").flops(2, 2000)  # no Sinkhorn, no N^2/b mixing


# ---------------------------------------------------------------- shared: settings, conventions, compiling

def test_the_new_parameters_leave_existing_run_hashes_alone():
    assert "groups" not in as_dict(LocalConfig()) and "form" not in as_dict(SinkhornConfig())
    assert as_dict(LocalConfig(groups="strided"))["groups"] == "strided"
    assert as_dict(SinkhornConfig(form="lra_released"))["form"] == "lra_released"
    for cls in (LocalAttention, SinkhornAttention):
        assert cls.published_as({}) == cls.published_as({"groups": "strided", "form": "lra_released"})


#: the registry's conformance checks on the LRA forms. By design appended padding changes LRA's groups (strided by
#: L / b) and its mask cut, and padding counts in the sums and as keys, so such a layer sets
#: ``supports_padding_mask = False`` on itself and the checks skip the padding checks, saying so; made to claim
#: it anyway, it fails them. The Sinkhorn form's sorting network gets a gradient that is zero up to rounding
#: (its test above), so the gradient check may fail on that parameter alone. Every other check passes
LRA_FORMS = {"local": {"block_size": 5, "groups": "strided"}, "sinkhorn": {"block_size": 4, "form": "lra_released"}}
FAILS_BY_DESIGN = {"padding invariance": "padded position(s) appended",
                   "padding per element": "real tokens) vs alone"}


@pytest.mark.parametrize("claimed", [False, True], ids=["as built", "claiming padding support"])
@pytest.mark.parametrize("check", checks.FAST_CHECKS)
@pytest.mark.parametrize("name", LRA_FORMS)
def test_conformance_of_the_lra_forms(name, check, claimed, monkeypatch):
    monkeypatch.setattr(VARIANTS.get(name).cls, "small_params", LRA_FORMS[name])
    assert not checks.make(name).supports_padding_mask and VARIANTS.get(name).cls.supports_padding_mask
    if claimed:  # the layers the checks build say they keep the padding conventions
        build = checks.make

        def make_claiming(*args, **kwargs):
            layer = build(*args, **kwargs)
            layer.supports_padding_mask = True
            return layer
        monkeypatch.setattr(checks, "make", make_claiming)
    (result,) = checks.run_checks(name, [check])
    if check in FAILS_BY_DESIGN:
        if claimed:
            assert result.status == "fail" and FAILS_BY_DESIGN[check] in result.detail, result
        else:
            assert result.status == "skip" and result.detail == "supports_padding_mask is False", result
    elif name == "sinkhorn" and check == "gradients" and result.status == "fail":
        assert "gradient for sort_weight" in result.detail, result
    else:
        assert result.status == "pass", result


@pytest.mark.parametrize("name", LRA_FORMS)
def test_the_lra_forms_keep_memory_linear(name):
    """The largest tensor kept for the backward grows with N b, not N^2 (the masks included)."""
    layer = build_attention(name, H * D, H, {**LRA_FORMS[name], "block_size": 8}, max_len=MAX_LEN).double()
    sizes = [largest_saved_tensor(layer.attend, *qkv(n), lengths_mask([n, n - 40, 3], n)) for n in (256, 512)]
    assert sizes[1] / sizes[0] == pytest.approx(2.0, rel=0.1)
    assert sizes[1] < B * H * 512 * 512 / 4


@pytest.mark.parametrize("name", LRA_FORMS)
@pytest.mark.parametrize("kind,tol", [(torch.bfloat16, 0.05), (torch.float16, 0.01)])
def test_the_lra_forms_under_cpu_autocast(name, kind, tol):
    """As tests/harness/run/test_precision.py asks of every variant's default: finite, close to float32, and
    finite gradients under bf16."""
    torch.manual_seed(0)
    layer = build_attention(name, 32, 4, LRA_FORMS[name], max_len=MAX_LEN).eval()
    x = torch.randn(2, 40, 32, generator=torch.Generator().manual_seed(1))
    mask = lengths_mask([40, 31], 40)
    with torch.no_grad():
        want = layer(x, mask)
        with torch.autocast("cpu", dtype=kind):
            got = layer(x, mask)
    assert torch.isfinite(got).all() and (got.float() - want).abs().max() / want.abs().max() < tol
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer.train()(x.requires_grad_(), mask)
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", LRA_FORMS)
def test_the_lra_forms_compile_whole(name):
    n = 24
    torch.manual_seed(0)
    layer = build_attention(name, 16, 2, LRA_FORMS[name], max_len=n)
    x = torch.randn(3, n, 16, generator=torch.Generator().manual_seed(3))
    mask = lengths_mask([n, 13, 0], n)
    layer.train()
    for m in (mask, None):
        assert_compiles_whole_and_matches(layer, x, m, grads=True)
    layer.eval()
    assert_compiles_whole_and_matches(layer, x, mask, grads=False)
