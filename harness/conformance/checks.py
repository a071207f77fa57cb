"""The conformance checks of an attention variant, by registered name.

Each check builds the variant small (``DIM`` wide, ``HEADS`` heads, its ``small_params``, so that
several blocks, chunks or buckets are exercised at ``N`` tokens) and raises ``CheckFailed`` with
what it saw, or ``CheckSkipped`` when the check does not apply (a variant without padding
support, or one that does not claim linear memory). ``run_checks`` runs them all and returns one
``Result`` per check; ``tests/variants/test_variants.py`` runs the same functions on every registered
variant, so a user's class passes exactly what the built-in ones pass.

Each check runs under a time limit (``CHECK_TIMEOUT_S``, ``attnbench check-variant --check-timeout``;
``core.watchdog``): a forward that never returns fails its check, naming the limit, the processes the
check started are stopped, and the next checks run. A check stuck in one native call that cannot be
interrupted is reported as failed ``CHECK_GRACE_S`` later, and the process then ends (exit status 1):
the checks after it do not run.
"""
from __future__ import annotations

import dataclasses
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.autograd.gradcheck import GradcheckError

from attnbench.harness.compare.probe import run_worker
from attnbench.harness.core import signals, watchdog
from attnbench.harness.core.registry import dataclass_schema
from attnbench.variants import VARIANTS, Attention, build_attention

DIM, HEADS, BATCH, N = 16, 2, 3, 24
#: the longest input the checks build layers for (every input here is shorter)
MAX_LEN = 4096
#: peak memory of one forward+backward at 2N over N that "linear memory" allows (2 is exact;
#: allocator rounding and fixed costs move it a little), as tests/harness/measure/test_memory_scaling.py
LINEAR_MEMORY_RATIO = 2.6
MEMORY_N = 2048
#: the attention dropout of the layers the eval-determinism check builds (eval mode must turn it off)
EVAL_DROPOUT = 0.3
#: the gradcheck's input: 2 elements of GRAD_N tokens, the second padded (its last 3 tokens masked)
GRAD_N = 12
#: seconds one check may take (the linear-memory check, two fresh processes, takes a few)
CHECK_TIMEOUT_S = 60.0
#: seconds past its limit after which a check that could not be interrupted ends the process
CHECK_GRACE_S = 10.0


class CheckFailed(AssertionError):
    """The variant does not do what the check asks."""


class CheckSkipped(Exception):
    """The check does not apply to the variant."""


@dataclasses.dataclass(frozen=True)
class Result:
    check: str
    status: str  # pass | fail | skip
    detail: str = ""


def make(name: str, dtype=torch.float64, seed: int = 0, dropout: float = 0.0) -> Attention:
    """The variant at test size in eval mode, its weights seeded (``dropout``: its attention dropout)."""
    torch.manual_seed(seed)
    params = dict(VARIANTS.get(name).cls.small_params)
    return build_attention(name, DIM, HEADS, params, max_len=MAX_LEN, dropout=dropout).to(dtype).eval()


def randn(*shape, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def lengths_mask(lengths: list[int], n: int) -> torch.Tensor:
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


def _close(got: torch.Tensor, want: torch.Tensor, what: str, atol: float = 1e-10) -> None:
    err = (got - want).abs().max().item() if got.numel() else 0.0
    _expect(got.shape == want.shape and err <= atol, f"{what}: max difference {err:.3g} (allowed {atol:g})")


# ---------------------------------------------------------------- the checks

def check_interface(name: str) -> str:
    """A subclass of Attention with a docstring, a complexity, and a config dataclass whose every
    field has a default (its JSON schema builds)."""
    entry = VARIANTS.get(name)
    _expect(issubclass(entry.cls, Attention), f"{entry.cls} does not subclass attnbench.variants.Attention")
    _expect(bool(entry.description), "the class needs a docstring (its first line is the description)")
    _expect(isinstance(entry.cls.complexity, str) and bool(entry.cls.complexity),
            "set the `complexity` class attribute")
    schema = dataclass_schema(entry.config)
    return f"{len(schema['properties'])} parameter(s): {', '.join(schema['properties']) or 'none'}"


def check_construction_errors(name: str) -> str:
    """Unknown parameters and a width not divisible by the heads are refused with ValueError."""
    for params, dim, heads, needle in (({"no_such_param": 1}, DIM, HEADS, "no_such_param"), ({}, 10, 3, "divisible")):
        try:
            build_attention(name, dim, heads, params, max_len=MAX_LEN)
        except ValueError as exc:
            _expect(needle in str(exc), f"the ValueError for {needle!r} does not say so: {exc}")
        else:
            raise CheckFailed(f"built without complaint with {params or f'dim {dim}, heads {heads}'}")
    return "unknown parameter and dim % heads refused"


def check_shapes_and_dtypes(name: str) -> str:
    """(B, N, D) in float32 and float64, with and without a padding mask: same shape and dtype out, finite."""
    for dtype in (torch.float32, torch.float64):
        layer = make(name, dtype)
        x = randn(BATCH, N, DIM, dtype=dtype)
        masks = [None] + ([lengths_mask([N, N - 3, 2], N)] if layer.supports_padding_mask else [])
        for mask in masks:
            out = layer(x, mask)
            _expect(out.shape == x.shape and out.dtype == dtype,
                    f"{dtype}: output {tuple(out.shape)} {out.dtype} for input {tuple(x.shape)} {dtype}")
            _expect(bool(torch.isfinite(out).all()), f"{dtype}, mask {mask is not None}: non-finite output")
    return "float32 and float64, with and without padding"


def check_gradients(name: str) -> str:
    """In training mode every parameter gets a finite, non-zero gradient (and so does the input)."""
    layer = make(name, torch.float32).train()
    x = randn(BATCH, N, DIM, dtype=torch.float32).requires_grad_()
    mask = lengths_mask([N, N - 4, 5], N) if layer.supports_padding_mask else None
    out = layer(x, mask)
    (out * randn(*out.shape, seed=2, dtype=torch.float32)).sum().backward()
    if x.grad is None:
        raise CheckFailed("the input gets no gradient")
    _expect(bool(torch.isfinite(x.grad).all()), "non-finite gradient for the input")
    for pname, p in layer.named_parameters():
        if p.grad is None:
            raise CheckFailed(f"parameter {pname} gets no gradient")
        _expect(bool(torch.isfinite(p.grad).all()), f"non-finite gradient for {pname}")
        _expect(bool(p.grad.abs().sum() > 0), f"zero gradient for {pname}")
    return f"{sum(1 for _ in layer.parameters())} parameter tensors"


def check_gradcheck(name: str) -> str:
    """The gradient is the derivative of the output: in eval mode (randomness fixed) and float64, on a small
    batch with padded rows, ``torch.autograd.gradcheck`` compares the input's analytic gradient with finite
    differences, every output row included, padded ones too (a hand-written backward that ignores what a
    padded row reads fails here). Fast mode: random directions, a few forwards."""
    layer = make(name)
    x = randn(2, GRAD_N, DIM).requires_grad_()
    mask = lengths_mask([GRAD_N, GRAD_N - 3], GRAD_N) if layer.supports_padding_mask else None
    try:
        torch.autograd.gradcheck(lambda t: layer(t, mask), (x,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    except GradcheckError as exc:
        raise CheckFailed(f"the input's gradient is not the derivative of the output: {str(exc).splitlines()[0]}") \
            from None
    return f"float64, {GRAD_N} tokens, " + ("a padded element" if mask is not None else "no padding mask")


def check_padding_invariance(name: str) -> str:
    """Appended padding (mask False, junk values) leaves the real tokens' outputs unchanged, and an
    all-True mask equals no mask."""
    layer = make(name)
    if not layer.supports_padding_mask:
        raise CheckSkipped("supports_padding_mask is False")
    x = randn(BATCH, N, DIM)
    ref = layer(x, torch.ones(BATCH, N, dtype=torch.bool))
    _close(layer(x), ref, "no mask vs an all-True mask")
    for pad in (1, 7):
        junk = randn(BATCH, pad, DIM, seed=10 + pad) * 100  # whatever sits in the padding must not matter
        mask = torch.cat([torch.ones(BATCH, N, dtype=torch.bool), torch.zeros(BATCH, pad, dtype=torch.bool)], 1)
        _close(layer(torch.cat([x, junk], dim=1), mask)[:, :N], ref, f"{pad} padded position(s) appended")
    return "1 and 7 padded positions"


def check_padding_per_element(name: str) -> str:
    """Ragged lengths in one batch: each element's real outputs equal running it alone, unpadded."""
    layer = make(name)
    if not layer.supports_padding_mask:
        raise CheckSkipped("supports_padding_mask is False")
    lengths = [N, 5, 9]
    x = randn(BATCH, N, DIM)
    out = layer(x, lengths_mask(lengths, N))
    for b, n in enumerate(lengths):
        _close(out[b:b + 1, :n], layer(x[b:b + 1, :n]), f"element {b} ({n} real tokens) vs alone")
    return f"lengths {lengths}"


def check_eval_determinism(name: str) -> str:
    """In eval mode the output is a function of the weights and the input: the same twice, and the
    same from a second layer built under the same seed (randomness fixed per layer in eval). The layers
    are built with attention dropout (``EVAL_DROPOUT``), which eval mode must turn off: a wrapped
    third-party layer whose dropout ignores the mode fails here."""
    x = randn(BATCH, N, DIM)
    a, b = make(name, seed=4, dropout=EVAL_DROPOUT), make(name, seed=4, dropout=EVAL_DROPOUT)
    first = a(x)
    _close(a(x), first, "two eval forwards of one layer", atol=0.0)
    _close(b(x), first, "two layers built under the same seed", atol=0.0)
    return "repeatable in eval mode"


def check_flops(name: str) -> str:
    """``flops(batch, seq_len)`` is implemented: a positive int growing with the length and the batch."""
    layer = make(name)
    try:
        flops = layer.flops(2, 32)
    except NotImplementedError:
        raise CheckFailed("flops(batch, seq_len) is not implemented (the sweep and report need it)") from None
    _expect(isinstance(flops, int) and flops > 0, f"flops(2, 32) is {flops!r}; expected a positive int")
    _expect(layer.flops(2, 64) > flops and layer.flops(4, 32) > flops, "flops do not grow with length and batch")
    return f"flops(2, 32) = {flops:,}"


def check_max_len(name: str) -> str:
    """A layer built for ``max_len`` runs inputs of that length and shorter ones."""
    torch.manual_seed(0)
    params = dict(VARIANTS.get(name).cls.small_params)
    layer = build_attention(name, DIM, HEADS, params, max_len=32).double().eval()
    for n in (32, 20):
        out = layer(randn(2, n, DIM))
        _expect(out.shape == (2, n, DIM), f"max_len 32, input of {n}: output {tuple(out.shape)}")
    return "max_len 32: inputs of 32 and 20 tokens"


def check_linear_memory(name: str, workdir: Path | None = None) -> str:
    """A variant that claims ``linear_memory``: the peak memory of one forward+backward at 2N is at
    most LINEAR_MEMORY_RATIO times that at N (each in a fresh process; default parameters)."""
    if not VARIANTS.get(name).cls.linear_memory:
        raise CheckSkipped("linear_memory is False (nothing claimed)")
    base: dict[str, Any] = {"impl": "ours", "peer": None, "batch": 1, "heads": 4, "head_dim": 64, "threads": 1,
                            "device": "cpu", "warmup": 1, "repeats": 1, "seed": 0, "prime_n": 256, "variant": name,
                            "params": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir or tmp)
        peaks = {}
        for n in (MEMORY_N, 2 * MEMORY_N):
            result = run_worker({**base, "n": n}, 600, work)
            _expect(bool(result.get("ok")), f"the probe at N={n} failed: {result.get('error')}")
            peaks[n] = result["peak_bytes"]
    ratio = peaks[2 * MEMORY_N] / max(1, peaks[MEMORY_N])
    _expect(ratio < LINEAR_MEMORY_RATIO, f"peak memory at N={2 * MEMORY_N} is {ratio:.2f}x that at N={MEMORY_N} "
                                         f"(linear: about 2, at most {LINEAR_MEMORY_RATIO})")
    return f"{ratio:.2f}x from N={MEMORY_N} to {2 * MEMORY_N}"


CHECKS: dict[str, Callable[[str], str]] = {
    "interface": check_interface,
    "construction errors": check_construction_errors,
    "shapes and dtypes": check_shapes_and_dtypes,
    "gradients": check_gradients,
    "gradcheck": check_gradcheck,
    "padding invariance": check_padding_invariance,
    "padding per element": check_padding_per_element,
    "eval determinism": check_eval_determinism,
    "flops": check_flops,
    "max_len": check_max_len,
    "linear memory": check_linear_memory,
}
#: the checks that run in this process in a fraction of a second (the memory check starts processes)
FAST_CHECKS = [c for c in CHECKS if c != "linear memory"]


def run_checks(name: str, checks: list[str] | None = None, timeout_s: float = CHECK_TIMEOUT_S,
               report: Callable[[Result], None] | None = None) -> list[Result]:
    """Every check (or ``checks``) on the registered variant ``name``, each within ``timeout_s`` seconds
    (0: no limit); ``report(result)`` is called as each ends. An exception in a check is a failure with
    its last traceback line, never a crash of the run."""
    results = []
    for check in checks or list(CHECKS):
        results.append(run_check(name, check, timeout_s, report))
        if report is not None:
            report(results[-1])
    return results


def run_check(name: str, check: str, timeout_s: float = CHECK_TIMEOUT_S,
              report: Callable[[Result], None] | None = None) -> Result:
    """One check within ``timeout_s`` seconds (``run_checks``); ``report`` tells of a check that ends the process."""
    limit_text = f"the time limit of {timeout_s:g} s (--check-timeout)"

    def stuck() -> None:  # the watchdog's last word, before it ends the process
        if report is not None:
            report(Result(check, "fail", f"did not return within {limit_text} nor {CHECK_GRACE_S:g} s after it "
                                         "(stuck in one call); check-variant ends here"))

    started = signals.descendants()
    with watchdog.Deadline(timeout_s, f"check {check!r} of check-variant", grace_s=CHECK_GRACE_S, on_stuck=stuck,
                           exit_code=1):
        try:
            return Result(check, "pass", CHECKS[check](name))
        except CheckSkipped as exc:
            return Result(check, "skip", str(exc))
        except CheckFailed as exc:
            return Result(check, "fail", str(exc))
        except Exception as exc:  # the user's code raised: a failure of the check, reported, not raised
            where = traceback.extract_tb(exc.__traceback__)[-1]
            return Result(check, "fail", f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})")
    signals.stop_descendants(keep=started)  # the processes the interrupted check started
    return Result(check, "fail", f"did not finish within {limit_text}: interrupted")
