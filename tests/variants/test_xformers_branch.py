"""xformers' CUDA-only branch on a CPU (review finding 2): when its compiled extension does not load (a
build for another CUDA line than torch's, as xformers 0.0.35's CUDA 12.8 ``_C.so`` beside PyPI's CUDA 13
torch 2.13), xformers still imports and runs, through operators that wrap torch's own memory-efficient
kernel (``cutlassF-pt``). A sweep row would then time SDPA under xformers' name: such a case is
``unavailable``, with the extension's own reason. The branch is reached here by showing the code a CUDA
device and an xformers module whose extension failed to load, as xformers itself records it
(``xformers._has_cpp_library``, ``xformers._cpp_lib._cpp_library_load_exception``)."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from attnbench.harness.bench.case import unavailable
from attnbench.harness.bench.settings import Case
from attnbench.variants.lib import sdpa


def fake_xformers(monkeypatch, loaded: bool, error: str = ""):
    """An installed xformers as its package records the extension's load, on a machine with a CUDA device."""
    package = types.ModuleType("xformers")
    package.__version__ = "0.0.35"
    package._has_cpp_library = loaded
    package._cpp_lib = types.SimpleNamespace(_cpp_library_load_exception=None if loaded else OSError(error))
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", types.ModuleType("xformers.ops"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_xformers_without_its_extension_is_unavailable_with_the_reason(monkeypatch):
    fake_xformers(monkeypatch, loaded=False, error="libcudart.so.12: cannot open shared object file")
    why = sdpa.xformers_unavailable()
    assert why and "compiled extension did not load" in why and "libcudart.so.12" in why
    assert "cutlassF-pt" in why and "0.0.35" in why
    with pytest.raises(RuntimeError, match="did not load"):
        with sdpa.use_xformers():
            pass
    case = Case("full", {}, "xformers", "layer", "forward", "bfloat16", 1, 1024)
    assert unavailable(case, torch.device("cuda")) == why


def test_xformers_with_its_extension_is_available(monkeypatch):
    fake_xformers(monkeypatch, loaded=True)
    assert sdpa.xformers_unavailable() is None


def test_without_a_gpu_xformers_is_never_imported(monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)  # an import would raise
    assert "no CUDA device" in sdpa.xformers_unavailable()


def test_the_operator_name_of_a_dispatcher_that_cannot_be_read_is_unknown_not_an_error():
    q = torch.randn(1, 8, 2, 16)
    assert sdpa.xformers_operator(q, q, q, 0.0, False).startswith("unknown (")
