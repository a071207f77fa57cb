"""``attnbench new-variant NAME``: the file a new attention mechanism starts from. As written it
is full softmax attention (the placeholder to replace), and it passes ``attnbench check-variant``,
so the first step of a new mechanism is a green check."""
from __future__ import annotations

import keyword
from pathlib import Path

TEMPLATE = '''"""{name}: a new attention variant for attnbench (written by `attnbench new-variant {name}`).

As written it is full softmax attention: replace the body of `attend` (and `flops`, and the
class attributes) with your mechanism, keeping its inputs and outputs.

Check it, from this folder:   attnbench check-variant {name}:{cls}
Use it in a pipeline config:  variants: {{{name}: {{from: "{name}:{cls}", params: {{}}}}}}
(run from this folder, or with it on PYTHONPATH), or register it from an installed package:
    [project.entry-points."attnbench.variants"]
    {name} = "your_package.{name}:{cls}"
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnbench.harness.core.registry import param
from attnbench.variants import Attention


class {cls}(Attention):
    """{name}: full softmax attention, a placeholder for a new mechanism."""

    complexity = "O(N^2)"  # how time and memory grow with the length N (shown in the report)
    exact = False          # True only when the output equals full softmax attention
    linear_memory = False  # True when peak memory grows linearly with N (check-variant then measures it)
    small_params = {{}}      # parameters under which 16-64 token checks exercise the real mechanism

    @dataclass(frozen=True)
    class Config:
        """{name}'s parameters: each with a default and a description (they become the config schema)."""

        temperature: float = param(1.0, "the scores are divided by this (1: softmax attention)",
                                   exclusiveMinimum=0.0)

    def attend(self, q, k, v, key_padding_mask):
        """(B, H, N, Dh) queries, keys and values and a (B, N) bool mask (True = real token, or
        None) -> (B, H, N, Dh). The projections around it come from `Attention`."""
        work = torch.promote_types(q.dtype, torch.float32)  # the softmax in float32 at least
        scores = (q.to(work) @ k.to(work).transpose(-1, -2)) / (math.sqrt(q.shape[-1]) * self.cfg.temperature)
        if key_padding_mask is not None:  # padded keys get no weight
            scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a query with no real key: zeros
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, self.dropout)
        return (weights @ v.to(work)).to(v.dtype)

    def flops(self, batch: int, seq_len: int) -> int:
        """Forward FLOPs (a multiply-add = 2): the scores and the weighted sum, plus the projections."""
        return 2 * 2 * batch * self.heads * seq_len * seq_len * self.head_dim + self.projection_flops(batch, seq_len)
'''


def class_name(name: str) -> str:
    """``my_attention`` -> ``MyAttention``; ``local2`` -> ``Local2Attention``."""
    camel = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)
    return camel if camel.endswith("Attention") else f"{camel}Attention"


def write_template(name: str, folder: Path, force: bool = False) -> tuple[Path, str]:
    """Write ``folder/NAME.py``; returns its path and its class name. ``name`` must be a Python
    module name (it is imported as ``NAME``); an existing file is kept unless ``force``."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{name!r} is not a Python module name: use letters, digits and '_' (not first a digit)")
    path = Path(folder) / f"{name}.py"
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; choose another name or pass --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    cls = class_name(name)
    path.write_text(TEMPLATE.format(name=name, cls=cls), encoding="utf-8")
    return path, cls
