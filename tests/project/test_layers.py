"""The import layers of attnbench (pyproject.toml, [tool.importlinter]): the contract holds on
this tree, and it catches an import that points up a layer or across two siblings."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("harness", "variants", "tasks")


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_layers_contract_is_kept():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "attnbench layers KEPT" in result.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """The three packages copied as attnbench/<name> (a namespace, as installed) with the
    project's contract: PYTHONPATH=<copy> makes the copy the one analysed."""
    root = tmp_path_factory.mktemp("layers")
    for name in PACKAGES:
        shutil.copytree(REPO / name, root / "attnbench" / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize("module, added, broken", [
    # a lower layer reaching up: the training code into the report
    ("harness/run/model.py", "from attnbench.harness.report import writer", "attnbench.harness.run is not allowed "
     "to import attnbench.harness.report"),
    # a component into the harness above it
    ("variants/full.py", "from attnbench.harness.run import train", "attnbench.variants is not allowed to import "
     "attnbench.harness.run"),
    # two siblings of one layer
    ("harness/bench/files.py", "from attnbench.harness.compare import peers", "attnbench.harness.bench is not "
     "allowed to import attnbench.harness.compare"),
    # hidden in a function body: still an import
    ("harness/core/io.py", "def _late():\n    from attnbench.tasks import base", "attnbench.harness.core is not "
     "allowed to import attnbench.tasks"),
])
def test_a_forbidden_import_breaks_the_contract(tree_copy, module, added, broken):
    path = tree_copy / "attnbench" / module
    original = path.read_text()
    try:
        path.write_text(f"{original}\n\n{added}\n")
        result = lint_imports(tree_copy, pythonpath=tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0, result.stdout[-2000:]
    assert broken in result.stdout, result.stdout[-3000:]


def test_ruff_is_clean():
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
