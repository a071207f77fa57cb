"""Whether a run's task data are LRA's own: its data source and sequence length as in LRA's
released configs (``config/lra.yaml`` sets them). Only such runs may sit beside LRA's published
Table 1; the report decides per run from the run's own config, never from the task's name."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _pathfinder(resolution: int) -> Callable[[dict[str, Any], int], bool]:
    def check(data: dict[str, Any], seq_len: int) -> bool:
        return (data.get("source") == "files" and data.get("resolution") == resolution
                and data.get("difficulty") == "curv_contour_length_14" and seq_len == resolution ** 2)
    return check


#: task -> (its data settings, the prepared sequence length) -> True when they are LRA's
LRA_DATA: dict[str, Callable[[dict[str, Any], int], bool]] = {
    # the released ListOps files (lengths 500-2000), at LRA's 2,000 tokens
    "listops": lambda d, n: d.get("source") == "files" and n == 2000,
    # byte-level IMDb at LRA's released 1,000 bytes (the paper's text says 4K; its code uses 1K)
    "text": lambda d, n: "imdb" in str(d.get("path", "")).lower() and n == 1000,
    # the AAN pairs of the release, 4,000 bytes per document
    "retrieval": lambda d, n: n == 4000,
    # grayscale CIFAR-10, 32 x 32 pixels
    "image": lambda d, n: d.get("source") == "cifar10" and n == 1024,
    # the released Pathfinder images at LRA's hard difficulty: 32 x 32, and 128 x 128 for Path-X
    "pathfinder": _pathfinder(32),
    "pathx": _pathfinder(128),
}


def ran_lra_settings(task: str, data: dict[str, Any], seq_len: int) -> bool:
    """True when ``task`` is one of LRA's and its data settings and length are LRA's."""
    check = LRA_DATA.get(task)
    return bool(check and check(data, int(seq_len)))
