"""One case of the efficiency sweep: build it, step it, count its FLOPs, and measure its peak
memory in a fresh process.

``Stepper(case, settings)`` builds the layer or block with its inputs and runs one step per call
(forward: eval mode under ``torch.inference_mode``; forward_backward: training mode, output
gradient applied), synchronising the device at the end, so a timer around the call is honest.

``measure_in_process(spec)`` is what ``python -m attnbench.harness.bench.case`` runs for one case in a
fresh process (started by ``attnbench.harness.measure.fresh_process.run_fresh``):
1. one untimed step at ``prime_length`` tokens: torch's one-time set-up (lazy initialisation,
   code pages of the kernels) is paid before measuring;
2. the measured step: peak memory above the memory just before it (CPU: the process's resident
   set, via a reset ``VmHWM``; CUDA: ``max_memory_allocated`` after a reset, reserved too) and its
   time; a step slower than ``time_cap_s`` makes the case a ``timeout``;
3. one more step under ``torch.utils.flop_counter.FlopCounterMode``: the FLOPs it sees.
"""
from __future__ import annotations

import contextlib
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from attnbench.harness.bench.settings import Case
from attnbench.harness.measure.fresh_process import worker_main
from attnbench.harness.measure.memory import PeakMemory
from attnbench.harness.measure.sdpa_kernels import SdpaKernels
from attnbench.harness.measure.timing import synchronize
from attnbench.harness.run.model import Block, ModelConfig
from attnbench.variants import build_attention
from attnbench.variants.sdpa import use_xformers, xformers_unavailable


def backend_context(backend: str):
    """The context that makes SDPA (or full attention) use ``backend`` ("default": torch's choice)."""
    if backend == "default":
        return contextlib.nullcontext()
    if backend == "xformers":
        return use_xformers()
    name = {"efficient": "EFFICIENT_ATTENTION", "flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION"}
    return sdpa_kernel([getattr(SDPBackend, name.get(backend, backend.upper()))])


def unavailable(case: Case, device: torch.device) -> str | None:
    """Why this case cannot run on this machine (None when it can)."""
    if case.backend == "xformers":
        return xformers_unavailable()
    if case.backend in ("efficient", "cudnn") and device.type != "cuda":
        return f"SDPA's {case.backend} kernel runs on CUDA only"
    return None


class Stepper:
    """One case's module and inputs; calling it runs one step and waits for the device."""

    def __init__(self, case: Case, heads: int, head_dim: int, mlp_dim: int, device: torch.device, seed: int,
                 n: int | None = None):
        self.case, self.device = case, device
        self.backward = case.mode == "forward_backward"
        dtype = getattr(torch, case.dtype)
        self.dim = dim = heads * head_dim
        torch.manual_seed(seed)
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
        self.mask = torch.ones(self.case.batch, n, dtype=torch.bool, device=self.device)

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
    attn = stepper.module if case.scope == "layer" else stepper.module.attn
    fwd = attn.flops(case.batch, case.n)
    if case.scope == "block":
        fwd += 2 * 2 * case.batch * case.n * attn.dim * stepper.module.mlp[0].out_features
    return 3 * fwd if stepper.backward else fwd


def counted_flops(stepper: Stepper) -> tuple[int, str]:
    """FLOPs that ``torch.utils.flop_counter`` sees in one step (it counts matmuls and the SDPA
    kernels it knows; torch's CPU flash kernel and elementwise work count as 0), and the SDPA
    kernels the step ran ("none": the variant does not call SDPA)."""
    with FlopCounterMode(display=False) as counter, SdpaKernels() as kernels:
        stepper()
    return int(counter.get_total_flops()), kernels.names()


def measure_in_process(spec: dict) -> dict:
    """Peak memory, cold-step time and FLOPs of one case in this (fresh) process; see the module doc."""
    case = Case(**spec["case"])
    device = torch.device(spec["device"])
    torch.set_num_threads(int(spec["threads"]))
    why_not = unavailable(case, device)
    if why_not:
        return {"status": "unavailable", "message": why_not}
    if device.type == "cuda" and spec.get("memory_cap_bytes"):
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec["memory_cap_bytes"] / total), device)
    with backend_context(case.backend):
        stepper = Stepper(case, spec["heads"], spec["head_dim"], spec["mlp_dim"], device, spec["seed"],
                          n=min(case.n, int(spec["prime_length"])))
        stepper()  # priming step: torch's one-time set-up
        stepper.resize(case.n, spec["seed"])
        t0 = time.perf_counter()
        peak, reserved, method = _peak_of(stepper, device)
        cold_s = time.perf_counter() - t0
        result = {"status": "ok", "message": "", "peak_bytes": peak, "reserved_bytes": reserved,
                  "peak_method": method, "cold_step_s": cold_s, "params_count": stepper.params,
                  "flops_analytic": analytic_flops(stepper)}
        if cold_s > float(spec["time_cap_s"]) > 0:
            result.update(status="timeout", message=f"one step took {cold_s:.1f} s, over the cap of "
                          f"{float(spec['time_cap_s']):g} s (bench.time_cap_s)")
            return result
        result["flops_counted"], result["sdpa_kernels"] = counted_flops(stepper)
    return result


def _peak_of(stepper: Stepper, device: torch.device) -> tuple[int, int | None, str]:
    """(peak bytes above the start, peak reserved bytes or None, method) of one step."""
    with PeakMemory(device) as mem:
        stepper()
    return mem.peak_bytes, mem.reserved_bytes, f"{mem.method} (first step after a short priming step, fresh process)"


def _worker(argv: list[str]) -> int:
    return worker_main(argv, measure_in_process,
                       lambda message, oom: {"status": "oom" if oom else "failed", "message": message})


if __name__ == "__main__":
    from attnbench.harness.bench.case import _worker as _run  # the imported module, not this __main__ copy

    sys.exit(_run(sys.argv[1:]))
