"""Write .typing/attnbench/: one link per part of the ``attnbench`` namespace to its folder.

``attnbench.harness`` is harness/, ``attnbench.variants`` variants/ and so on
(pyproject.toml, ``[tool.setuptools.package-dir]``). An editable install makes those names
importable through setuptools' import hook, which type checkers and editors do not run; this
folder gives them a plain path to follow (pyproject's ``[tool.mypy] mypy_path`` and
``[tool.pyright] extraPaths``). ``make install`` runs it; the folder is git-ignored.

    python scripts/link_packages.py [--root DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

NAMESPACE = "attnbench"


def package_dirs(pyproject: Path) -> dict[str, str]:
    """The namespace's parts and their folders: ``{"harness": "harness", ...}``."""
    mapping = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-dir"]
    parts = {}
    for name, folder in mapping.items():
        top, _, part = name.partition(".")
        if top != NAMESPACE or not part or "." in part:
            raise SystemExit(f"{pyproject}: package-dir {name!r} is not {NAMESPACE}.<part>")
        parts[part] = folder
    return parts


def write_links(root: Path, out: Path) -> list[Path]:
    """Links ``out/attnbench/<part>`` -> ``root/<folder>`` (relative), replacing stale ones and
    removing links to parts that are gone."""
    target = out / NAMESPACE
    target.mkdir(parents=True, exist_ok=True)
    parts = package_dirs(root / "pyproject.toml")
    for stale in target.iterdir():
        if stale.is_symlink() and stale.name not in parts:
            stale.unlink()
    links = []
    for part, folder in sorted(parts.items()):
        link = target / part
        dest = os.path.relpath((root / folder).resolve(), target.resolve())
        if link.is_symlink() or link.exists():
            if link.is_symlink() and os.readlink(link) == dest:
                links.append(link)
                continue
            link.unlink()
        link.symlink_to(dest, target_is_directory=True)
        links.append(link)
    return links


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root_default = Path(__file__).resolve().parent.parent
    parser.add_argument("--root", type=Path, default=root_default, help="the repository (default: this one)")
    parser.add_argument("--out", type=Path, default=None, help="where .typing goes (default: ROOT/.typing)")
    args = parser.parse_args(argv)
    out = args.out or args.root / ".typing"
    links = write_links(args.root, out)
    print(f"{len(links)} links in {out / NAMESPACE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
