"""What compiled code needs from the machine (``harness.core.toolchain``), and ``compile_unavailable`` saying so.

A machine without a C compiler or Python's headers cannot be borrowed in CI, so it is faked: PATH
pointed at a folder holding only the programs a test wants (empty files marked executable), ``CC`` /
``CXX`` set or unset, and the Python include directory pointed at a folder with or without a ``Python.h``.
The kernel choice that depends on it is tested in tests/variants/test_flex_blocks.py.
"""
from __future__ import annotations

import os

import pytest
import torch

from attnbench.harness.core import toolchain
from attnbench.harness.run import precision


def fake_toolchain(monkeypatch, tmp_path, *programs: str, headers: bool = True, cc: str | None = None,
                   cxx: str | None = None):
    """A machine whose PATH holds only ``programs`` (e.g. "gcc", "g++"), with ``CC``/``CXX`` as given (unset
    when None) and ``Python.h`` in its include directory when ``headers``. Each call is a machine of its
    own, in new folders: ``toolchain.missing`` caches its answer per PATH and include directory."""
    machine = tmp_path / f"machine{len(list(tmp_path.glob('machine*')))}"
    bin_dir, include = machine / "bin", machine / "include"
    bin_dir.mkdir(parents=True)
    include.mkdir()
    for name in programs:
        program = bin_dir / name
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    if headers:
        (include / "Python.h").write_text("/* fake */\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    for var, value in (("CC", cc), ("CXX", cxx)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    monkeypatch.setattr(toolchain, "python_include_dir", lambda: str(include))
    return bin_dir


def test_nothing_missing_with_compilers_and_headers(monkeypatch, tmp_path):
    fake_toolchain(monkeypatch, tmp_path, "gcc", "g++")
    assert toolchain.missing("cuda") is None
    assert toolchain.missing("cpu") is None


def test_c_compiler_is_looked_for_as_triton_does(monkeypatch, tmp_path):
    """$CC when set (its first word: a launcher such as ccache), else gcc, else clang."""
    bin_dir = fake_toolchain(monkeypatch, tmp_path, "clang")
    assert toolchain.c_compiler()[0] == str(bin_dir / "clang")
    assert toolchain.missing("cuda") is None
    bin_dir = fake_toolchain(monkeypatch, tmp_path, "gcc", "clang")
    assert toolchain.c_compiler()[0] == str(bin_dir / "gcc")
    fake_toolchain(monkeypatch, tmp_path, "gcc", cc="nocc")  # CC wins, even over a gcc on PATH
    assert toolchain.c_compiler() == (None, "$CC ('nocc')")
    assert "no C compiler ($CC ('nocc') not found" in toolchain.missing("cuda")
    bin_dir = fake_toolchain(monkeypatch, tmp_path, "ccache", cc="ccache gcc")
    assert toolchain.c_compiler()[0] == str(bin_dir / "ccache")


def test_missing_pieces_are_named_with_how_to_get_them(monkeypatch, tmp_path):
    fake_toolchain(monkeypatch, tmp_path, headers=False)
    why = toolchain.missing("cuda")
    assert "no C compiler (gcc or clang on PATH ($CC unset) not found; Triton builds its CUDA launcher" in why
    assert "install gcc, or set CC" in why
    assert f"no Python.h in {toolchain.python_include_dir()}" in why and "-dev package" in why
    why = toolchain.missing("cpu")
    assert "no C++ compiler (g++ on PATH ($CXX unset) not found; inductor compiles its CPU code" in why
    assert "Python.h" in why
    fake_toolchain(monkeypatch, tmp_path, "gcc", "g++", headers=False)
    assert toolchain.missing("cuda").startswith("no Python.h in ")  # the compiler is there now


def test_cxx_compiler_follows_cxx(monkeypatch, tmp_path):
    bin_dir = fake_toolchain(monkeypatch, tmp_path, "clang++", cxx="clang++")
    assert toolchain.cxx_compiler()[0] == str(bin_dir / "clang++")
    assert toolchain.missing("cpu") is None
    fake_toolchain(monkeypatch, tmp_path, "gcc")  # a C compiler is not a C++ one
    assert "no C++ compiler" in toolchain.missing("cpu")


def test_answer_follows_the_environment_despite_the_cache(monkeypatch, tmp_path):
    fake_toolchain(monkeypatch, tmp_path)
    assert "no C compiler" in toolchain.missing("cuda")
    fake_toolchain(monkeypatch, tmp_path, "gcc")  # a compiler appears: a new PATH, looked at afresh
    assert toolchain.missing("cuda") is None
    with pytest.raises(ValueError, match="cuda, cpu"):
        toolchain.missing("mps")


def test_the_real_include_dir_is_sysconfigs():
    assert os.path.isabs(toolchain.python_include_dir())


def test_compile_unavailable_says_what_is_missing_on_cpu(monkeypatch, tmp_path):
    fake_toolchain(monkeypatch, tmp_path, "gcc", "g++")
    assert precision.compile_unavailable(torch.device("cpu")) is None
    fake_toolchain(monkeypatch, tmp_path, "gcc", headers=False)
    why = precision.compile_unavailable(torch.device("cpu"))
    assert why.startswith("torch.compile's CPU backend (inductor's C++) needs what this machine lacks: ")
    assert "no C++ compiler" in why and "no Python.h" in why


def test_compile_unavailable_on_cuda_asks_for_tritons_compiler_not_only_triton(monkeypatch, tmp_path):
    """The CUDA branch, on a CPU: Triton "installed" (its spec faked), no C compiler."""
    real_find_spec = precision.importlib.util.find_spec
    monkeypatch.setattr(precision.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "triton" else real_find_spec(name, *a))
    fake_toolchain(monkeypatch, tmp_path, "g++")
    why = precision.compile_unavailable(torch.device("cuda"))
    assert why.startswith("torch.compile's CUDA backend (Triton) needs what this machine lacks: no C compiler")
    fake_toolchain(monkeypatch, tmp_path, "gcc")
    assert precision.compile_unavailable(torch.device("cuda")) is None
