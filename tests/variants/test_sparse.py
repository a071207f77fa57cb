"""Block-sparse attention: layout properties, and equality with dense attention under the
layout expanded to a token mask (expanded here, independently of the variant's helper)."""
from __future__ import annotations

import pytest
import torch

from attnbench.harness.conformance.checks import lengths_mask
from attnbench.variants import build_attention
from attnbench.variants.lib.reference import explicit_softmax_attention

#: the longest input these tests build layers for (the variants here do not use it)
MAX_LEN = 4096

B, H, D = 2, 2, 4


def qkv(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g, dtype=dtype) for _ in range(3)]



def sparse(**params):
    torch.manual_seed(0)
    return build_attention("sparse", H * D, H, params, max_len=MAX_LEN).double().eval()


def expand(layer, n, mask):
    """Token mask from the layer's block table and global blocks, by plain loops."""
    block = layer.block(n)
    n_pad = -(-n // block) * block
    m = torch.cat([mask, torch.zeros(mask.shape[0], n_pad - n, dtype=torch.bool)], 1)
    table, valid, g_idx, g_ok = layer.layout(n_pad, block, m, layer._seed())
    out = torch.zeros(mask.shape[0], n_pad, n_pad, dtype=torch.bool)
    for b in range(mask.shape[0]):
        for qb in range(table.shape[1]):
            for kb, ok in zip(table[b, qb].tolist(), valid[b, qb].tolist(), strict=True):
                if ok:
                    out[b, qb * block:(qb + 1) * block, kb * block:(kb + 1) * block] = True
        for pos, ok in zip(g_idx[b].tolist(), g_ok[b].tolist(), strict=True):
            if ok:
                out[b, pos, :] = True
                out[b, :, pos] = True
    return out[:, :n, :n], table, valid


def real_rows(t, mask):
    return t[mask[:, None, :, None].expand_as(t)]


@pytest.mark.parametrize("n,block", [(16, 4), (30, 4), (33, 8), (5, 64)])
def test_layout_covering_every_block_equals_full_attention(n, block):
    q, k, v = qkv(n)
    mask = lengths_mask([n, max(1, n - 6)], n)
    layer = sparse(block_size=block, window_blocks=n, random_blocks=2, global_blocks=(0, -1))
    out = layer.attend(q, k, v, mask)
    want = explicit_softmax_attention(q, k, v, key_padding_mask=mask)
    torch.testing.assert_close(real_rows(out, mask), real_rows(want, mask), rtol=0, atol=1e-12)


@pytest.mark.parametrize("params", [
    dict(block_size=4, window_blocks=1, random_blocks=0, global_blocks=(), strided_every=0),
    dict(block_size=4, window_blocks=0, random_blocks=2, global_blocks=(0,), strided_every=0),
    dict(block_size=3, window_blocks=1, random_blocks=1, global_blocks=(0, -1), strided_every=4),
    dict(block_size=5, window_blocks=2, random_blocks=3, global_blocks=(1,), strided_every=2),
])
def test_equals_dense_attention_under_the_expanded_layout(params):
    n, lengths = 41, [41, 26]
    q, k, v = qkv(n, seed=params["block_size"])
    mask = lengths_mask(lengths, n)
    layer = sparse(**params)
    dense, _, _ = expand(layer, n, mask)
    assert not dense.all(), "the layout should be sparse for this test to mean anything"
    out = layer.attend(q, k, v, mask)
    want = explicit_softmax_attention(q, k, v, key_padding_mask=mask, attn_mask=dense[:, None])
    torch.testing.assert_close(real_rows(out, mask), real_rows(want, mask), rtol=0, atol=1e-12)
    assert torch.equal(layer.dense_mask(n, mask), dense)


def test_layout_rows_hold_local_strided_and_random_blocks_without_duplicates():
    n, block = 64, 4  # 16 blocks
    layer = sparse(block_size=block, window_blocks=1, random_blocks=2, strided_every=5, global_blocks=(0, -1))
    mask = torch.ones(1, n, dtype=torch.bool)
    _, table, valid = expand(layer, n, mask)
    nb = n // block
    for i in range(nb):
        row = [kb for kb, ok in zip(table[0, i].tolist(), valid[0, i].tolist(), strict=True) if ok]
        assert len(row) == len(set(row)), f"row {i} has a duplicate key block"
        assert 0 not in row and nb - 1 not in row, "global blocks are scored beside the table, not in it"
        local = {j for j in (i - 1, i, i + 1) if 0 < j < nb - 1}
        strided = {j for j in range(1, nb - 1) if (i - j) % 5 == 0}
        assert local | strided <= set(row)
        assert len(set(row) - local - strided) == 2, f"row {i}: expected 2 random blocks"


def test_random_blocks_fixed_in_eval_drawn_in_training_and_padding_proof():
    n = 48
    layer = sparse(block_size=4, window_blocks=0, random_blocks=2, global_blocks=())
    mask = torch.ones(1, n, dtype=torch.bool)
    first, second = expand(layer, n, mask)[1], expand(layer, n, mask)[1]
    assert torch.equal(first, second)
    # appended padding: the real rows keep their random blocks
    padded = torch.cat([mask, torch.zeros(1, 20, dtype=torch.bool)], 1)
    assert torch.equal(expand(layer, n + 20, padded)[1][:, : n // 4, :3], first[:, :, :3])
    layer.train()
    torch.manual_seed(1)
    draws = {tuple(expand(layer, n, mask)[1].flatten().tolist()) for _ in range(4)}
    assert len(draws) > 1


def test_random_layout_survives_a_checkpoint_round_trip():
    a = sparse(block_size=4, random_blocks=2)
    torch.manual_seed(123)
    b = build_attention("sparse", H * D, H, {"block_size": 4, "random_blocks": 2}, max_len=MAX_LEN).double().eval()
    mask = torch.ones(1, 40, dtype=torch.bool)
    assert not torch.equal(expand(a, 40, mask)[1], expand(b, 40, mask)[1])  # layers differ
    b.load_state_dict(a.state_dict())
    assert torch.equal(expand(a, 40, mask)[1], expand(b, 40, mask)[1])


def test_flops_and_blocks_per_row_grow_linearly_without_stride():
    layer = sparse(block_size=64, window_blocks=1, random_blocks=3, global_blocks=(0,))
    assert layer.blocks_per_row(4096) == layer.blocks_per_row(8192) == 6
    f1, f2 = layer.flops(1, 4096), layer.flops(1, 8192)
    assert f2 / f1 == pytest.approx(2.0, rel=1e-9)


@pytest.mark.parametrize("params", [
    dict(block_size=2, window_blocks=0, random_blocks=0, strided_every=1, global_blocks=()),
    dict(block_size=2, window_blocks=1, random_blocks=3, strided_every=2, global_blocks=()),
    dict(block_size=3, window_blocks=2, random_blocks=9, strided_every=3, global_blocks=(0, -1)),
    dict(block_size=4, window_blocks=5, random_blocks=1, strided_every=0, global_blocks=(1,)),
])
def test_static_table_width_bounds_every_row(params):
    """The table's width comes from the config and the block count (no look at the data, a sync on
    CUDA): it must hold every row's chosen blocks, for any length and padding."""
    layer = sparse(**params)
    block = params["block_size"]
    for n in (block, 7 * block, 30 * block + 1):
        n_pad = -(-n // block) * block
        mask = lengths_mask([n, n // 2, 1], n_pad)
        chosen, _, _ = layer.block_pairs(n_pad, block, mask, layer._seed())
        width = layer.table_width(n_pad // block)
        assert int(chosen.sum(-1).max()) <= width <= n_pad // block
