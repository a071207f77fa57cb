"""Type checking (pyproject.toml, [tool.mypy]): mypy passes on attnbench and follows its imports.

``attnbench.*`` exists only through setuptools' editable import hook; the links that
scripts/link_packages.py writes into .typing/ are what mypy (and pyright/Pylance) read instead.
Without them every ``attnbench`` import is unresolved and every name is Any, which no check
below would notice but the last two."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO

MYPY = Path(sys.executable).parent / "mypy"
TRAIN_RUN = "from attnbench.harness.run.train import train_run\n"


def _link_packages():
    spec = importlib.util.spec_from_file_location("link_packages", REPO / "scripts" / "link_packages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    _link_packages().write_links(REPO, REPO / ".typing")  # what `make install` does
    return tmp_path_factory.mktemp("mypy_cache")


def mypy(cache_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    return subprocess.run([str(MYPY), "--cache-dir", str(cache_dir), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_mypy_passes(cache_dir):
    result = mypy(cache_dir)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout


def snippet(tmp_path: Path, code: str) -> str:
    path = tmp_path / "snippet.py"
    path.write_text(TRAIN_RUN + code)
    return str(path)


@pytest.mark.slow
def test_mypy_follows_attnbench_imports(cache_dir, tmp_path):
    result = mypy(cache_dir, snippet(tmp_path, "reveal_type(train_run)\n"))
    assert 'Revealed type is "def (run:' in result.stdout, result.stdout  # a signature, not "Any"
    assert "out_dir: pathlib.Path" in result.stdout, result.stdout


@pytest.mark.slow
def test_mypy_reports_a_wrong_call_into_attnbench(cache_dir, tmp_path):
    result = mypy(cache_dir, snippet(tmp_path, "train_run({}, 1, 'results')\n"))
    assert result.returncode == 1, result.stdout
    assert 'snippet.py:2: error: Argument 2 to "train_run" has incompatible type "int"' in result.stdout, result.stdout


def test_the_links_are_the_package_dirs(tmp_path):
    links = _link_packages()
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    (tmp_path / "attnbench").mkdir()
    (tmp_path / "attnbench" / "gone").symlink_to(REPO / "harness", target_is_directory=True)  # a part since removed
    written = links.write_links(REPO, tmp_path)
    assert {f"attnbench.{p.name}" for p in written} == set(mapping)
    for link in written:
        assert link.resolve() == (REPO / mapping[f"attnbench.{link.name}"]).resolve()
        assert not Path(os.readlink(link)).is_absolute()  # the clone can move
    assert not (tmp_path / "attnbench" / "gone").exists()
    assert links.write_links(REPO, tmp_path) == written  # again: the same links, no error
