"""Every registered attention variant on a CUDA device: the GPU check's first stage (`make gpu-check`,
scripts/gpu_check.py). Skipped as a whole where torch sees no CUDA device, as on CI.

- forward and backward are finite in float32 and under bfloat16 autocast, every parameter gets a gradient;
- in eval mode (where every variant's randomness is fixed) a float32 layer on the GPU gives its float64 output
  on the CPU, to FP32_TOL, for every variant: the same layout, hashes and features on both devices; an exact
  variant also under bfloat16 autocast, to BF16_TOL (the CPU float64 output of an exact variant equals the
  explicit softmax formula: tests/variants/test_variants.py);
- appended padding leaves the real tokens' outputs unchanged on the GPU;
- full attention through xformers (``bench.backends: {full: [xformers]}``) equals torch's SDPA, output and
  gradients, where xformers is installed;
- the peak memory of one forward+backward (``PeakMemory``: the CUDA allocator's peak) at 2N is at most about
  twice that at N for the variants that declare ``linear_memory``, while full attention on SDPA's math kernel
  (the N x N scores) is the contrast near 4.

TF32 is switched off here (``float32_matmul_precision`` "highest"): the float32 comparisons are of float32.
"""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from attnbench.harness.conformance.checks import lengths_mask
from attnbench.harness.measure.memory import PeakMemory
from attnbench.variants import VARIANTS, build_attention
from attnbench.variants.lib.sdpa import use_xformers, xformers_unavailable

if not torch.cuda.is_available():
    pytest.skip(f"CUDA tests: torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False); "
                "they run on a GPU machine: `make gpu-check`", allow_module_level=True)

CUDA = torch.device("cuda")
ENTRIES = list(VARIANTS)
IDS = [e.name for e in ENTRIES]
EXACT = [e for e in ENTRIES if e.cls.exact]
PADDABLE = [e for e in ENTRIES if e.cls.supports_padding_mask]
LINEAR_MEMORY = [e for e in ENTRIES if e.cls.linear_memory]

DIM, HEADS, BATCH, N = 64, 4, 3, 48
#: GPU float32 against CPU float64, outputs of size about 0.5: float32 on the CPU is within 2e-7 of float64 at
#: these sizes; a GPU sums in another order, hence a margin of about 100x
FP32_TOL = {"atol": 2e-5, "rtol": 1e-4}
#: bfloat16 autocast (8-bit mantissa: one rounding is up to 2e-3 at 0.5) against float64: about 10x what CPU
#: autocast gives (2e-3 largest, 3e-3 relative norm)
BF16_TOL = {"atol": 2e-2, "rtol": 2e-2}
BF16_REL_NORM = 2e-2
#: peak memory of a forward+backward at 2N over that at N (N = MEMORY_N; the contrast at CONTRAST_N)
MEMORY_N, CONTRAST_N, LINEAR_RATIO, QUADRATIC_RATIO = 8192, 4096, 2.6, 3.0


@pytest.fixture(autouse=True)
def _float32_is_float32():
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]


def make(entry, seed=0):
    """The variant with its test-size hyper-parameters (several blocks, chunks, buckets at N tokens), float64,
    on the CPU."""
    torch.manual_seed(seed)
    return build_attention(entry.name, DIM, HEADS, entry.cls.small_params, max_len=2 * N).double()


def randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)



def autocast(precision: str):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")


def rel_norm(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_forward_backward_finite(entry, precision):
    layer = make(entry).float().to(CUDA).train()
    x = randn(BATCH, N, DIM).float().to(CUDA).requires_grad_()
    mask = lengths_mask([N, N - 5, 9], N).to(CUDA) if entry.cls.supports_padding_mask else None
    with autocast(precision):
        out = layer(x, mask)
    assert out.shape == (BATCH, N, DIM)
    assert torch.isfinite(out).all(), f"{entry.name} ({precision}): non-finite output"
    (out.float() * randn(*out.shape, seed=2).float().to(CUDA)).sum().backward()
    assert torch.isfinite(x.grad).all(), f"{entry.name} ({precision}): non-finite input gradient"
    for name, p in layer.named_parameters():
        assert p.grad is not None, f"{entry.name} ({precision}): parameter {name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{entry.name} ({precision}): non-finite gradient for {name}"


def gpu_and_cpu64(entry, precision):
    """Eval-mode outputs of one layer: on the GPU in float32 (under ``precision``), and on the CPU in float64."""
    layer = make(entry).eval()
    x = randn(BATCH, N, DIM, seed=3)
    mask = lengths_mask([N, N - 5, 9], N) if entry.cls.supports_padding_mask else None
    gpu = copy.deepcopy(layer).float().to(CUDA)
    with torch.no_grad():
        want = layer(x, mask)
        with autocast(precision):
            got = gpu(x.float().to(CUDA), None if mask is None else mask.to(CUDA))
    real = torch.ones(BATCH, N, 1, dtype=torch.bool) if mask is None else mask[..., None]
    # padded positions' outputs are whatever a variant leaves there: compare the real tokens
    return got.double().cpu() * real, want * real


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_float32_on_gpu_equals_float64_on_cpu(entry):
    got, want = gpu_and_cpu64(entry, "fp32")
    torch.testing.assert_close(got, want, **FP32_TOL, msg=lambda m: f"{entry.name}: {m}")


@pytest.mark.parametrize("entry", EXACT, ids=[e.name for e in EXACT])
def test_exact_bf16_autocast_on_gpu_is_close_to_float64_on_cpu(entry):
    got, want = gpu_and_cpu64(entry, "bf16")
    torch.testing.assert_close(got, want, **BF16_TOL, msg=lambda m: f"{entry.name}: {m}")
    assert rel_norm(got, want) < BF16_REL_NORM


@pytest.mark.parametrize("entry", PADDABLE, ids=[e.name for e in PADDABLE])
def test_padding_invariance_on_gpu(entry):
    """Appended padding (mask False, junk values) leaves the real tokens' outputs unchanged (float32)."""
    layer = make(entry).float().to(CUDA).eval()
    x = randn(BATCH, N, DIM).float().to(CUDA)
    with torch.no_grad():
        ref = layer(x, torch.ones(BATCH, N, dtype=torch.bool, device=CUDA))
        for pad in (1, 7):
            junk = randn(BATCH, pad, DIM, seed=10 + pad).float().to(CUDA) * 100
            mask = torch.cat([torch.ones(BATCH, N, dtype=torch.bool), torch.zeros(BATCH, pad, dtype=torch.bool)], 1)
            out = layer(torch.cat([x, junk], dim=1), mask.to(CUDA))
            torch.testing.assert_close(out[:, :N], ref, **FP32_TOL, msg=lambda m, pad=pad: f"pad {pad}: {m}")


# ---------------------------------------------------------------- xformers

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_xformers_full_attention_equals_sdpa(dtype):
    why_not = xformers_unavailable()
    if why_not:
        pytest.skip(f"xformers cannot run here: {why_not} (pip install -e '.[gpu]')")
    torch.manual_seed(0)
    layer = build_attention("full", 256, 4, max_len=1024).to(CUDA, dtype).eval()
    x = torch.randn(2, 1024, 256, device=CUDA, dtype=dtype)
    grad = torch.randn_like(x)

    def run(xformers: bool):
        xi = x.clone().requires_grad_()
        layer.zero_grad(set_to_none=True)
        with use_xformers() if xformers else contextlib.nullcontext():
            out = layer(xi)  # no padding: the xformers path takes none
        out.backward(grad)
        return out.detach(), xi.grad, layer.qkv.weight.grad.clone()

    tol = 1e-5 if dtype == torch.float32 else BF16_REL_NORM
    for name, got, want in zip(("output", "input gradient", "qkv weight gradient"), run(True), run(False),
                               strict=True):
        assert rel_norm(got, want) < tol, f"xformers vs SDPA, {dtype}: {name} differs by {rel_norm(got, want):.2e}"


# ---------------------------------------------------------------- peak memory

def peak_fwd_bwd(variant: str, n: int, backend: str | None = None) -> int:
    """Peak CUDA memory one forward+backward adds (B=1, 4 heads of 64, the variant's defaults), after a first
    step of the same shape has paid the one-time costs (workspaces, compilation)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.cuda.empty_cache()  # what an earlier case left cached
    torch.manual_seed(0)
    layer = build_attention(variant, 256, 4, max_len=n).to(CUDA).train()
    x = torch.randn(1, n, 256, device=CUDA, requires_grad=True)
    grad = torch.randn_like(x)
    mask = torch.ones(1, n, dtype=torch.bool, device=CUDA)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x, mask).backward(grad)

    with sdpa_kernel([SDPBackend.MATH]) if backend == "math" else contextlib.nullcontext():
        step()
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with PeakMemory(CUDA) as pm:
            step()
    return pm.peak_bytes


def test_full_attention_on_the_math_kernel_grows_quadratically():
    ratio = peak_fwd_bwd("full", 2 * CONTRAST_N, "math") / peak_fwd_bwd("full", CONTRAST_N, "math")
    assert ratio > QUADRATIC_RATIO, f"full [math]: peak memory at {2 * CONTRAST_N} is {ratio:.2f}x that at {CONTRAST_N}"


@pytest.mark.parametrize("entry", LINEAR_MEMORY, ids=[e.name for e in LINEAR_MEMORY])
def test_linear_memory_variants_grow_subquadratically(entry):
    small, large = peak_fwd_bwd(entry.name, MEMORY_N), peak_fwd_bwd(entry.name, 2 * MEMORY_N)
    ratio = large / small
    assert ratio < LINEAR_RATIO, (f"{entry.name}: peak memory at {2 * MEMORY_N} is {ratio:.2f}x that at {MEMORY_N} "
                                  f"({large / 2**20:.0f} vs {small / 2**20:.0f} MiB)")


# ---------------------------------------------------------------- rows with no allowed key (review finding 4)

SDPA_BACKENDS = ("MATH", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("backend", SDPA_BACKENDS)
def test_cuda_rows_without_keys_give_zeros_and_finite_gradients_on_each_sdpa_backend(backend, dtype):
    """``masked_sdpa`` (every masked kernel call of the variants) on each CUDA SDPA backend that takes a mask:
    rows with no allowed key are zero and every gradient is finite. (What the raw kernel does with such a row
    is printed, not asserted: it is the reason the rows never reach it.)"""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attnbench.variants.lib.sdpa import masked_sdpa

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 64, generator=g).to(CUDA, dtype).requires_grad_() for _ in range(3))
    allowed = torch.ones(2, 1, 64, 64, dtype=torch.bool, device=CUDA)
    allowed[1, :, 40:] = False  # the last 24 queries of element 1 may attend nothing
    allowed[0, :, :, 50:] = False
    try:
        with sdpa_kernel([getattr(SDPBackend, backend)]):
            out = masked_sdpa(q, k, v, allowed)
            out.float().square().sum().backward()
            raw = torch.nn.functional.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(),
                                                                   attn_mask=allowed)
    except RuntimeError as exc:
        if "No available kernel" in str(exc):
            pytest.skip(f"{backend} does not take these inputs on this GPU: {exc}")
        raise
    print(f"{backend} {dtype}: raw kernel on empty rows: finite={bool(torch.isfinite(raw[1, :, 40:]).all())}, "
          f"max |out|={raw[1, :, 40:].float().abs().nan_to_num(nan=float('inf')).max().item():.3g}")
    assert not out[1, :, 40:].any()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all(), f"{backend} {dtype}: non-finite gradient"


@pytest.mark.parametrize("name,params", [("window", {"window": 4, "global_tokens": ()}), ("local", {"block_size": 16}),
                                         ("sparse", {"block_size": 16, "window_blocks": 0, "random_blocks": 0,
                                                     "global_blocks": ()})])
def test_cuda_block_layouts_train_finite_with_empty_rows_on_the_gather_path(name, params):
    """LRA's training path on CUDA (attention dropout: the SDPA gather) with rows that have no key (padding past
    the window, all-padding blocks, an all-padding element), under bf16 autocast: loss and gradients finite."""
    torch.manual_seed(0)
    layer = build_attention(name, DIM, HEADS, {**params, "kernel": "gather"}, max_len=2 * N, dropout=0.1).to(CUDA)
    x = torch.randn(3, 2 * N, DIM, device=CUDA, requires_grad=True)
    mask = lengths_mask([2 * N, 30, 0], 2 * N).to(CUDA)
    with autocast("bf16"):
        y = layer.train()(x, mask)
    y[mask].float().square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
