"""Mixed precision: how train.precision resolves, and every variant under CPU autocast (bf16 and
fp16) against float32 — the variants keep their numerically sensitive parts in float32."""
from __future__ import annotations

import pytest
import torch

from attnbench.harness.run import precision
from attnbench.variants import VARIANTS, build_attention

#: the longest input these tests build layers for
MAX_LEN = 4096

#: bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ~ 0.2 %); after the projections, the
#: scores and the output projection, the layer output may differ from float32 by a few percent
#: of its scale, never more: a variant that computed a sensitive part (a sum over N, a softmax
#: normaliser, a -1e9 mask) in bf16/fp16 would be far off or non-finite
REL_TOL = {"bf16": 0.05, "fp16": 0.01}


def test_auto_is_fp32_on_cpu_and_bf16_on_a_cuda_device_that_has_it():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.resolve_precision("auto", cpu) == "fp32"
    assert precision.resolve_precision("auto", cuda, bf16_supported=True) == "bf16"
    assert precision.resolve_precision("auto", cuda, bf16_supported=False) == "fp32"
    for name in ("fp32", "bf16", "fp16"):
        assert precision.resolve_precision(name, cpu) == name
    with pytest.raises(precision.PrecisionError, match="allowed: auto, fp32, bf16, fp16"):
        precision.resolve_precision("fp8", cpu)


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(precision.PrecisionError, match="V100 has no native bfloat16"):
        precision.resolve_precision("bf16", torch.device("cuda"), bf16_supported=False)


def test_autocast_and_scaler_follow_the_precision():
    cpu = torch.device("cpu")
    w = torch.randn(8, 8)
    with precision.autocast("bf16", cpu):
        assert (torch.randn(4, 8) @ w).dtype == torch.bfloat16
    with precision.autocast("fp32", cpu):
        assert (torch.randn(4, 8) @ w).dtype == torch.float32
    assert precision.grad_scaler("fp16", cpu).is_enabled()
    assert not precision.grad_scaler("bf16", cpu).is_enabled()


def _layer_and_input(name: str, n: int = 40, seed: int = 0):
    entry = VARIANTS.get(name)
    torch.manual_seed(seed)
    layer = build_attention(name, 32, 4, dict(entry.cls.small_params), max_len=MAX_LEN).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, n, 32, generator=g)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, n - 9:] = False  # padding: the masked paths run too
    return layer, x, mask


@pytest.mark.parametrize("name", VARIANTS.names())
@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_every_variant_under_cpu_autocast_is_finite_and_close_to_float32(name, kind):
    layer, x, mask = _layer_and_input(name)
    with torch.no_grad():
        want = layer(x, mask)
        with precision.autocast(kind, torch.device("cpu")):
            got = layer(x, mask)
    assert torch.isfinite(got).all(), f"{name} under {kind} autocast gave non-finite outputs"
    real = mask[:, :, None].expand_as(want)
    err = (got.float() - want)[real].abs().max() / want[real].abs().max()
    assert err < REL_TOL[kind], f"{name} under {kind}: max error {err:.4f} of the output scale"


@pytest.mark.parametrize("name", VARIANTS.names())
def test_every_variant_trains_under_bf16_autocast_with_finite_gradients(name):
    layer, x, mask = _layer_and_input(name)
    layer.train()
    with precision.autocast("bf16", torch.device("cpu")):
        out = layer(x.requires_grad_(), mask)
    out.float().pow(2).mean().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}.{pname}: gradient missing or non-finite"


def test_lsh_masks_stay_finite_under_fp16_autocast():
    """LSH's mask value (-1e9) overflows float16: its scores are computed in float32 whatever autocast says."""
    layer, x, mask = _layer_and_input("lsh", n=48)
    with torch.no_grad(), precision.autocast("fp16", torch.device("cpu")):
        out = layer(x, mask)
    assert torch.isfinite(out).all()
