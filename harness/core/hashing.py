"""The short, stable hash that names a resolved run config (and anything else JSON-shaped)."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def config_hash(obj: Any) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
