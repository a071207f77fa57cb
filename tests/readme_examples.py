"""The code the README shows, for the tests that run it as a user would copy it."""
from __future__ import annotations

import re

from conftest import REPO


def readme_wrapper() -> str:
    """The whole-layer wrapper of the README's "An attention layer from another package" (its Python block
    that defines ``LocalMHAAttention``, wrapping local-attention's ``LocalMHA``)."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    (code,) = [b for b in blocks if "class LocalMHAAttention(Attention)" in b]
    return code
