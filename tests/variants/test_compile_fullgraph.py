"""Every registered variant's forward compiles whole: ``torch.compile`` traces it into one graph, without
a graph break (so ``torch.compile(layer, fullgraph=True)`` succeeds too), and the compiled layer computes
what the plain one does (``train.compile``).

The graphs are counted by a backend that runs them with the eager kernels (no inductor compile: quick),
with ``fullgraph`` off as ``model.compile()`` has it: with it on, dynamo captures an ``.item()`` as a
symbol instead of breaking there, which would hide the break a compiled training run takes. Per
variant: training with padding (an all-padding element included) and without, outputs and gradients
equal under the same seed (so the random draws of lsh, sparse and linear are the same); eval mode with
padding and with an all-True mask (which the plain CPU forward drops before its kernel and a traced one
keeps: the same function either way). Then the branches CUDA takes, on a CPU: window, sparse and local
on FlexAttention (``kernel: flex``; eval mode, no gradients: torch 2.13 has no FlexAttention backward on
CPU), and ``kernel: auto`` choosing as on CUDA (``CHOOSE_AS_ON_CUDA``: the toolchain check stays out of
the graph); and the CPU-only fast paths at 2K tokens (the band through the CPU flash kernel, LSH's
chunks), which trace whole too. inductor itself compiles FlexAttention once in tests/variants/test_flex_blocks.py.
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from attnbench.variants import VARIANTS, build_attention
from attnbench.variants.lib import block_flash, flex_blocks, lsh_chunks

DIM, HEADS, BATCH, N = 16, 2, 3, 24
#: real tokens per element, then padding (0: an all-padding element)
LENGTHS = (N, 13, 0)
ENTRIES = list(VARIANTS)
BLOCK_LAYOUTS = ("window", "sparse", "local")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    yield
    torch._dynamo.reset()  # nothing compiled here outlives its test


def padding(n: int = N, lengths=LENGTHS) -> torch.Tensor:
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


def run(layer, x, mask, seed: int = 1, grads: bool = False):
    """The layer's output (and the gradients of a fixed weighting of it for x and the parameters)."""
    x = x.clone().requires_grad_(grads)
    torch.manual_seed(seed)
    out = layer(x, mask)
    if not grads:
        return [out]
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    params = [p for p in layer.parameters() if p.requires_grad]
    return [out, *torch.autograd.grad((out * weight).sum(), [x, *params], allow_unused=True)]


def assert_compiles_whole_and_matches(layer, x, mask, grads: bool, atol: float = 1e-5):
    """One graph for the forward, and the plain layer's results. The graphs are counted with ``fullgraph``
    off, as ``model.compile()`` (``train.compile``) compiles: with it on, torch 2.13 turns an ``.item()``
    into a symbol of the graph rather than refusing it, so a break that train.compile takes would pass."""
    torch._dynamo.reset()
    graphs = CompileCounter()
    compiled = torch.compile(layer, backend=graphs)
    got = run(compiled, x, mask, grads=grads)
    assert graphs.frame_count == 1, f"{graphs.frame_count} graphs: the forward breaks"
    want = run(layer, x, mask, grads=grads)
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
        else:
            torch.testing.assert_close(g, w, rtol=1e-5, atol=atol)


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_every_variant_compiles_whole_and_computes_the_same(entry):
    params = dict(entry.cls.small_params)
    if entry.name in BLOCK_LAYOUTS:
        params["kernel"] = "gather"  # the CPU's own choice, made explicit
    torch.manual_seed(0)
    layer = build_attention(entry.name, DIM, HEADS, params, max_len=N)
    x = torch.randn(BATCH, N, DIM, generator=torch.Generator().manual_seed(3))
    layer.train()
    for mask in (padding(), None):
        assert_compiles_whole_and_matches(layer, x, mask, grads=True)
    layer.eval()
    for mask in (padding(), torch.ones(BATCH, N, dtype=torch.bool)):
        assert_compiles_whole_and_matches(layer, x, mask, grads=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", BLOCK_LAYOUTS)
def test_flex_path_compiles_whole(name):
    """The kernel CUDA runs: FlexAttention with its BlockMask built in the graph, forward only on a CPU."""
    params = {**VARIANTS.get(name).cls.small_params, "kernel": "flex"}
    layer = build_attention(name, DIM, HEADS, params, max_len=N).eval()
    x = torch.randn(BATCH, N, DIM, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for mask in (padding(), None):
            assert_compiles_whole_and_matches(layer, x, mask, grads=False)


@pytest.mark.slow
def test_auto_choosing_as_on_cuda_compiles_whole(monkeypatch):
    """``kernel: auto`` as on CUDA: the choice asks whether flex_attention imports and whether Triton's tools
    are there (a module import, file look-ups), answers that are constants of the traced graph."""
    monkeypatch.setattr(flex_blocks, "CHOOSE_AS_ON_CUDA", True)
    n = 200
    layer = build_attention("window", 32, 2, {"window": 20, "block_size": 16}, max_len=n).eval()
    assert layer.kernel_used("cpu") == "flex" or flex_blocks.toolchain_missing("cuda")
    x = torch.randn(2, n, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_compiles_whole_and_matches(layer, x, padding(n, (n, 90)), grads=False)


@pytest.mark.parametrize("name,module,function", [
    ("window", block_flash, "block_attention"),  # the band through the CPU flash kernel
    ("lsh", lsh_chunks, "chunked_attention"),  # LSH's chunks through it
])
@pytest.mark.slow
def test_cpu_fast_paths_compile_whole(name, module, function, monkeypatch):
    n = block_flash.MIN_TOKENS
    params = {"window": 16, "block_size": 16, "kernel": "gather"} if name == "window" else {}
    torch.manual_seed(0)
    layer = build_attention(name, DIM, HEADS, params, max_len=n).train()
    x = torch.randn(2, n, DIM, generator=torch.Generator().manual_seed(3))
    calls = []
    real = getattr(module, function)

    def spy(*args, **kwargs):
        calls.append(function)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, function, spy)
    run(layer, x, padding(n, (n, n - 300)))
    assert calls, f"{name} at {n} tokens takes {module.__name__}.{function}"
    monkeypatch.setattr(module, function, real)
    assert_compiles_whole_and_matches(layer, x, padding(n, (n, n - 300)), grads=True, atol=1e-4)
