"""The GPU software stack checked without a GPU (scripts/gpu_stack.py): the wheels of the `gpu` extra must agree on
their CUDA line, or xformers' compiled extension cannot load beside torch and xformers silently runs torch's own
kernel (cutlassF-pt) in the sweep's `full [xformers]` rows.

The reading of CUDA lines is tested on requirement lists and on ELF files of this machine (no network); the extra
itself, and the pair it had before (PyPI's torch 2.13.0, a CUDA 13.0 build, with xformers 0.0.35, whose extension
links libcudart.so.12), are read from PyPI: torch's metadata only (about 40 kB, never the wheel), xformers' 3 MB
wheel once into ~/.cache/attnbench/gpu-stack. Without an answer from PyPI those tests skip, saying so.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, load_script

gs = load_script("gpu_stack")

# Requires-Dist of real torch wheels for Linux x86-64 (PyPI's 2.13.0 and 2.10.0), abridged
TORCH_2_13 = ["filelock", "sympy>=1.13.3",
              'cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx]==13.0.3; '
              'platform_system == "Linux"',
              'cuda-bindings<14,>=13.0.3; platform_system == "Linux" and python_version < "3.15"',
              'nvidia-cudnn-cu13==9.20.0.48; platform_system == "Linux"',
              'nvidia-nccl-cu13==2.29.7; platform_system == "Linux"',
              'triton==3.7.1; platform_system == "Linux" and python_version < "3.15"',
              'optree>=0.13.0; extra == "optree"']
TORCH_2_10 = ["filelock",
              'cuda-bindings==12.9.4; platform_system == "Linux" and platform_machine == "x86_64"',
              'nvidia-cuda-nvrtc-cu12==12.8.93; platform_system == "Linux" and platform_machine == "x86_64"',
              'nvidia-cuda-runtime-cu12==12.8.90; platform_system == "Linux" and platform_machine == "x86_64"',
              'nvidia-cudnn-cu12==9.10.2.21; platform_system == "Linux" and platform_machine == "x86_64"',
              'triton==3.6.0; platform_system == "Linux" and platform_machine == "x86_64"']


def test_torch_cuda_line_from_its_requirements_and_local_version():
    line = gs.torch_cuda_line("2.13.0", TORCH_2_13)
    assert (line.major, line.minor) == (13, 0) and "cuda-toolkit" in line.evidence
    line = gs.torch_cuda_line("2.10.0", TORCH_2_10)
    assert (line.major, line.minor) == (12, 8) and "nvidia-cuda-runtime-cu12" in line.evidence
    # only per-library wheels: the major; PyTorch's own indexes: the local version
    assert gs.torch_cuda_line("2.12.0", ['nvidia-cudnn-cu13==9.20.0.48; platform_system == "Linux"']).major == 13
    line = gs.torch_cuda_line("2.13.0+cu126", ["filelock"])
    assert (line.major, line.minor) == (12, 6)
    assert gs.torch_cuda_line("2.13.0+cpu", ["filelock"]) is None
    with pytest.raises(ValueError, match="cannot tell"):
        gs.torch_cuda_line("2.13.0", ["filelock"])


def test_cuda_lines_agree_only_on_one_major_and_an_old_enough_minor():
    cu = gs.CudaLine
    ok, why = gs.agree(cu(13, 0, "torch"), cu(12, 8, "xformers"))
    assert not ok and "libcudart.so.12" in why and "cutlassF-pt" in why
    assert gs.agree(cu(12, 8, "torch"), cu(12, 8, "xformers"))[0]
    assert gs.agree(cu(12, 9, "torch"), cu(12, 8, "xformers"))[0]
    assert not gs.agree(cu(12, 6, "torch"), cu(12, 8, "xformers"))[0]
    assert not gs.agree(None, cu(12, 8, "xformers"))[0]
    assert not gs.agree(cu(12, 8, "torch"), None)[0]


def an_elf_extension() -> Path:
    """A compiled extension module of this Python's standard library (_ssl links libssl and libc)."""
    for name in ("_ssl", "_ctypes", "_json", "math"):
        path = getattr(importlib.import_module(name), "__file__", None) or ""
        if path.endswith(".so"):
            return Path(path)
    pytest.skip("this Python's standard library has no compiled extension module to read")


def test_elf_needed_lists_what_readelf_lists():
    so = an_elf_extension()
    needed = gs.elf_needed(so.read_bytes())
    assert needed and all(name.startswith("lib") or name.startswith("ld-") for name in needed)
    if shutil.which("readelf"):
        out = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
        assert needed == [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]
    with pytest.raises(ValueError):
        gs.elf_needed(b"#!/bin/sh\n")


def test_xformers_line_from_cpp_lib_json_and_the_elf_it_links(tmp_path):
    so = an_elf_extension()
    needed = gs.elf_needed(so.read_bytes())
    wheel = tmp_path / "xformers-0.0.0-py39-none-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("xformers/cpp_lib.json", json.dumps({"version": {"cuda": 1208, "hip": None,
                                                                     "torch": "2.10.0+cu128"}}))
        zf.write(so, "xformers/_C.so")  # links no libcudart: the major comes from cpp_lib.json
    line = gs.xformers_cuda_line(wheel)
    assert (line.major, line.minor) == (12, 8) and "2.10.0+cu128" in line.evidence
    assert not any(n.startswith("libcudart") for n in needed)
    bare = tmp_path / "xformers-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(bare, "w") as zf:
        zf.writestr("xformers/__init__.py", "")
    assert gs.xformers_cuda_line(bare) is None


def test_gpu_extra_specifiers_combine_dependencies_and_the_extra(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["torch>=2.9,<2.15", "numpy"]\n'
                         '[project.optional-dependencies]\ngpu = ["torch==2.10.0", "xformers==0.0.35"]\n')
    torch_spec, xformers_spec = gs.gpu_extra_specs(pyproject)
    assert set(torch_spec.split(",")) == {">=2.9", "<2.15", "==2.10.0"} and xformers_spec == "==0.0.35"


def checked(torch_spec: str, xformers_spec: str, python: str):
    try:
        return gs.check(torch_spec, xformers_spec, python)
    except gs.IndexUnavailable as exc:
        pytest.skip(f"no answer from the package index: {exc}")


@pytest.mark.parametrize("python", gs.PYTHONS)
def test_the_gpu_extra_agrees_on_its_cuda_line(python):
    torch_spec, xformers_spec = gs.gpu_extra_specs()
    verdict = checked(torch_spec, xformers_spec, python)
    assert verdict.agree, str(verdict)


def test_the_old_gpu_extra_is_caught():
    """PyPI's torch 2.13.0 (the old pin) with xformers 0.0.35: CUDA 13.0 against an extension that needs
    libcudart.so.12. The check fails on it, as it would have on the extra before its fix."""
    verdict = checked("==2.13.0", "==0.0.35", "3.11")
    assert not verdict.agree, str(verdict)
    assert (verdict.torch_line.major, verdict.xformers_line.major) == (13, 12)
    assert "NEEDED libcudart.so.12" in verdict.xformers_line.evidence
    assert "torch 2.10.0+cu128" in verdict.xformers_line.evidence


@pytest.mark.slow
def test_the_command_line_exit_status():
    """`python scripts/gpu_stack.py` says 1 for a pair that disagrees (0 when they agree, 2 unchecked)."""
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_stack.py"), "--python", "3.12",
                           "--torch", "==2.13.0"], capture_output=True, text=True, timeout=300)
    if done.returncode == 2:
        pytest.skip(f"no answer from the package index: {done.stdout}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "DISAGREE" in done.stdout and "CUDA 13.0" in done.stdout
