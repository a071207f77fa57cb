"""``sparse`` as LRA's code ran BigBird (issue 30, item 8): its options against a dense float64 re-implementation
of LRA's ``BigBirdAttention`` (google-research/long-range-arena, lra_benchmarks/models/bigbird/), written here
from its code, quirks included:

- ``apply`` (bigbird_attention.py:484-489) pads the (max_len) input by ``block - max_len % block`` tokens, 1 to a
  whole block; ``jnp.pad`` of the boolean padding mask with ``-1e9`` makes them real, and the bias-free
  projections of their zero inputs give them zero queries, keys and values;
- ``sparse_dot_product_attention`` (:317-404) draws each head's random blocks once per layer
  (``np.random.seed(layer index)``, bigbird.py:207) with ``get_block_rand_mask`` (:24-66), from the first 1024
  tokens (:375);
- ``band_start_block_rand_multi_attention_pad`` (:130-314): the first and last query blocks attend every key;
  the second and second-last their first blocks, the last block and their random blocks; the others the first
  block, three band blocks, their random blocks and the last block; masks are additive -10000 terms (the key
  mask on the first and last key blocks, query mask x key mask on the band and the random blocks); the
  context is multiplied by the query mask (:312); no dropout.

The random blocks are the layer's own (its draw, read off its layout), fed to the reference: the layer
reproduces the distribution of LRA's draw (its candidates, per head, fixed per layer), not numpy's numbers,
which need the layer index (variants/sparse.py says why). The candidates are checked against a transcription of
``get_block_rand_mask`` run with numpy's generator.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from test_compile_fullgraph import assert_compiles_whole_and_matches, padding

from attnbench.harness.conformance.checks import FAST_CHECKS, run_checks
from attnbench.variants import build_attention
from attnbench.variants.lib import block_dense, block_flash
from attnbench.variants.lib.reference import explicit_softmax_attention
from attnbench.variants.sparse import SparseAttention, lra_random_candidates

BLOCK, R, SPAN = 4, 2, 28  # 11 blocks at max_len 41 (3 tokens appended), random blocks from the first 7
LRA = dict(block_size=BLOCK, window_blocks=1, random_blocks=R, global_blocks=(0, -1), layout_length="lra_padded",
           random_draw="fixed_per_layer", random_per_head=True, random_span=SPAN, attention_dropout=False,
           zero_masked_queries=True)
H, D = 3, 4


def layer(max_len=41, dropout=0.3, seed=0, **over):
    """LRA's BigBird at test size, built with attention dropout that its form must not apply."""
    torch.manual_seed(seed)
    return build_attention("sparse", H * D, H, {**LRA, **over}, max_len=max_len, dropout=dropout).double().eval()


def qkv(b, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, H, n, D, generator=g, dtype=torch.float64) for _ in range(3)]


def masks(n):
    m = torch.ones(3, n, dtype=torch.bool)
    m[1, n - 9:] = False  # padding to max_len
    m[1, 6:9] = False  # masked pixels: holes among the real tokens
    m[2, 0] = False  # a masked first token
    m[2, 13:] = False
    return m


# ---------------------------------------------------------------- LRA's code, densely

def get_block_rand_mask(m, n, wm, wn, r, last_idx=-1):
    """bigbird_attention.py:24-66, transcribed (numpy's global generator, as LRA)."""
    rand_attn = np.zeros((m // wm - 2, r), dtype=np.int64)
    a = np.array(range(1, n // wn - 1))
    last = (m // wn) - 1
    if last_idx > (2 * wn):
        last = (last_idx // wn) - 1
    for i in range(1, m // wm - 1):
        start = i - 2
        end = i
        if i == 1:
            rand_attn[i - 1, :] = np.random.permutation(a[2:last])[:r]
        elif i == 2:
            rand_attn[i - 1, :] = np.random.permutation(a[3:last])[:r]
        elif i == m // wm - 3:
            rand_attn[i - 1, :] = np.random.permutation(a[:last - 4])[:r]
        elif i == m // wm - 2:
            rand_attn[i - 1, :] = np.random.permutation(a[:last - 3])[:r]
        else:
            if start > last:
                start = last
                rand_attn[i - 1, :] = np.random.permutation(a[:start])[:r]
            elif (end + 1) == last:
                rand_attn[i - 1, :] = np.random.permutation(a[:start])[:r]
            else:
                rand_attn[i - 1, :] = np.random.permutation(np.concatenate((a[:start], a[end + 1:last])))[:r]
    return rand_attn


def lra_bigbird(q, k, v, mask, rand_attn, block):
    """LRA's BigBird attention after the q/k/v projections, in float64, one query block at a time.

    q, k, v (B, H, N, D) at LRA's max_len N (its inputs are padded to it), mask (B, N) bool (``inputs > 0``),
    rand_attn (H, nB - 2, r): each head's random key blocks of query blocks 1..nB-2. Returns (B, H, N, D)."""
    b, h, n, d = q.shape
    extra = block - n % block  # apply(): 1..block tokens, whatever n
    q, k, v = (torch.cat([t, t.new_zeros(b, h, extra, d)], 2) for t in (q, k, v))  # zero inputs, no bias
    m = torch.cat([mask, torch.ones(b, extra, dtype=torch.bool)], 1).to(q.dtype)  # bool padded with -1e9: True
    length = n + extra
    nb = length // block

    def tokens(blocks):
        return [blk * block + t for blk in blocks for t in range(block)]

    out = torch.zeros_like(q)
    for hi in range(h):  # every element of the batch shares the layout
        for i in range(nb):
            rows = list(range(i * block, (i + 1) * block))
            from_mask = m[:, rows, None]  # (B, b, 1)
            if i in (0, nb - 1):  # first_product / last_product: every key, the key mask only
                keys = list(range(length))
                bias = ((1.0 - m[:, None, keys]) * -10000.0).expand(-1, block, -1)
            else:
                rand = tokens(rand_attn[hi, i - 1].tolist())
                if i in (1, nb - 2):  # second / second-last: four blocks under the key mask
                    four = tokens([0, 1, 2, nb - 1] if i == 1 else [0, nb - 3, nb - 2, nb - 1])
                    keys = four + rand
                    key_part = (1.0 - m[:, None, four]).expand(-1, block, -1)
                else:  # first block, band of three, last block; the key mask on the first and last only
                    first, band, last = tokens([0]), tokens([i - 1, i, i + 1]), tokens([nb - 1])
                    keys = first + band + last + rand
                    key_part = torch.cat([(1.0 - m[:, None, first]).expand(-1, block, -1),
                                          1.0 - from_mask * m[:, None, band],
                                          (1.0 - m[:, None, last]).expand(-1, block, -1)], -1)
                bias = torch.cat([key_part, 1.0 - from_mask * m[:, None, rand]], -1) * -10000.0
            logits = q[:, hi, rows] @ k[:, hi, keys].transpose(1, 2) / math.sqrt(d) + bias
            out[:, hi, rows] = torch.softmax(logits, -1) @ v[:, hi, keys] * from_mask  # (:312)
    return out[:, :, :n]


def drawn(layer_, n_blocks):
    """The layer's random blocks as LRA's rand_attn (H, nB - 2, r): its per-head layout, without the band
    (|i - j| <= 1) and the global blocks (not in the layout's table)."""
    length = n_blocks * BLOCK
    mask = torch.ones(1, length, dtype=torch.bool)
    chosen, _, _ = layer_.block_pairs(length, BLOCK, mask, layer_._seed())
    i, j = torch.meshgrid(torch.arange(n_blocks), torch.arange(n_blocks), indexing="ij")
    rand = chosen[0] & ((i - j).abs() > 1)  # (H, nB, nB)
    assert bool((rand.sum(-1)[:, 1:-1] == R).all()), "every non-global row draws R random blocks here"
    rows = [torch.nonzero(rand[h_, r_]).flatten() for h_ in range(H) for r_ in range(1, n_blocks - 1)]
    return torch.stack(rows).view(H, n_blocks - 2, R)


# ---------------------------------------------------------------- the reference against the layer

PATHS = ["dense", "gather", "flash", "flex"]


def on_path(path, monkeypatch):
    """Route the layer: the CPU's dense mask (short sequences), the gather, the CPU flash kernel, or flex."""
    if path != "dense":
        monkeypatch.setattr(block_dense, "MAX_TOKENS", 0)
    if path == "flash":
        monkeypatch.setattr(block_flash, "MIN_TOKENS", 0)
    return {"kernel": "flex"} if path == "flex" else {}


@functools.cache
def reference_case(max_len: int) -> tuple[torch.Tensor, ...]:
    """The reference's output and gradients (q, k, v) for the layer of ``layer(max_len)``'s draw, computed
    once for every path: q, k, v, the mask, the upstream gradient, the output, its three gradients."""
    rand_attn = drawn(layer(max_len=max_len), max_len // BLOCK + 1)
    q, k, v = (t.requires_grad_(True) for t in qkv(3, max_len, seed=max_len))
    mask = masks(max_len)
    out = lra_bigbird(q, k, v, mask, rand_attn, BLOCK)
    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    grads = torch.autograd.grad((out * up).sum(), (q, k, v))
    return (q.detach(), k.detach(), v.detach(), mask, up, out.detach(), *grads)


@pytest.mark.parametrize("max_len", [41, 40])  # 3 tokens appended; a whole block appended
@pytest.mark.parametrize("path", PATHS)
def test_equals_lras_bigbird_forward_and_backward(path, max_len, monkeypatch):
    q, k, v, mask, up, want, *want_grads = reference_case(max_len)
    lyr = layer(max_len=max_len, **on_path(path, monkeypatch))
    grads = path != "flex"  # FlexAttention has no backward on a CPU
    with torch.set_grad_enabled(grads):
        qs, ks, vs = (t.clone().requires_grad_(grads) for t in (q, k, v))
        got = lyr.attend(qs, ks, vs, mask)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
        if grads:
            for a, b in zip(torch.autograd.grad((got * up).sum(), (qs, ks, vs)), want_grads, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_a_batch_shorter_than_max_len_is_padded_as_lra_pads_it():
    """LRA pads every input to max_len: a batch cut shorter (here at 33 of 41 tokens) gives its real tokens
    what the reference gives them at full length, whatever sits in LRA's padding (junk here)."""
    lyr = layer()
    rand_attn = drawn(lyr, 11)
    q, k, v = qkv(2, 41, seed=5)
    mask = torch.ones(2, 41, dtype=torch.bool)
    mask[:, 30:] = False
    mask[1, 3] = False
    want = lra_bigbird(q, k, v, mask, rand_attn, BLOCK)
    got = lyr.attend(q[:, :, :33], k[:, :, :33], v[:, :, :33], mask[:, :33])
    torch.testing.assert_close(got, want[:, :, :33], rtol=0, atol=1e-10)


def test_training_keeps_the_layout_and_drops_nothing():
    """``random_draw: fixed_per_layer`` and ``attention_dropout: false``: a training forward (attention dropout
    0.3 configured) is the evaluation's, twice over."""
    lyr = layer()
    x = torch.randn(3, 41, H * D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = lyr(x, masks(41))
    lyr.train()
    for _ in range(2):
        torch.testing.assert_close(lyr(x, masks(41)), want, rtol=0, atol=0)
    assert lyr.dropout == 0.0


def test_the_appended_tokens_are_keys_of_zero_value_by_hand():
    """max_len 10, blocks of 4: LRA appends 2 tokens (12 in all, 3 blocks, first and last global). A zero query
    weighs every key alike, so the first block's rows are the real values' sum over 10 real + 2 appended keys."""
    lyr = layer(max_len=10, random_blocks=0)
    q = torch.zeros(1, H, 10, D, dtype=torch.float64)
    k, v = qkv(1, 10, seed=1)[1:]
    out = lyr.attend(q, k, v, torch.ones(1, 10, dtype=torch.bool))
    torch.testing.assert_close(out[:, :, :4], (v.sum(2, keepdim=True) / 12).expand(-1, -1, 4, -1), rtol=0, atol=1e-12)
    # without LRA's padding (the paper's layout, same blocks) the appended keys are not there: divided by 10
    paper = layer(max_len=10, random_blocks=0, layout_length="real")
    out = paper.attend(q, k, v, torch.ones(1, 10, dtype=torch.bool))
    torch.testing.assert_close(out[:, :, :4], (v.sum(2, keepdim=True) / 10).expand(-1, -1, 4, -1), rtol=0, atol=1e-12)


def test_masked_queries_get_zero_only_with_the_option():
    lyr, attend_real = layer(), layer(zero_masked_queries=False)
    q, k, v = qkv(3, 41)
    mask = masks(41)
    a, b = lyr.attend(q, k, v, mask), attend_real.attend(q, k, v, mask)
    assert not a[~mask[:, None].expand(-1, H, -1)].any()
    assert b[~mask[:, None].expand(-1, H, -1)].abs().sum() > 0
    torch.testing.assert_close(a[mask[:, None].expand(-1, H, -1)], b[mask[:, None].expand(-1, H, -1)], rtol=0, atol=0)


# ---------------------------------------------------------------- the draw: LRA's candidates, per head, fixed

def lra_candidate_sets(n_blocks, span, seeds=300, r=1):
    """Per row 1..nB-2, the blocks LRA's own draw picks over many numpy seeds (r=1: each candidate alone)."""
    seen = [set() for _ in range(n_blocks)]
    length = n_blocks * BLOCK
    for s in range(seeds):
        np.random.seed(s)
        table = get_block_rand_mask(length, length, BLOCK, BLOCK, r, last_idx=min(length, span) if span else -1)
        for row, blocks in enumerate(table.tolist(), start=1):
            seen[row].update(blocks)
    return seen


@pytest.mark.parametrize("n_blocks,span", [(11, SPAN), (11, 0), (14, 36), (20, 1024)])
def test_candidates_are_those_of_lras_get_block_rand_mask(n_blocks, span):
    want = lra_candidate_sets(n_blocks, span)
    got = lra_random_candidates(n_blocks, BLOCK, span)
    for row in range(n_blocks):
        assert set(torch.nonzero(got[row]).flatten().tolist()) == want[row], f"row {row}"


def test_the_draw_is_per_head_within_the_candidates_and_independent_of_the_data():
    lyr = layer()
    n_blocks, length = 11, 44
    cands = lra_random_candidates(n_blocks, BLOCK, SPAN)
    rand_attn = drawn(lyr, n_blocks)  # (H, 9, R)
    for h in range(H):
        for row in range(1, n_blocks - 1):
            assert set(rand_attn[h, row - 1].tolist()) <= set(torch.nonzero(cands[row]).flatten().tolist())
    assert rand_attn.max() < SPAN // BLOCK  # within the first SPAN tokens
    assert len({tuple(rand_attn[h].flatten().tolist()) for h in range(H)}) == H, "each head draws its own"
    # the same for every element and whatever the padding or the masked tokens; the same in training
    full = torch.ones(1, length, dtype=torch.bool)
    ragged = torch.ones(3, length, dtype=torch.bool)
    ragged[1, 9:] = False
    ragged[2, ::3] = False
    first, _, _ = lyr.block_pairs(length, BLOCK, full, lyr._seed())
    lyr.train()
    torch.manual_seed(7)
    again, _, _ = lyr.block_pairs(length, BLOCK, ragged, lyr._seed())
    assert torch.equal(again, first.expand_as(again))
    # another layer (another layer seed) draws otherwise; the same one after a checkpoint round trip
    other = layer(seed=1)
    assert not torch.equal(drawn(other, n_blocks), rand_attn)
    other.load_state_dict(lyr.state_dict())
    assert torch.equal(drawn(other.eval(), n_blocks), rand_attn)


def test_the_draw_covers_every_candidate_across_layers():
    """A uniform pick among the candidates, as numpy's permutation: over layer seeds every candidate comes up."""
    n_blocks = 11
    cands = lra_random_candidates(n_blocks, BLOCK, SPAN)
    seen = torch.zeros_like(cands)
    for seed in range(60):
        lyr = layer(seed=seed)
        length = n_blocks * BLOCK
        chosen, _, _ = lyr.block_pairs(length, BLOCK, torch.ones(1, length, dtype=torch.bool), lyr._seed())
        i, j = torch.meshgrid(torch.arange(n_blocks), torch.arange(n_blocks), indexing="ij")
        seen |= (chosen[0] & ((i - j).abs() > 1)).any(0)
    assert torch.equal(seen, cands)


def test_options_alone_keep_the_papers_layout_elsewhere():
    """Each option on its own, on the paper's layout (real ends): a per-head draw differs between heads, a span
    keeps random blocks in it, a fixed draw survives training, and no option touches the window or globals."""
    base = dict(block_size=4, window_blocks=1, random_blocks=2, global_blocks=(0, -1))
    n = 64
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 40:] = False
    torch.manual_seed(0)
    per_head = build_attention("sparse", H * D, H, {**base, "random_per_head": True}, max_len=n).eval()
    chosen, _, _ = per_head.block_pairs(n, 4, mask, per_head._seed())
    assert chosen.shape == (2, H, 16, 16) and not torch.equal(chosen[:, 0], chosen[:, 1])
    assert not chosen[1, :, :, 10:].any(), "random blocks only among the element's real blocks"
    spanned = build_attention("sparse", H * D, H, {**base, "random_span": 24}, max_len=n).eval()
    chosen, _, _ = spanned.block_pairs(n, 4, mask, spanned._seed())
    i, j = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    assert not (chosen & ((i - j).abs() > 1) & (j >= 6)).any()
    fixed = build_attention("sparse", H * D, H, {**base, "random_draw": "fixed_per_layer"}, max_len=n).eval()
    want, _, _ = fixed.block_pairs(n, 4, mask, fixed._seed())
    fixed.train()
    assert torch.equal(fixed.block_pairs(n, 4, mask, fixed._seed())[0], want)


@pytest.mark.parametrize("path", PATHS)
def test_a_layout_per_head_is_dense_attention_under_each_heads_mask(path, monkeypatch):
    """``random_per_head`` alone: each head attends as dense attention under its own layout's token mask."""
    torch.manual_seed(0)
    params = dict(block_size=4, window_blocks=0, random_blocks=2, global_blocks=(1,), random_per_head=True,
                  **on_path(path, monkeypatch))
    lyr = build_attention("sparse", H * D, H, params, max_len=64).double().eval()
    n = 37
    q, k, v = qkv(2, n, seed=4)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 25:] = False
    dense = lyr.dense_mask(n, mask)  # (B, H, N, N)
    assert dense.shape == (2, H, n, n) and not torch.equal(dense[:, 0], dense[:, 1])
    want = explicit_softmax_attention(q, k, v, key_padding_mask=mask, attn_mask=dense)
    rows = mask[:, None, :, None].expand_as(want)
    torch.testing.assert_close(lyr.attend(q, k, v, mask)[rows], want[rows], rtol=0, atol=1e-12)


def test_flops_count_lras_padded_sequence():
    lyr = layer(max_len=41)
    paper = layer(max_len=41, layout_length="real")
    # 41 tokens: LRA pads to 44 (11 blocks), the paper's layout to 44 too; 40 tokens: 44 against 40
    assert lyr.flops(2, 41) == paper.flops(2, 41)
    assert lyr.flops(2, 40) > paper.flops(2, 40)
    assert lyr.padded_length(40) == 44 and paper.padded_length(40) == 40


# ---------------------------------------------------------------- the registry's conventions hold

SMALL_LRA = {**LRA, "random_blocks": 1}  # several blocks at the checks' 24 tokens; max_len 4096 there (1025 blocks)


@pytest.mark.slow
@pytest.mark.parametrize("check", FAST_CHECKS)
def test_lras_form_passes_the_conformance_checks(check, monkeypatch):
    """LRA's BigBird keeps every convention of variants/base.py: appended padding changes no real token (the
    layout lies on the padded max_len, which no input changes), randomness is fixed per layer (in training
    too), eval is deterministic. Its appended zero keys are the layer's own, never the input's padding."""
    monkeypatch.setattr(SparseAttention, "small_params", SMALL_LRA)
    (result,) = run_checks("sparse", [check])
    assert result.status == "pass", f"{check}: {result.detail}"


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["gather", "flex"])
def test_lras_form_compiles_whole(kernel):
    """One graph (``train.compile``), training and eval on the gather path, eval on FlexAttention (CUDA's)."""
    torch.manual_seed(0)
    lyr = build_attention("sparse", 16, 2, {**SMALL_LRA, "kernel": kernel}, max_len=24, dropout=0.1)
    x = torch.randn(3, 24, 16, generator=torch.Generator().manual_seed(3))
    try:
        if kernel == "gather":
            lyr.train()
            for mask in (padding(), None):
                assert_compiles_whole_and_matches(lyr, x, mask, grads=True)
        lyr.eval()
        with torch.no_grad():
            for mask in (padding(), None):
                assert_compiles_whole_and_matches(lyr, x, mask, grads=False)
    finally:
        torch._dynamo.reset()  # nothing compiled here outlives the test
