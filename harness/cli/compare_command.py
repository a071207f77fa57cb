"""``attnbench compare``, as the ``attnbench`` command line runs it: ``attnbench.harness.compare.command.main``
with ``--config`` read here, a layer above the comparison (a config is validated, and its ``from:`` variants
registered, by ``attnbench.harness.config``)."""
from __future__ import annotations

from typing import Any

from attnbench.harness.compare.command import main as compare_main


def config_variants(path: str) -> dict[str, dict[str, Any]]:
    """The variants of the config at ``path`` with their ``variants:`` parameters, the config validated as
    ``check-config`` validates it; its ``from:`` variants are registered, in this process and (exported in
    ``ATTNBENCH_VARIANTS``) in the worker processes the comparison starts."""
    from attnbench.harness.config import load_config

    return {name: dict(params) for name, params in load_config(path)["variants"].items()}


def main(argv: list[str]) -> int:
    """``attnbench compare ARGS``."""
    return compare_main(argv, read_config=config_variants)
