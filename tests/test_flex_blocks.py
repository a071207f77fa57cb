"""The two kernels of the block-sparse layouts (``window`` and ``sparse``): gather and FlexAttention.

- flex equals gather, forward, on CPU in eval mode (sparse's random blocks are then fixed), in
  float64 (eager FlexAttention takes it on CPU) and float32, with padding per batch element;
- the gather path's guarantees: rows with no allowed key are exactly zero even when SDPA gives
  NaN there, and a forward makes no host round trip (on CUDA each would be a sync);
- the kernel choice: auto picks gather on CPU and flex on CUDA; an explicit flex on CPU in
  training, or with inputs that need gradients, raises a clear error.
What does not run on CPU: FlexAttention's backward (torch 2.13 has none on CPU) and its compiled
CUDA kernels; ``test_flex_matches_gather_on_cuda`` checks forward and gradients there, skipped
without a GPU.
"""
from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from attnbench.harness.core.registry import dataclass_schema
from attnbench.variants import block_dense, blocks, build_attention, flash_cpu
from attnbench.variants.flex_blocks import choose_kernel, flex_importable
from attnbench.variants.sparse import SparseConfig
from attnbench.variants.window import WindowConfig

#: the longest input these tests build layers for (the variants here do not use it)
MAX_LEN = 4096

B, H, D = 3, 2, 4

WINDOW_LAYOUTS = [  # one-sided window, block, global tokens (negatives from each element's real end)
    dict(window=0, block_size=4, global_tokens=()),
    dict(window=3, block_size=4, global_tokens=(0, -1)),
    dict(window=5, block_size=2, global_tokens=(3, -2, -100)),
    dict(window=6, block_size=16, global_tokens=(0, 0)),
]
SPARSE_LAYOUTS = [
    dict(block_size=4, window_blocks=1, random_blocks=0, strided_every=0, global_blocks=()),
    dict(block_size=3, window_blocks=0, random_blocks=0, strided_every=4, global_blocks=(0,)),
    dict(block_size=4, window_blocks=0, random_blocks=2, strided_every=0, global_blocks=(0,)),
    dict(block_size=5, window_blocks=1, random_blocks=2, strided_every=3, global_blocks=(1, -1)),
]
LAYOUTS = [("window", p) for p in WINDOW_LAYOUTS] + [("sparse", p) for p in SPARSE_LAYOUTS]


def layer(name, params, kernel, dtype=torch.float64, head_dim=D):
    return build_attention(name, H * head_dim, H, {**params, "kernel": kernel}, max_len=MAX_LEN).to(dtype).eval()


def pair(name, params, dtype=torch.float64, head_dim=D):
    """A gather layer and a flex layer with the same state (sparse: the same layer seed, so the same layout)."""
    gather, flex = (layer(name, params, kernel, dtype, head_dim) for kernel in ("gather", "flex"))
    flex.load_state_dict(gather.state_dict())
    return gather, flex


def qkv(n, dtype=torch.float64, seed=0, head_dim=D, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, head_dim, generator=g, dtype=dtype).to(device) for _ in range(3)]


def lengths_mask(lengths, n, device="cpu"):
    """Per element: ``lengths`` real tokens, then padding; a length of 0 is an all-padding element."""
    return (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).to(device)


def empty_rows(attention, n, mask):
    """(B, N) True where a query has no allowed real key under the layer's layout."""
    return ~(attention.dense_mask(n, mask) & mask[:, None, :]).any(-1)


@pytest.mark.parametrize("name,params", LAYOUTS)
def test_flex_equals_gather_in_float64(name, params):
    n = 29 if name == "window" else 41
    mask = lengths_mask([n, n - 12, 0], n)
    gather, flex = pair(name, params)
    q, k, v = qkv(n, seed=len(params))
    want, got = gather.attend(q, k, v, mask), flex.attend(q, k, v, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert not got[empty_rows(flex, n, mask)[:, None].expand(-1, H, -1)].any(), "rows without a key are zero"


@pytest.mark.parametrize("name,params", [LAYOUTS[1], LAYOUTS[-1]])
def test_flex_equals_gather_in_float32(name, params):
    n = 37
    mask = lengths_mask([n, 20, 1], n)
    gather, flex = pair(name, params, torch.float32)
    q, k, v = qkv(n, torch.float32, seed=3)
    torch.testing.assert_close(flex.attend(q, k, v, mask), gather.attend(q, k, v, mask), rtol=0, atol=1e-5)


def test_kernel_is_a_config_field_with_three_choices():
    for config in (WindowConfig, SparseConfig):
        prop = dataclass_schema(config)["properties"]["kernel"]
        assert prop["enum"] == ["auto", "gather", "flex"] and prop["default"] == "auto"
        assert "no FlexAttention backward on CPU" in prop["description"]
    assert build_attention("sparse", H * D, H, {"kernel": "flex"}, max_len=MAX_LEN).cfg.kernel == "flex"


@pytest.mark.parametrize("name", ["window", "sparse"])
def test_auto_picks_gather_on_cpu_and_trains(name):
    attention = build_attention(name, H * D, H, {}, max_len=MAX_LEN).double()
    assert attention.cfg.kernel == "auto"
    for mode in (True, False):
        assert attention.train(mode).kernel_used("cpu") == "gather"
    q, k, v = (t.requires_grad_() for t in qkv(24))
    attention.train().attend(q, k, v, lengths_mask([24, 10, 3], 24)).sum().backward()
    assert q.grad is not None


@pytest.mark.parametrize("name", ["window", "sparse"])
def test_flex_on_cpu_with_gradients_raises_a_clear_error(name):
    attention = layer(name, {}, "flex")
    q, k, v = qkv(16)
    mask = lengths_mask([16, 8, 1], 16)
    reason = r"FlexAttention has no backward pass on CPU in torch .*; use kernel: gather \(or auto\)"
    with pytest.raises(RuntimeError, match=reason):
        attention.train().kernel_used("cpu")
    with pytest.raises(RuntimeError, match=reason):
        attention.train().attend(q, k, v, mask)
    with pytest.raises(RuntimeError, match=reason):  # eval mode, but the inputs want gradients
        attention.eval().attend(q.requires_grad_(), k, v, mask)


def test_kernel_choice_on_cuda_and_with_dropout():
    """The choice is device logic only, so it is checked here without a GPU."""
    cuda = dict(device=torch.device("cuda"), dtype=torch.float32, head_dim=16, training=True, dropout=0.0,
                needs_grad=True)
    assert choose_kernel("auto", **cuda) == ("flex" if flex_importable() else "gather")
    assert choose_kernel("auto", **{**cuda, "dtype": torch.float64}) == "gather"
    assert choose_kernel("auto", **{**cuda, "head_dim": 8}) == "gather"  # below what Triton's tl.dot takes
    assert choose_kernel("gather", **cuda) == "gather"
    # FlexAttention has no attention dropout: gather runs in training, flex again in eval
    assert choose_kernel("flex", **{**cuda, "dropout": 0.1}) == "gather"
    assert choose_kernel("flex", **{**cuda, "dropout": 0.1, "training": False, "needs_grad": False}) == "flex"
    with pytest.raises(ValueError, match="auto, gather or flex"):
        choose_kernel("dense", **cuda)


def nan_in_empty_rows(real_sdpa, injected):
    """SDPA as some kernels behave: NaN in the rows whose mask allows no key."""
    def sdpa(q, k, v, attn_mask=None, **kwargs):
        out = real_sdpa(q, k, v, attn_mask=attn_mask, **kwargs)
        empty = ~attn_mask.any(-1)[..., None]
        injected.append(bool(empty.any()))
        return out.masked_fill(empty, float("nan"))
    return sdpa


@pytest.mark.parametrize("name,params", [
    ("window", dict(window=1, block_size=4, global_tokens=())),
    ("window", dict(window=1, block_size=4, global_tokens=(0,))),
    ("sparse", dict(block_size=4, window_blocks=0, random_blocks=0, global_blocks=())),
    ("sparse", dict(block_size=4, window_blocks=0, random_blocks=1, global_blocks=(0,))),
])
def test_gather_zeroes_rows_without_keys_even_when_sdpa_gives_nan(name, params, monkeypatch):
    n = 16
    mask = lengths_mask([n, 5, 0], n)  # the short element's far rows and the empty element see no real key
    # the gather path into SDPA (on the CPU the band otherwise takes the flash path, which
    # tests/test_band_flash_path.py holds equal to this one, empty rows included)
    monkeypatch.setattr(flash_cpu, "usable", lambda *a: False)
    monkeypatch.setattr(block_dense, "MAX_TOKENS", 0)  # nor, at this length, the dense path
    attention = layer(name, params, "gather")
    q, k, v = qkv(n)
    clean = attention.attend(q, k, v, mask)
    injected = []
    monkeypatch.setattr(blocks, "scaled_dot_product_attention",
                        nan_in_empty_rows(blocks.scaled_dot_product_attention, injected))
    out = attention.attend(q, k, v, mask)
    assert any(injected), "the layout should leave rows without keys for this test to mean anything"
    assert torch.isfinite(out).all()
    empty = empty_rows(attention, n, mask)[:, None].expand(-1, H, -1)
    assert empty.any() and not out[empty].any()
    assert torch.equal(out, clean)


FORBIDDEN = {"tensor", "as_tensor", "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero",
             "cpu", "numpy"}


class HostRoundTrips(TorchFunctionMode):
    """Records the torch calls that read a tensor on the host or build one from host data: on CUDA
    each is a sync (or a blocking copy). Calls made inside torch's own functions are not seen."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in FORBIDDEN:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name,params,training", [
    ("window", WINDOW_LAYOUTS[2], False), ("window", WINDOW_LAYOUTS[2], True),
    ("sparse", SPARSE_LAYOUTS[3], False),  # training draws its layout seed from the CPU generator: no sync
])
def test_gather_forward_makes_no_host_round_trip(name, params, training):
    attention = layer(name, params, "gather").train(training)
    q, k, v = qkv(30)
    mask = lengths_mask([30, 12, 0], 30)
    with HostRoundTrips() as calls:
        attention.attend(q, k, v, mask)
    assert calls.seen == []


def test_sparse_layer_seed_follows_a_loaded_checkpoint():
    """The seed is read as a Python int once per load, not per forward; the copy must follow the buffer."""
    torch.manual_seed(0)
    a = layer("sparse", SPARSE_LAYOUTS[2], "gather")
    b = layer("sparse", SPARSE_LAYOUTS[2], "gather")
    mask = lengths_mask([40, 40, 40], 40)
    assert not torch.equal(a.dense_mask(40, mask), b.dense_mask(40, mask))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.dense_mask(40, mask), b.dense_mask(40, mask))
    assert "global_block_positions" not in a.state_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled FlexAttention and its backward need CUDA")
@pytest.mark.parametrize("name,params", [LAYOUTS[1], LAYOUTS[2], LAYOUTS[-1], LAYOUTS[-2]])
def test_flex_matches_gather_on_cuda(name, params):
    """Forward and gradients in float32 (head_dim 16: compiled FlexAttention's smallest), and auto picks flex."""
    head_dim, n = 16, 61
    gather, flex = (t.cuda() for t in pair(name, params, torch.float32, head_dim))
    auto = layer(name, params, "auto", torch.float32, head_dim).cuda()
    assert auto.kernel_used("cuda") == auto.train().kernel_used("cuda") == "flex"
    mask = lengths_mask([n, 30, 0], n, "cuda")
    weight = torch.randn(B, H, n, head_dim, generator=torch.Generator().manual_seed(1)).cuda()
    results = []
    for attention in (gather, flex):
        q, k, v = (t.requires_grad_() for t in qkv(n, torch.float32, seed=2, head_dim=head_dim, device="cuda"))
        out = attention.attend(q, k, v, mask)
        results.append((out, *torch.autograd.grad((out * weight).sum(), (q, k, v))))
    for want, got in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are a CUDA matter")
@pytest.mark.parametrize("name,params", [LAYOUTS[2], LAYOUTS[-1]])
def test_gather_forward_on_cuda_does_not_sync(name, params):
    attention = layer(name, params, "gather", torch.float32).cuda()
    q, k, v = qkv(61, torch.float32, device="cuda")
    mask = lengths_mask([61, 30, 0], 61, "cuda")
    attention.attend(q, k, v, mask)  # warm up: lazy initialisation may sync once
    torch.cuda.set_sync_debug_mode("error")
    try:
        attention.attend(q, k, v, mask)
    finally:
        torch.cuda.set_sync_debug_mode("default")
