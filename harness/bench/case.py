"""One case of the efficiency sweep: build it, step it, count its FLOPs, and measure its peak
memory in a fresh process.

``Stepper(case, settings)`` builds the layer or block with its inputs and runs one step per call
(forward: eval mode under ``torch.inference_mode``; forward_backward: training mode, output
gradient applied), synchronising the device at the end, so a timer around the call is honest.

``measure_in_process(spec)`` is what ``python -m attnbench.harness.bench.case`` runs for one case in a
fresh process (started by ``attnbench.harness.measure.fresh_process.run_fresh``):
1. one untimed step at ``prime_length`` tokens: torch's one-time set-up (lazy initialisation,
   code pages of the kernels) is paid before measuring. A case whose attention is compiled for its
   shape (FlexAttention on CUDA) is primed at its own length instead: otherwise the measured step
   would compile (seconds) for the new length;
2. the measured step: peak memory above the memory just before it (CPU: the process's resident
   set, via a reset ``VmHWM``; CUDA: ``max_memory_allocated`` after a reset, reserved too) and its
   time; a step slower than ``time_cap_s`` makes the case a ``timeout``. The attention kernel it ran
   and why (``variants.kernels``) go into the row;
3. one more step under ``torch.utils.flop_counter.FlopCounterMode``: the FLOPs it sees (xformers'
   kernel, which it does not see, added from the case's shapes by torch's own SDPA formulas).
   FlexAttention cannot run under the counter (dynamo runs no compiled frame under a dispatch mode,
   and the eager operator has no rule for it), and torch's formula for it would count the dense
   N x N product: its layers are counted on the gather kernel of the same layout instead
   (``harness.measure.flops.counted_on_gather``), which the row's ``flops_counted_method`` says.

On CUDA the worker caps its allocations first (``cap_cuda_memory``): the configured cap, else 80% of
the GPU, never more than was free when it started; the result carries the cap it used. A backend
that cannot run the case (``unavailable``, or torch finding no SDPA kernel for it) is ``unavailable``.
"""
from __future__ import annotations

import contextlib
import re
import sys
import time
from typing import cast

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from attnbench.harness.bench.settings import Case
from attnbench.harness.measure.flops import FLEX_FLOPS_NOTE, counted_on_gather, flex_layers
from attnbench.harness.measure.fresh_process import worker_main
from attnbench.harness.measure.memory import PeakMemory, cap_cuda_memory
from attnbench.harness.measure.sdpa_kernels import SdpaKernels
from attnbench.harness.measure.timing import synchronize
from attnbench.harness.run.model import Block, ModelConfig
from attnbench.variants import build_attention
from attnbench.variants.base import Attention
from attnbench.variants.lib.flex_blocks import flex_compiled
from attnbench.variants.lib.kernels import KernelLog
from attnbench.variants.lib.sdpa import use_xformers, xformers_unavailable


def backend_context(backend: str):
    """The context that makes SDPA (or full attention) use ``backend`` ("default": torch's choice)."""
    if backend == "default":
        return contextlib.nullcontext()
    if backend == "xformers":
        return use_xformers()
    name = {"efficient": "EFFICIENT_ATTENTION", "flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION"}
    return sdpa_kernel([getattr(SDPBackend, name.get(backend, backend.upper()))])


#: torch's error when no SDPA kernel allowed by ``sdpa_kernel`` can take the inputs (CUDA and CPU wordings)
NO_KERNEL = re.compile(r"No available kernel|No viable backend for scaled_dot_product_attention")
HALF_DTYPES = ("float16", "bfloat16")


def unavailable(case: Case, device: torch.device) -> str | None:
    """Why this case cannot run on this machine (None when it can), known before running it; torch's
    own "no kernel" error covers the rest (``failure_status``)."""
    if case.backend == "xformers":
        if case.variant != "full":  # use_xformers routes full attention's kernel; others call SDPA directly
            return f"xformers replaces full attention's kernel only; {case.variant} would run SDPA under that label"
        return xformers_unavailable()
    if case.backend in ("efficient", "cudnn") and device.type != "cuda":
        return f"SDPA's {case.backend} kernel runs on CUDA only"
    if device.type != "cuda":
        return None
    if case.backend in ("flash", "cudnn") and case.dtype not in HALF_DTYPES:
        return f"SDPA's {case.backend} kernel on CUDA takes float16 or bfloat16, not {case.dtype}"
    if case.backend == "flash" and case.variant != "full":
        return ("SDPA's flash kernel on CUDA takes no attention mask, and only full attention calls SDPA "
                f"without one (every token real); {case.variant} does not")
    return None


def failure_status(message: str, out_of_memory: bool) -> str:
    """A failed case's status from its error: ``oom``, ``unavailable`` when torch found no SDPA kernel
    that may run the inputs (the forced backend cannot take this dtype, mask or device), else ``failed``."""
    if out_of_memory:
        return "oom"
    return "unavailable" if NO_KERNEL.search(message) else "failed"


def routes_to_xformers(case: Case) -> bool:
    """Whether the case's attention runs xformers' kernel: ``use_xformers`` routes full attention's."""
    return case.backend == "xformers" and case.variant == "full"


def xformers_attention_flops(case: Case, heads: int, head_dim: int) -> int:
    """FLOPs of the case's one xformers attention call per step, counted as ``FlopCounterMode`` counts
    SDPA's fused kernels (torch.utils.flop_counter's formulas): forward QK^T and PV, 4*B*H*N^2*Dh; a
    backward recomputes the scores and takes four more products, 10*B*H*N^2*Dh."""
    shape = (case.batch, heads, case.n, head_dim)
    flops = sdpa_flop_count(shape, shape, shape)
    if case.mode == "forward_backward":
        flops += sdpa_backward_flop_count(shape, shape, shape, shape)
    return flops


COUNTER_METHOD = "torch.utils.flop_counter.FlopCounterMode over one step"
XFORMERS_FLOPS_NOTE = ("; xformers' attention added analytically (the counter does not see its kernel): "
                       "torch's SDPA formulas, 4*B*H*N^2*Dh forward, 10*B*H*N^2*Dh more backward")


class Stepper:
    """One case's module and inputs; calling it runs one step and waits for the device.

    Every token is real and no padding mask is passed (``None``), as the model does for a batch
    without padding: on CUDA an all-True mask tensor is not dropped (checking it would synchronise),
    and a mask takes full attention off SDPA's mask-free kernels (flash) and off xformers."""

    def __init__(self, case: Case, heads: int, head_dim: int, mlp_dim: int, device: torch.device, seed: int,
                 n: int | None = None):
        self.case, self.device, self.heads, self.head_dim = case, device, heads, head_dim
        self.backward = case.mode == "forward_backward"
        dtype = getattr(torch, case.dtype)
        self.dim = dim = heads * head_dim
        torch.manual_seed(seed)
        module: Attention | Block
        if case.scope == "layer":  # built for the case's length; the priming step runs a shorter one
            module = build_attention(case.variant, dim, heads, case.params, max_len=case.n)
        else:
            cfg = ModelConfig(layers=1, dim=dim, heads=heads, mlp_dim=mlp_dim, dropout=0.0)
            module = Block(cfg, case.variant, case.params, max_len=case.n)
        self.module = module.to(device=device, dtype=dtype).train(self.backward)
        self.params = sum(p.numel() for p in self.module.parameters())
        self.resize(n or case.n, seed)

    def resize(self, n: int, seed: int) -> None:
        """New inputs of length ``n``, at most the case's length that the module is built for (the
        priming step runs a shorter sequence through the same module)."""
        if n > self.case.n:
            raise ValueError(f"inputs of {n} tokens for a module built for at most {self.case.n}")
        gen = torch.Generator().manual_seed(seed + 1)
        shape = (self.case.batch, n, self.dim)
        dtype = next(self.module.parameters()).dtype
        self.x = torch.randn(shape, generator=gen).to(self.device, dtype).requires_grad_(self.backward)
        self.grad_out = torch.randn(shape, generator=gen).to(self.device, dtype) if self.backward else None
        self.mask = None  # every token real (see the class doc)

    def __call__(self) -> None:
        if self.backward:
            self.module.zero_grad(set_to_none=True)
            self.x.grad = None
            y = self.module(self.x, self.mask)
            y.backward(self.grad_out)
        else:
            with torch.inference_mode():
                y = self.module(self.x, self.mask)
        if y.shape != self.x.shape:
            raise RuntimeError(f"output shape {tuple(y.shape)} != input shape {tuple(self.x.shape)}")
        synchronize(self.device)


def analytic_flops(stepper: Stepper) -> int:
    """FLOPs of one step from the variant's own count (forward; a backward pass is counted as
    twice the forward, the usual convention) plus the block's LayerNorm-free MLP matmuls."""
    case = stepper.case
    # the module is the layer itself (scope layer) or a Block around it
    attn = cast(Attention, stepper.module) if case.scope == "layer" else cast(Block, stepper.module).attn
    fwd = attn.flops(case.batch, case.n)
    if case.scope == "block":
        mlp_in = cast(torch.nn.Linear, cast(Block, stepper.module).mlp[0])  # the MLP's first layer
        fwd += 2 * 2 * case.batch * case.n * attn.dim * mlp_in.out_features
    return 3 * fwd if stepper.backward else fwd


def counted_flops(stepper: Stepper) -> tuple[int, str]:
    """FLOPs that ``torch.utils.flop_counter`` sees in one step (it counts matmuls and the SDPA
    kernels it knows; torch's CPU flash kernel and elementwise work count as 0), plus xformers'
    attention, which it cannot see (``xformers_attention_flops``; not added if it did count an
    attention kernel), and the kernels the step ran ("none": the variant calls no fused kernel)."""
    with (counted_on_gather(stepper.module, stepper.device), FlopCounterMode(display=False) as counter,
          SdpaKernels() as kernels):
        stepper()
    flops, names = int(counter.get_total_flops()), kernels.names()
    if routes_to_xformers(stepper.case) and not _counted_attention(counter):
        flops += xformers_attention_flops(stepper.case, stepper.heads, stepper.head_dim)
        names = "xformers" if names == "none" else f"{names}, xformers"
    return flops, names


def flops_counted_method(case: Case, flex_on_gather: bool = False) -> str:
    """How the case's ``flops_counted`` was obtained, for its row (``flex_on_gather``: FlexAttention layers
    were counted on the gather kernel)."""
    flex = FLEX_FLOPS_NOTE if flex_on_gather else ""
    return COUNTER_METHOD + flex + (XFORMERS_FLOPS_NOTE if routes_to_xformers(case) else "")


def compiles_per_shape(stepper: Stepper) -> bool:
    """Whether the case's attention is compiled for each new input shape: FlexAttention where it is compiled."""
    return bool(flex_layers(stepper.module, stepper.device)) and flex_compiled(stepper.device)


def _counted_attention(counter: FlopCounterMode) -> bool:
    """Whether the counter saw FLOPs of a fused attention kernel (an op named like one)."""
    return any("attention" in str(op) and flops for op, flops in counter.get_flop_counts().get("Global", {}).items())


def measure_in_process(spec: dict) -> dict:
    """Peak memory, cold-step time and FLOPs of one case in this (fresh) process; see the module doc."""
    case = Case(**spec["case"])
    device = torch.device(spec["device"])
    torch.set_num_threads(int(spec["threads"]))
    why_not = unavailable(case, device)
    if why_not:
        return {"status": "unavailable", "message": why_not}
    if device.type == "cuda":
        _WORKER["memory_cap_bytes"] = cap_cuda_memory(device, spec.get("memory_cap_bytes"))
    with backend_context(case.backend):
        primed_at = min(case.n, int(spec["prime_length"]))
        stepper = Stepper(case, spec["heads"], spec["head_dim"], spec["mlp_dim"], device, spec["seed"], n=primed_at)
        if compiles_per_shape(stepper):  # compiled for each shape: primed at its own length
            primed_at = case.n
            stepper.resize(primed_at, spec["seed"])
        stepper()  # priming step: torch's one-time set-up (and, for compiled attention, the compilation)
        stepper.resize(case.n, spec["seed"])
        t0 = time.perf_counter()
        with KernelLog() as kernels:
            peak, reserved, method = _peak_of(stepper, device)
        cold_s = time.perf_counter() - t0
        result = {"status": "ok", "message": "", "peak_bytes": peak, "reserved_bytes": reserved,
                  "peak_method": method, "cold_step_s": cold_s, "primed_at": primed_at,
                  "params_count": stepper.params, "flops_analytic": analytic_flops(stepper),
                  **kernels.as_record(), **_WORKER}
        if cold_s > float(spec["time_cap_s"]) > 0:
            result.update(status="timeout", message=f"one step took {cold_s:.1f} s, over the cap of "
                          f"{float(spec['time_cap_s']):g} s (bench.time_cap_s)")
            return result
        result["flops_counted"], result["sdpa_kernels"] = counted_flops(stepper)
        result["flops_counted_method"] = flops_counted_method(case, bool(flex_layers(stepper.module, stepper.device)))
    return result


def _peak_of(stepper: Stepper, device: torch.device) -> tuple[int, int | None, str]:
    """(peak bytes above the start, peak reserved bytes or None, method) of one step."""
    with PeakMemory(device) as mem:
        stepper()
    assert mem.peak_bytes is not None  # PeakMemory sets it on leaving the with block
    return mem.peak_bytes, mem.reserved_bytes, f"{mem.method} (first step after a priming step, fresh process)"


#: facts of this worker process that its result carries even when the case fails (the CUDA cap it used)
_WORKER: dict = {}


def error_result(message: str, out_of_memory: bool) -> dict:
    """The worker's result when measuring raised: its status (``failure_status``), the error, and the
    worker's facts so far."""
    return {"status": failure_status(message, out_of_memory), "message": message, **_WORKER}


def _worker(argv: list[str]) -> int:
    return worker_main(argv, measure_in_process, error_result)


if __name__ == "__main__":
    from attnbench.harness.bench.case import _worker as _run  # the imported module, not this __main__ copy

    sys.exit(_run(sys.argv[1:]))
