"""What compiled code needs from the machine at run time: a C or C++ compiler and Python's headers.

torch.compile's code generators do not stop at Python:
- on CUDA, Triton builds a small C extension (its CUDA launcher) the first time a kernel launches:
  with ``$CC``, else ``gcc``, else ``clang`` (``triton/runtime/build.py``), against the Python include
  directory, so it needs a C compiler and ``Python.h``. Every compiled FlexAttention call and every
  ``train.compile`` run on a GPU goes through it;
- on the CPU, inductor writes C++ and compiles it with ``$CXX``, else ``g++`` (``clang++`` on macOS)
  (``torch._inductor.config.cpp.cxx``), again including ``Python.h``.
A CUDA runtime container or a distro Python without its ``-dev`` package has neither, and the
failure only comes at the first compiled call. ``missing(device_type)`` says beforehand what is
missing (None when nothing is), the way those tools look for it; it imports neither torch nor
Triton and runs no compiler, so it costs a few ``which`` look-ups, cached per environment.
"""
from __future__ import annotations

import functools
import os
import shlex
import shutil
import sys
import sysconfig

#: the device types ``missing`` knows the needs of
DEVICE_TYPES = ("cuda", "cpu")


@functools.cache
def python_include_dir() -> str:
    """The directory Triton and inductor take ``Python.h`` from (sysconfig's include path of the default
    scheme; Debian's ``posix_local`` scheme read as ``posix_prefix``, as Triton reads it). Cached: it is
    the running interpreter's."""
    scheme = sysconfig.get_default_scheme()
    if scheme == "posix_local":
        scheme = "posix_prefix"
    return sysconfig.get_paths(scheme=scheme)["include"]


def _program(command: str | None) -> str | None:
    """The executable a compiler setting names (its first word: ``CC="ccache gcc"`` runs ccache), found
    on PATH or as a path; None when it is not there."""
    words = shlex.split(command) if command else []
    return shutil.which(words[0]) if words else None


def c_compiler() -> tuple[str | None, str]:
    """(path or None, what was looked for): ``$CC`` when set, else ``gcc``, else ``clang``, as Triton looks."""
    cc = os.environ.get("CC")
    if cc is not None:
        return _program(cc), f"$CC ({cc!r})"
    return shutil.which("gcc") or shutil.which("clang"), "gcc or clang on PATH ($CC unset)"


def cxx_compiler() -> tuple[str | None, str]:
    """(path or None, what was looked for): ``$CXX`` when set, else ``g++`` (``clang++`` on macOS), as
    inductor's CPU backend looks."""
    cxx = os.environ.get("CXX")
    if cxx is not None:
        return _program(cxx), f"$CXX ({cxx!r})"
    default = "clang++" if sys.platform == "darwin" else "g++"
    return shutil.which(default), f"{default} on PATH ($CXX unset)"


def missing(device_type: str) -> str | None:
    """What compiled code on ``device_type`` ("cuda": Triton's launcher; "cpu": inductor's C++) needs and
    this machine lacks, as one sentence naming each missing piece and how to get it; None when nothing
    is missing. Cached per (device type, CC, CXX, PATH, include directory): a changed environment is
    looked at afresh."""
    if device_type not in DEVICE_TYPES:
        raise ValueError(f"device type must be one of {', '.join(DEVICE_TYPES)}, got {device_type!r}")
    return _missing(device_type, os.environ.get("CC"), os.environ.get("CXX"), os.environ.get("PATH"),
                    python_include_dir())


@functools.cache
def _missing(device_type: str, cc: str | None, cxx: str | None, path: str | None, include: str) -> str | None:
    del cc, cxx, path  # the cache key: the look-ups below read them from the environment
    problems = []
    if device_type == "cuda":
        found, looked_for = c_compiler()
        if found is None:
            problems.append(f"no C compiler ({looked_for} not found; Triton builds its CUDA launcher with one at "
                            "first use: install gcc, or set CC)")
    else:
        found, looked_for = cxx_compiler()
        if found is None:
            problems.append(f"no C++ compiler ({looked_for} not found; inductor compiles its CPU code with one: "
                            "install g++, or set CXX)")
    if not os.path.isfile(os.path.join(include, "Python.h")):
        problems.append(f"no Python.h in {include} (Python's development headers, which compiled code includes: "
                        f"e.g. the python{sys.version_info.major}.{sys.version_info.minor}-dev package)")
    return "; ".join(problems) or None
