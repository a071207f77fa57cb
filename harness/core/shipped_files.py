"""The files attnbench ships beside its code, found as package data (so that a normal
``pip install .`` works as well as an editable one): the configs and their schema
(``config/`` of the repository, ``attnbench.config``), the run record schema
(``attnbench.harness.results``) and the efficiency sweep's benchmarks (``benchmarks/``,
``attnbench.benchmarks``)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def _file(package: str, name: str) -> Path:
    """A shipped file as a filesystem path (attnbench is installed as plain files, never zipped)."""
    return Path(str(resources.files(package) / name))


def config_schema() -> Path:
    return _file("attnbench.config", "schema.yaml")


def default_config() -> Path:
    """``config/config.yaml``: the default config (a checkout's own, in an editable install)."""
    return _file("attnbench.config", "config.yaml")


def record_schema() -> Path:
    return _file("attnbench.harness.results", "record_schema.json")


def benchmarks_dir() -> Path:
    """The folder of the sweep's pytest-benchmark files (``test_attention.py``, ``conftest.py``)."""
    return _file("attnbench.benchmarks", "")
