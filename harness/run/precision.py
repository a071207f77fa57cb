"""How a run computes: its precision (autocast and, for float16, a gradient scaler), float32
matmuls (TF32 on Ampere and later), and compilation (the optimiser's implementation:
``harness.run.optimiser``).

Each choice is resolved once per run from ``train:`` and the device, and the resolved value
goes into the record (``training``), so a number always says how it was computed.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util

import torch

from attnbench.harness.core import toolchain
from attnbench.harness.core.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(UserError, ValueError):
    """The asked-for precision cannot run on this device."""


def resolve_precision(name: str, device: torch.device, bf16_supported: bool | None = None) -> str:
    """``auto`` -> bf16 on a CUDA device that supports it, fp32 elsewhere (CPU, and GPUs
    before Ampere, where fp16 needs a loss scale the user should choose knowingly)."""
    if name not in PRECISIONS:
        raise PrecisionError(f"unknown precision {name!r}; allowed: {', '.join(PRECISIONS)}")
    if device.type == "cuda" and bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported(including_emulation=False)
    if name == "auto":
        return "bf16" if device.type == "cuda" and bf16_supported else "fp32"
    if name == "bf16" and device.type == "cuda" and not bf16_supported:
        raise PrecisionError(f"precision bf16: {torch.cuda.get_device_name(device)} has no native bfloat16 "
                             "(compute capability < 8.0); use fp16 or fp32")
    return name


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The context a forward pass runs in: autocast to bf16/fp16, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler for fp16 (its gradients underflow without one); disabled (a pass-through) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def configure_float32_matmul(tf32: bool, device: torch.device) -> str:
    """TF32 for float32 matmuls and convolutions on CUDA devices of compute capability >= 8.0 when
    ``tf32``; the process's resulting ``torch.get_float32_matmul_precision()`` (recorded). On the CPU
    nothing is changed: "high" would let some CPU backends compute float32 matmuls in bfloat16."""
    if device.type == "cuda":
        on = bool(tf32) and torch.cuda.get_device_capability(device) >= (8, 0)
        torch.set_float32_matmul_precision("high" if on else "highest")
        torch.backends.cudnn.allow_tf32 = on
    return torch.get_float32_matmul_precision()


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here (None when it can): its inductor backend
    needs Triton for CUDA code, and at the first compiled call a compiler and Python's headers
    (``harness.core.toolchain``): a C compiler for the launcher Triton builds on CUDA, a C++ compiler
    for inductor's CPU code. A CUDA runtime container or a Python without its ``-dev`` package has
    Triton but not those, and would fail only at the first step."""
    try:
        importlib.import_module("torch._inductor")
    except ImportError as exc:
        return f"torch's inductor backend cannot be imported ({exc})"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "Triton is not installed (torch.compile's CUDA backend needs it)"
    if device.type in toolchain.DEVICE_TYPES:
        missing = toolchain.missing(device.type)
        if missing:
            backend = "CUDA backend (Triton)" if device.type == "cuda" else "CPU backend (inductor's C++)"
            return f"torch.compile's {backend} needs what this machine lacks: {missing}"
    return None
