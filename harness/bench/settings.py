"""The efficiency sweep's settings (the config's ``bench:`` section) and the cases they expand to.

A case is one (variant, SDPA backend, scope, mode, dtype, batch, length): one attention layer
or one whole encoder block, run forward only (inference) or forward and backward (training).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from attnbench.harness.core.registry import as_dict, build_dataclass, param
from attnbench.variants import VARIANTS

SDPA_BACKENDS = ("default", "math", "flash", "efficient", "cudnn", "xformers")
Dtype = Literal["float32", "float64", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(Dtype)


@dataclass(frozen=True)
class BenchConfig:
    """Efficiency sweep: time and peak memory of every variant across sequence lengths."""

    enabled: bool = param(True, "run the sweep as part of the pipeline (`snakemake bench` runs only the sweep)")
    lengths: tuple[int, ...] = param((512, 1024, 2048, 4096, 8192), "sequence lengths swept on CPU")
    cuda_lengths: tuple[int, ...] = param((1024, 2048, 4096, 8192, 16384, 32768),
                                          "sequence lengths swept when the device is cuda")
    batch_sizes: tuple[int, ...] = param((1,), "batch sizes swept")
    heads: int = param(4, "attention heads", minimum=1)
    head_dim: int = param(64, "size of each head (model width = heads x head_dim)", minimum=1)
    mlp_dim: int = param(1024, "hidden width of the encoder block's MLP (scope: block)", minimum=1)
    dtypes: tuple[Dtype, ...] = param(("float32",), "dtypes swept on CPU")
    cuda_dtypes: tuple[Dtype, ...] = param(("float32", "bfloat16"), "dtypes swept when the device is cuda")
    modes: tuple[Literal["forward", "forward_backward"], ...] = param(
        ("forward", "forward_backward"),
        "forward: inference (eval mode, no autograd); forward_backward: one training step's attention work")
    scopes: tuple[Literal["layer", "block"], ...] = param(
        ("layer", "block"), "layer: the attention layer alone (projections included); block: a pre-LN encoder "
        "block (attention + MLP)")
    backends: dict[str, tuple[str, ...]] = param(
        {"full": ["default", "math"]},
        "SDPA backends per variant (default: one run with torch's own choice). 'math' is SDPA's O(N^2)-memory "
        "reference kernel, 'flash'/'efficient'/'cudnn' force one fused kernel, 'xformers' runs full attention "
        "through xformers.ops.memory_efficient_attention (CUDA only; recorded as unavailable elsewhere)")
    variant_params: dict[str, dict] = param(
        {}, "per-variant hyper-parameters for the sweep, over the variant's defaults (which suit 1K-4K tokens); "
        "the `variants:` settings suit the training tasks' lengths and are not used here")
    variants: tuple[str, ...] = param((), "variants to sweep (empty: every variant in `variants:`)")
    warmup: int = param(2, "untimed steps before the timed ones", minimum=0)
    repeats: int = param(7, "timed steps per case; the table reports their median", minimum=1)
    rounds: int = param(1, "passes over a variant's cases, interleaved (every case once, then again): a case's "
                        "median is the median of its rounds' medians, so a slow spell of a shared machine moves one "
                        "round of it, not all; 3 steadies the medians from sweep to sweep at 3x the time", minimum=1)
    threads: int = param(0, "torch threads (0: one fewer than the cores the bench job holds, at least 1; the "
                         "job holds every core so that nothing runs beside it, and the spare core takes the OS "
                         "and Snakemake, which keeps the timings steady)", minimum=0)
    time_cap_s: float = param(60.0, "a case whose single step takes longer is recorded as timeout, as is one whose "
                              "timing (its warm-up and timed steps) takes over (warmup + repeats + 1) times this "
                              "(0: no cap)", minimum=0.0)
    memory_cap_mb: int = param(0, "a case whose process exceeds this resident memory (CPU) or allocates more "
                               "(CUDA) is recorded as oom; 0: 80% of the machine's RAM / the GPU's memory",
                               minimum=0)
    prime_length: int = param(64, "one untimed step at this length before the measured first step, so torch's "
                              "one-time set-up is not counted as the case's memory", minimum=1)
    seed: int = param(0, "seed of the layers' weights and the inputs", minimum=0)


@dataclass(frozen=True)
class Case:
    """One measured configuration of the sweep."""

    variant: str
    params: dict
    backend: str
    scope: str
    mode: str
    dtype: str
    batch: int
    n: int

    @property
    def impl(self) -> str:
        """The row label: the variant, with a non-default backend in brackets."""
        return self.variant if self.backend == "default" else f"{self.variant} [{self.backend}]"

    @property
    def id(self) -> str:
        impl = self.variant if self.backend == "default" else f"{self.variant}.{self.backend}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{impl}-{self.scope}-{self.mode}-{self.dtype}-b{self.batch}-n{self.n}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def bench_settings(config: dict) -> BenchConfig:
    """The ``bench:`` section of a validated config as a ``BenchConfig``."""
    return build_dataclass(BenchConfig, config.get("bench", {}), "bench")


def bench_variants(config: dict) -> list[str]:
    """The variants the sweep measures: ``bench.variants``, else every variant in ``variants:``."""
    return list(bench_settings(config).variants or config["variants"])


def sweep_threads(settings: BenchConfig, cores: int) -> int:
    """Torch threads of a bench job holding ``cores`` cores: ``bench.threads``, else one core spare."""
    return settings.threads or max(1, cores - 1)


def resolve_device(device: str) -> str:
    """The device a sweep runs on: ``auto`` is cuda where this process sees a GPU, else cpu. Called by the
    bench job where it runs (after its GPU lease), never while planning: a login node without a GPU
    would plan a CPU sweep for a job that gets one."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def variant_params(settings: BenchConfig, variant: str) -> dict:
    """One variant's hyper-parameters in the sweep: ``bench.variant_params`` over the variant's defaults."""
    return as_dict(VARIANTS.make_config(variant, settings.variant_params.get(variant, {})))


def expand_cases(settings: BenchConfig, variant: str, params: dict, device: str) -> list[Case]:
    """Every case of one variant on a resolved ``device`` (cpu or cuda): its backends x scopes x modes x
    dtypes x batch sizes x lengths, with the lengths and dtypes of that device."""
    cuda = device == "cuda"
    lengths = settings.cuda_lengths if cuda else settings.lengths
    dtypes = settings.cuda_dtypes if cuda else settings.dtypes
    return [Case(variant, params, backend, scope, mode, dtype, batch, n)
            for backend in settings.backends.get(variant, ["default"])
            for scope in settings.scopes for mode in settings.modes for dtype in dtypes
            for batch in settings.batch_sizes for n in sorted(lengths)]


def variant_cases(config: dict, variant: str, device: str | None = None) -> list[Case]:
    """Every case of one variant on ``device`` (default: the config's, resolved in this process)."""
    cfg = bench_settings(config)
    device = resolve_device(device or config.get("device", "cpu"))
    return expand_cases(cfg, variant, variant_params(cfg, variant), device)


def check_bench(config: dict) -> list[str]:
    """Problems with the ``bench:`` section that the schema cannot express."""
    cfg = bench_settings(config)
    problems = []
    for key in ("lengths", "cuda_lengths", "batch_sizes"):
        bad = [v for v in getattr(cfg, key) if v < 1]
        if bad or not getattr(cfg, key):
            problems.append(f"'bench.{key}' is {list(getattr(cfg, key))}; give at least one value, each >= 1")
    known = VARIANTS.names()
    for key in ("backends", "variant_params"):
        for name in getattr(cfg, key):
            if name not in known:
                problems.append(f"unknown variant {name!r} under 'bench.{key}'; known variants: {', '.join(known)}")
    for name, backends in cfg.backends.items():
        bad = [b for b in backends if b not in SDPA_BACKENDS]
        if bad or not backends:
            problems.append(f"'bench.backends.{name}' is {backends}; allowed: {', '.join(SDPA_BACKENDS)}")
    for name in cfg.variants:
        if name not in known:
            problems.append(f"unknown variant {name!r} under 'bench.variants'; known variants: {', '.join(known)}")
    for name, params in cfg.variant_params.items():
        if name in known:
            try:
                VARIANTS.make_config(name, params)
            except (ValueError, TypeError) as exc:
                problems.append(f"'bench.variant_params.{name}': {exc}")
    return problems
