"""No attention kernel is ever given a query row that may attend no key (review finding 4).

Such rows are everywhere in real batches: padding queries beyond a window's reach of the last real
token, a block of `local` holding only padding, an all-padding element, black pixels masked as
padding (``model.mask_zero_tokens``). On a CPU the SDPA kernels return zeros and finite gradients
for them; a CUDA kernel's backward computes exp(S - lse) with S = lse = -inf there, and what it
does is its own business. So no row without a key may reach a kernel: every variant is run here,
on the branches CUDA takes (window/sparse/local on the SDPA gather path: ``block_dense`` off, as
it is on CUDA; in training with attention dropout, which is what config/lra.yaml trains with; and in
eval mode), under a spy on ``scaled_dot_product_attention`` that fails on the first empty row it
sees. The CUDA twin (tests/harness/run/test_cuda.py) runs the gradients through each CUDA SDPA backend.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from attnbench.variants import VARIANTS, build_attention
from attnbench.variants.lib import block_dense

DIM, HEADS, N = 16, 2, 48
#: per element: real tokens, then padding (0: an all-padding element)
LENGTHS = (48, 21, 0)
#: layouts with rows that have no allowed key once padded (no global tokens, short reach)
PARAMS = {
    "window": {"window": 2, "block_size": 4, "global_tokens": ()},
    "sparse": {"block_size": 4, "window_blocks": 0, "random_blocks": 0, "global_blocks": ()},
    "local": {"block_size": 8},
}


class EmptyRowSpy(TorchFunctionMode):
    """Counts SDPA calls and raises at one whose boolean mask has a row with no True entry."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.calls += 1
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            if mask is not None and mask.dtype == torch.bool:
                q, k = args[0], args[1]
                full = mask.expand(*q.shape[:-1], k.shape[-2])
                empty = int((~full.any(-1)).sum())
                assert empty == 0, f"SDPA was given {empty} query rows with no allowed key"
        return func(*args, **kwargs)


def padded_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(LENGTHS), N, DIM, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.arange(N)[None, :] < torch.tensor(LENGTHS)[:, None]
    return x, mask


@pytest.fixture
def gather_path(monkeypatch):
    """The block layouts on the path CUDA takes: no dense short-sequence path (a CPU-only shortcut)."""
    monkeypatch.setattr(block_dense, "MAX_TOKENS", 0)


@pytest.mark.parametrize("training", [True, False], ids=["train-dropout", "eval"])
@pytest.mark.parametrize("name", [e.name for e in VARIANTS])
def test_no_kernel_sees_a_row_without_keys(name, training, gather_path):
    params = {**PARAMS.get(name, {}), **({"kernel": "gather"} if name in PARAMS else {})}
    torch.manual_seed(0)
    layer = build_attention(name, DIM, HEADS, params, max_len=N, dropout=0.1 if training else 0.0)
    layer = layer.double().train(training)
    x, mask = padded_batch()
    with EmptyRowSpy() as spy:
        y = layer(x, mask)
        y[mask].sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    if name in PARAMS:  # the layouts under test do have empty rows, and ran through SDPA
        assert spy.calls > 0
        assert _empty_rows(layer, name, mask).any()


def _empty_rows(layer, name, mask):
    """(B, N): the queries with no allowed real key under the layer's layout (`local`: its own block)."""
    if name == "local":
        blocks = torch.arange(N) // PARAMS["local"]["block_size"]
        allowed = (blocks[:, None] == blocks[None, :])[None]
    else:
        allowed = layer.dense_mask(N, mask)
    return ~(allowed & mask[:, None, :]).any(-1)


@pytest.mark.parametrize("name", list(PARAMS))
def test_rows_without_keys_are_zero_and_pass_no_gradient(name, gather_path):
    """What the select after the kernel promises: such rows' outputs are exactly zero, and nothing of
    the keys or values they were shown inside the kernel reaches a gradient."""
    layer = build_attention(name, DIM, HEADS, {**PARAMS[name], "kernel": "gather"}, max_len=N).double().eval()
    x, mask = padded_batch(1)
    q, k, v = (torch.randn(len(LENGTHS), HEADS, N, DIM // HEADS, dtype=torch.float64, requires_grad=True,
                           generator=torch.Generator().manual_seed(i)) for i in range(3))
    out = layer.attend(q, k, v, mask)
    empty = _empty_rows(layer, name, mask)
    assert empty.any()
    assert not out[empty[:, None, :].expand(-1, HEADS, -1)].any()
    out[~empty[:, None, :].expand(-1, HEADS, -1)].sum().backward()
    # keys and values of padding are never attended by a real row: no gradient reaches them
    assert not k.grad[~mask[:, None, :].expand(-1, HEADS, -1)].any()
    assert not v.grad[~mask[:, None, :].expand(-1, HEADS, -1)].any()
