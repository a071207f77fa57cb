"""Which attention kernel a forward ran, and why: noted by the variants where they choose one, collected
by the harness for every record (a training run's, a sweep row's).

A variant that picks between kernels (FlexAttention or the SDPA gather, the CPU flash kernel, one dense
masked call, explicit score tensors, xformers) calls ``note(kernel, why)`` where it picks. Nothing is kept
unless a ``KernelLog`` is active (``with KernelLog() as log: model(x)``), so a forward pays one context
variable read; inside ``torch.compile`` nothing is noted at all (``torch.compiler.is_compiling()`` is
constant there, so the call leaves no trace in the graph): a compiled model's kernels are read from
an uncompiled forward of the same layers (the harness does that).

Kernel names: ``flex`` (FlexAttention, compiled or eager), ``gather`` (the chosen key blocks gathered
into one fused SDPA call), ``dense`` (one SDPA call under the layout's dense token mask), ``cpu-flash``
(torch's CPU flash kernel called directly on blocks or chunks), ``sdpa`` (one SDPA call over the whole
sequence), ``explicit`` (score tensors in plain tensor operations), ``xformers`` (with its operator).
"""
from __future__ import annotations

import contextvars

import torch

_ACTIVE: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("attnbench_kernel_log", default=None)


def active() -> bool:
    """Whether a log is collecting notes: a caller whose reason takes work to put together (a formatted
    string, a look-up) asks first, so that a forward outside a log does none of it."""
    return not torch.compiler.is_compiling() and _ACTIVE.get() is not None


def note(kernel: str, why: str) -> None:
    """Record that the current forward runs ``kernel`` because of ``why`` (no-op unless a log is active)."""
    if active():
        log = _ACTIVE.get()
        assert log is not None  # active() says a log is set
        log.setdefault(kernel, why)


class KernelLog:
    """``with KernelLog() as log: work()``, then ``log.kernels``: each kernel noted, first reason kept, in the
    order first seen; ``log.name()`` / ``log.why()``: them joined for a record ("" when none was noted)."""

    def __init__(self) -> None:
        self.kernels: dict[str, str] = {}
        self._token: contextvars.Token[dict[str, str] | None] | None = None

    def __enter__(self) -> KernelLog:
        self._token = _ACTIVE.set(self.kernels)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None, "KernelLog.__exit__ without __enter__"
        _ACTIVE.reset(self._token)

    def name(self) -> str:
        return ", ".join(self.kernels)

    def why(self) -> str:
        return "; ".join(f"{kernel}: {why}" for kernel, why in self.kernels.items())

    def as_record(self, unnoted: str = "explicit") -> dict[str, str]:
        """``{"attention_kernel", "attention_kernel_why"}`` for a record. A variant that notes nothing computes
        its attention in its own tensor operations (any SDPA call it makes is in ``sdpa_kernels``)."""
        if not self.kernels:
            return {"attention_kernel": unnoted,
                    "attention_kernel_why": f"{unnoted}: the variant's own tensor operations (it notes no kernel)"}
        return {"attention_kernel": self.name(), "attention_kernel_why": self.why()}
