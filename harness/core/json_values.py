"""JSON read back: a file's value with its failure in words, and the places of numbers JSON has not.

Python's ``json`` reads and writes NaN and the infinities, which JSON has not and no other reader takes:
``non_finite`` finds them wherever they sit, for the checks of configs and records to name. ``read_json``
reads a file, and says why it cannot in one ``UnreadableJSON`` (the caller names the file and what to do).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class UnreadableJSON(ValueError):
    """Why a JSON file cannot be read, in words (missing, not UTF-8, not JSON); the file is not named."""


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UnreadableJSON(f"not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UnreadableJSON(str(exc)) from exc


def non_finite(value: Any, path: str = "") -> list[tuple[str, float]]:
    """``(path, number)`` of every NaN or infinite number in ``value`` (dicts and lists walked), the path
    dotted (``a.b[2]``; empty for ``value`` itself)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [(path, value)]
    if isinstance(value, dict):
        return [found for k, v in value.items() for found in non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list | tuple):
        return [found for i, v in enumerate(value) for found in non_finite(v, f"{path}[{i}]")]
    return []
