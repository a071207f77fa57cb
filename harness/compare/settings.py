"""The settings of an ``attnbench compare`` run: its command line (``build_parser``), read once into a
``CompareSettings`` that everything below the command line is given, and their record in the JSON."""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
from pathlib import Path
from typing import Any

import yaml

from attnbench.harness.compare.registry import PEERS, Params, Shape, variant_defaults
from attnbench.harness.core.errors import UsageError
from attnbench.variants import VARIANTS


@dataclasses.dataclass(frozen=True)
class CompareSettings:
    """What one ``attnbench compare`` run measures, and how (the options of ``build_parser``)."""

    out: Path  # the JSON report
    n: tuple[int, ...] = (4096,)  # sequence lengths
    batch: int = 1
    heads: int = 4
    head_dim: int = 64
    repeats: int = 5  # timed steps per implementation
    warmup: int = 2  # untimed steps before them
    rounds: int = 1  # fresh processes per implementation (at least 1)
    threads: int | None = None  # torch threads; None: every core this process may use
    variants: tuple[str, ...] | None = None  # None: every variant
    peers: tuple[str, ...] | None = None  # None: every peer
    device: str = "auto"  # cpu, cuda or auto
    overrides: dict[str, Params] = dataclasses.field(default_factory=dict)  # --set: variant -> param -> value
    no_peers: bool = False  # ours alone
    timeout: float = 1800.0  # seconds per implementation process
    seed: int = 0
    profile: str | None = None  # folder of torch.profiler op tables
    peer_modules: tuple[str, ...] = ()  # imported in every process to register more peers
    config: str | None = None  # --config: the pipeline config whose variants are compared (each timed, alone
    # where it has no peer to run)

    def shape(self, n: int) -> Shape:
        return Shape(n, self.batch, self.heads, self.head_dim)


def describe(settings: CompareSettings, threads: int, devices: list[str], torch_devices: dict[str, str],
             gpu_lease: dict[str, Any] | None) -> dict[str, Any]:
    """The report's ``settings``: what was measured and how, in words where a number cannot say it."""
    s = settings
    return {"n": list(s.n), "batch": s.batch, "heads": s.heads, "head_dim": s.head_dim,
            "dim": s.heads * s.head_dim, "dtype": "float32", "threads": threads,
            "warmup": s.warmup, "repeats": s.repeats, "rounds": s.rounds,
            "devices": devices, "torch_devices": torch_devices, "seed": s.seed, "config": s.config,
            "gpu_lease": gpu_lease,
            "step": "forward + backward of the whole layer (projections included), training mode, "
                    "dropout 0, all tokens real",
            "mask": "ours gets the all-True key_padding_mask tensor, as the pipeline's model passes it; "
                    "each peer gets it in its own library's form, or none where its API means "
                    "'no padding' by none",
            "time": "median of the repeats after warm-up, perf_counter (device synchronised)",
            "memory": "peak in a fresh process per implementation above the process's memory before "
                      "the first step: of the first step (peak_bytes) and over the warm-up and later "
                      "steps (peak_all_bytes); on a CPU from a separate run with glibc's mmap threshold "
                      "fixed (live memory, repeatable; each side's memory_method says), the timing runs' "
                      "figures under the default allocator kept as *_default_malloc"}


def parse_settings(items: list[str] | None) -> dict[str, Params]:
    """``--set VARIANT.PARAM=VALUE`` items -> {variant: {param: value}}; VALUE is read as YAML
    (``256``, ``0.5``, ``[0]``, ``favor``). Unknown variants and parameters are refused."""
    out: dict[str, Params] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        variant, dot, name = key.partition(".")
        if not sep or not dot or not variant or not name:
            raise UsageError(f"--set {item!r}: expected VARIANT.PARAM=VALUE, e.g. window.window=256")
        if variant not in VARIANTS.names():
            raise UsageError(f"--set {item!r}: unknown variant {variant!r}")
        if name not in variant_defaults(variant):
            raise UsageError(f"--set {item!r}: {variant} has no parameter {name!r}; "
                             f"it has {', '.join(variant_defaults(variant))}")
        out.setdefault(variant, {})[name] = yaml.safe_load(raw)
    return out


def _split(values: list[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnbench compare",
        description="Time each attention variant against public PyTorch implementations of the same mechanism "
                    "(forward+backward, float32), each implementation in a fresh process.")
    p.add_argument("--n", type=int, action="append", help="sequence length (repeatable; default 4096)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per implementation (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them (at least 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="fresh processes per implementation, ours and the peer alternating; timed steps are "
                        "pooled (spreads the effect of other load on a shared machine over both sides)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--variants", action="append", help="subset, comma-separated or repeated (default: all)")
    p.add_argument("--peers", action="append", help="subset of peer names, comma-separated or repeated "
                   f"(default: all; known: {', '.join(PEERS)}; --list shows them)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="auto: CPU, and also CUDA where a GPU is present")
    p.add_argument("--out", default=None, help="JSON path (default results/compare/compare-<time>.json)")
    p.add_argument("--set", action="append", metavar="VARIANT.PARAM=VALUE",
                   help="a mechanism setting for both sides instead of our default, e.g. window.window=256 "
                        "(LRA's Longformer); repeatable")
    p.add_argument("--no-peers", action="store_true", help="time our variants only (no peer packages needed)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per implementation process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="also profile one step of each implementation with torch.profiler; op tables go to DIR")
    p.add_argument("--peer-module", action="append", metavar="MODULE",
                   help="import MODULE (in every process) to register extra peers with register_peer()")
    p.add_argument("--config", metavar="CONFIG",
                   help="a pipeline config: compare its variants (a `from:` variant from outside the repository "
                        "included) with their `variants:` parameters, each beside its peers where it has any and "
                        "timed alone where it has none; --variants picks among them, --set overrides")
    p.add_argument("--list", action="store_true",
                   help="list every registered peer (variant, name, packages, installed or missing) and exit")
    return p


def settings_from_args(args: argparse.Namespace, config_variants: dict[str, Params] | None = None) -> CompareSettings:
    """The parsed command line as ``CompareSettings`` (the one place that reads ``args``). ``config_variants``:
    the variants of ``--config`` with their parameters, already registered (``command.main`` reads them): the
    variants compared unless ``--variants`` names others, and their parameters under ``--set``'s."""
    if args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    out = args.out
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("results/compare") / f"compare-{stamp}.json"
    return CompareSettings(
        out=Path(out), n=tuple(args.n or (4096,)), batch=args.batch, heads=args.heads, head_dim=args.head_dim,
        repeats=args.repeats, warmup=args.warmup, rounds=max(1, int(args.rounds)), threads=args.threads,
        variants=_split(args.variants) or (tuple(config_variants) if config_variants is not None else None),
        peers=_split(args.peers), device=args.device, overrides=_overrides(config_variants, parse_settings(args.set)),
        no_peers=args.no_peers, timeout=args.timeout, seed=args.seed, profile=args.profile,
        peer_modules=tuple(args.peer_module or ()), config=args.config)


def _overrides(config_variants: dict[str, Params] | None, given: dict[str, Params]) -> dict[str, Params]:
    """Per variant, the config's parameters with ``--set``'s over them."""
    out = {name: dict(params) for name, params in (config_variants or {}).items()}
    for name, params in given.items():
        out[name] = {**out.get(name, {}), **params}
    return out
