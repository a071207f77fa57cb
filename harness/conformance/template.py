"""``attnbench new-variant NAME``: the file a new attention mechanism starts from. As written it
is full softmax attention (the placeholder to replace), and it passes ``attnbench check-variant``,
so the first step of a new mechanism is a green check.

``attnbench new-variant NAME --layer`` writes the other shape (``LAYER_TEMPLATE``): a whole attention layer
from elsewhere (a third-party ``nn.Module`` with its own projections, taking x (B, N, D) and a padding
mask), wrapped by overriding ``build_projections`` and ``forward``; as written it wraps torch's
``nn.MultiheadAttention``, standing in for the package's layer, and passes ``check-variant`` too."""
from __future__ import annotations

import keyword
from pathlib import Path

TEMPLATE = '''"""{name}: a new attention variant for attnbench (written by `attnbench new-variant {name}`).

As written it is full softmax attention: replace the body of `attend` (and `flops`, and the
class attributes) with your mechanism, keeping its inputs and outputs. (A whole layer from a package,
with its own projections, is wrapped instead: `attnbench new-variant {name} --layer`.)

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

LAYER_TEMPLATE = '''"""{name}: a whole attention layer from elsewhere, wrapped as an attnbench variant (written by
`attnbench new-variant {name} --layer`).

Third-party attention usually comes as a whole layer: an nn.Module with its own query/key/value and
output projections, called as layer(x) on (B, N, D). This file wraps one. As written it wraps torch's
nn.MultiheadAttention, standing in for your package's layer: replace the import of `Layer`, its
construction in `build_projections` and its call in `forward`, and adapt `flops` and `complexity`.

What the wrapper must get right (check-variant catches the first three):
- the padding mask: attnbench passes key_padding_mask (B, N) bool with True = real token, or None =
  every token real. Libraries differ: nn.MultiheadAttention wants True = ignore (hence the ~ below); a
  layer that pads to whole blocks or windows may need a mask even when every token is real (pass an
  all-True one); a mask the layer ignores or reads inverted fails "padding invariance";
- the projections: build the layer in `build_projections`, which replaces Attention's own qkv/out
  projections; a layer built in `__init__` beside them leaves those unused ("gradients" fails on
  qkv.weight) and counts their parameters. The model's `qkv_bias: false` (config/lra.yaml) cannot reach
  a wrapped layer's projections: set its bias arguments yourself;
- dropout: pass `self.dropout` (the config's model.attn_dropout) to a layer that applies it only in
  training mode; one that drops in eval mode too fails "eval determinism";
- causal: attnbench's tasks classify whole sequences, by default from a [CLS] token at position 0; a
  causal layer lets it see only itself. Build the layer non-causal (causal=False): no check can tell.

Check it, from this folder:   attnbench check-variant {name}:{cls}
Use it in a pipeline config:  variants: {{{name}: {{from: "{name}:{cls}", params: {{}}}}}}
Time it beside ours:          attnbench compare --config that.yaml --n 1024 --device cpu
"""
from __future__ import annotations

from dataclasses import dataclass

# the layer to wrap: replace with your package's, e.g. `from local_attention import LocalMHA as Layer`
from torch.nn import MultiheadAttention as Layer

from attnbench.harness.core.registry import param
from attnbench.variants import Attention


class {cls}(Attention):
    """{name}: a whole attention layer from elsewhere (torch's nn.MultiheadAttention as written)."""

    complexity = "O(N^2)"  # how time and memory grow with the length N (shown in the report)
    exact = False          # True only when the output equals full softmax attention
    linear_memory = False  # True when peak memory grows linearly with N (check-variant then measures it)
    small_params = {{}}      # parameters under which 16-64 token checks exercise the real mechanism

    @dataclass(frozen=True)
    class Config:
        """{name}'s parameters, passed on to the layer (they become the config schema)."""

        bias: bool = param(True, "biases on the layer's input and output projections")

    def build_projections(self):
        """The wrapped layer, with its own projections (called by Attention.__init__ in place of its
        qkv/out projections). self.dim, self.heads, self.head_dim, self.max_len, self.dropout and
        self.cfg (the Config above) are set."""
        self.layer = Layer(self.dim, self.heads, dropout=self.dropout, bias=self.cfg.bias, batch_first=True)

    def forward(self, x, key_padding_mask=None):
        """x (B, N, D) and key_padding_mask (B, N) bool, True = real token (None: every token real) -> (B, N, D)."""
        ignore = None if key_padding_mask is None else ~key_padding_mask  # nn.MultiheadAttention: True = ignore
        out, _ = self.layer(x, x, x, key_padding_mask=ignore, need_weights=False)
        return out

    def flops(self, batch: int, seq_len: int) -> int:
        """Forward FLOPs (a multiply-add = 2): the scores and the weighted sum, plus the projections."""
        return 2 * 2 * batch * self.heads * seq_len * seq_len * self.head_dim + self.projection_flops(batch, seq_len)
'''


def class_name(name: str) -> str:
    """``my_attention`` -> ``MyAttention``; ``local2`` -> ``Local2Attention``."""
    camel = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)
    return camel if camel.endswith("Attention") else f"{camel}Attention"


def write_template(name: str, folder: Path, force: bool = False, layer: bool = False) -> tuple[Path, str]:
    """Write ``folder/NAME.py``; returns its path and its class name. ``name`` must be a Python
    module name (it is imported as ``NAME``); an existing file is kept unless ``force``. ``layer``: the
    wrapper of a whole layer (``LAYER_TEMPLATE``) instead of an ``attend`` to fill in."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{name!r} is not a Python module name: use letters, digits and '_' (not first a digit)")
    path = Path(folder) / f"{name}.py"
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; choose another name or pass --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    cls = class_name(name)
    path.write_text((LAYER_TEMPLATE if layer else TEMPLATE).format(name=name, cls=cls), encoding="utf-8")
    return path, cls
