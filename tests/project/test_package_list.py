"""pyproject.toml's package list: a wheel (`pip install .`, not editable) holds only the packages it names, so a
new package folder missing from it works in a checkout and is missing once installed. The list must name every
package folder under the import root's top-level folders (``package-dir``) and nothing else."""
from __future__ import annotations

import tomllib

from conftest import REPO


def package_folders(package_dir: dict[str, str]) -> set[str]:
    """Every package (a folder with an ``__init__.py``) under each mapped top-level folder, by dotted name."""
    found = set()
    for name, folder in package_dir.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            parts = init.parent.relative_to(root).parts
            if "__pycache__" not in parts:
                found.add(".".join([name, *parts]))
    return found


def test_the_package_list_names_every_package_folder_and_nothing_else():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, folders = set(setuptools["packages"]), package_folders(setuptools["package-dir"])
    assert listed - folders == set(), "listed in pyproject.toml's packages, but no package folder"
    assert folders - listed == set(), "package folders missing from pyproject.toml's packages (not in a wheel)"
