"""The wheelhouse: attnbench's dependencies as wheels in one folder, for an install with no network over a Python
that already has torch (a GPU node, a cloud image; docs/gpu.md).

    python scripts/wheelhouse.py build   [--out wheelhouse] [--python-version 3.12] [--have FILE] [--extras test]
    python scripts/wheelhouse.py install [--wheelhouse wheelhouse] [--venv .venv] [--base-python python3]

``build`` (`make wheelhouse`, on a machine with network) lets pip resolve attnbench's requirements (and the
extras') for the node: binary wheels for its Python on Linux x86-64, manylinux_2_28 and older (``pip install
--dry-run --report`` with ``--python-version`` and ``--platform``; a dependency published only as an sdist is
built here into a wheel, refused unless pure Python). It then downloads, ``--no-deps``, what attnbench's
requirements reach without passing through a package the node already has. ``--have`` names those packages:
the node's ``pip freeze``, whose versions pip resolves against (one that some requirement excludes is carried
after all), or the default list ``scripts/gpu_node_packages.txt`` of what a CUDA/ML image carries, bare names,
whose small pure-Python wheels are carried anyway as fallbacks that pip takes only where the node's own version
does not satisfy. torch, triton and the NVIDIA/CUDA wheels are never carried: they come with the node. The build
backend (setuptools) is always in, for the editable install. It writes ``wheelhouse.json`` (the target, the
wheels and who needs them, what the node must provide) and refuses a wheelhouse over ``--max-mib`` (64 MiB: what
travels to a node).

``install`` (`make gpu-check` / `make install-offline`, on the node, no network) needs only the standard
library: it creates the venv with the interpreter that has torch (``--base-python``) and a ``.pth`` file that
adds that interpreter's site folders behind the venv's own (``venv --system-site-packages`` would not do: when
the interpreter is itself a venv, as ``/opt/torch/.venv/bin/python3`` is, the new venv sees the base Python's
packages, not that venv's), then ``pip install --no-index --find-links <wheelhouse> -e '.[test]'`` with every
pip configuration file and ``PIP_*`` variable left out. It prints how long that took, checks that the torch the
venv imports is the node's, and writes ``<venv>/.install.json``.

This file parses the command line; ``build`` is in scripts/wheelhouse_build.py, ``install`` in
scripts/wheelhouse_install.py (sibling modules, standard library only, imported as Python imports a script's
neighbours: run it as ``python scripts/wheelhouse.py``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wheelhouse_build import REPO, build
from wheelhouse_install import clean_pip_env, install

DEFAULT_HAVE = REPO / "scripts" / "gpu_node_packages.txt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="download the wheelhouse (network)")
    b.add_argument("--out", type=Path, default=Path("wheelhouse"))
    b.add_argument("--python-version", default="3.12", help="the node's Python, e.g. 3.12 (default) or 3.12.3")
    b.add_argument("--have", type=Path, default=DEFAULT_HAVE,
                   help="what the node has: its `pip freeze`, or a list of names (default: %(default)s)")
    b.add_argument("--extras", default="test", help="extras of attnbench to include, comma-separated")
    b.add_argument("--max-mib", type=float, default=64.0)
    b.add_argument("--no-pip-config", action="store_true",
                   help="ignore pip's configuration files and PIP_* variables (pip's default index, PyPI)")
    i = sub.add_parser("install", help="install attnbench offline from the wheelhouse over a Python with torch")
    i.add_argument("--wheelhouse", type=Path, default=Path("wheelhouse"))
    i.add_argument("--venv", type=Path, default=Path(".venv"))
    i.add_argument("--base-python", default="python3", help="the interpreter that has the node's torch")
    i.add_argument("--extras", default="test")
    args = parser.parse_args(argv)
    extras = [e for e in args.extras.split(",") if e]
    if args.command == "build":
        build(args.out, args.python_version, args.have, extras, args.max_mib,
              clean_pip_env() if args.no_pip_config else None)
    else:
        install(args.wheelhouse, args.venv, args.base_python, extras)
    return 0


if __name__ == "__main__":
    sys.exit(main())
