"""Wrapping a whole third-party attention layer: `attnbench new-variant NAME --layer` passes check-variant as
written, so does the README's wrapper of local-attention's LocalMHA, and the wrapper's pitfalls each fail
the check its docs name."""
from __future__ import annotations

import sys

import pytest
import torch

from attnbench.harness.cli import main as cli_main
from attnbench.harness.conformance.checks import FAST_CHECKS, run_checks
from attnbench.harness.conformance.template import write_template
from attnbench.variants import VARIANTS, build_attention
from readme_examples import readme_wrapper


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """``tmp_path`` on sys.path; the modules imported from it are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("wrap"):
            del sys.modules[name]


def failing(name: str, source: str) -> list[str]:
    """The fast checks that ``source`` (registered as ``name``) fails."""
    VARIANTS.register_source(name, source)
    return [r.check for r in run_checks(name, FAST_CHECKS, timeout_s=0) if r.status == "fail"]


def test_the_layer_template_passes_every_check_as_written(folder, capsys):
    assert cli_main(["new-variant", "wrapmha", "--layer", "--dir", str(folder)]) == 0
    assert "nn.MultiheadAttention" in capsys.readouterr().out
    text = (folder / "wrapmha.py").read_text()
    assert "def build_projections(self)" in text and "def attend(" not in text
    assert failing("wrapmha", "wrapmha:WrapmhaAttention") == []
    layer = build_attention("wrapmha", 16, 2, {}, max_len=32)
    # the wrapped layer owns the projections: Attention's qkv/out are not built beside it
    assert [name for name, _ in layer.named_children()] == ["layer"]
    assert sum(p.numel() for p in layer.parameters()) == 4 * 16 * 16 + 4 * 16  # in_proj + out_proj, with biases
    assert sum(p.numel() for p in build_attention("wrapmha", 16, 2, {"bias": False}, max_len=32).parameters()) \
        == 4 * 16 * 16


#: a change to the template -> the checks it fails (docs/own-attention.md's table of pitfalls)
PITFALLS = {
    "the mask passed as it is (True = real, where the layer wants True = ignore)": (
        ("ignore = None if key_padding_mask is None else ~key_padding_mask", "ignore = key_padding_mask"),
        ["padding invariance", "padding per element"]),
    "the layer built beside Attention's projections": (
        ("    def build_projections(self):",
         "    def __init__(self, *args, **kwargs):\n        super().__init__(*args, **kwargs)\n        self.build()\n\n"
         "    def build(self):"),
        ["gradients"]),
    "dropout applied in eval mode too": (
        ("self.layer(x, x, x,", "self.layer(__import__('torch').nn.functional.dropout(x, self.dropout), x, x,"),
        ["eval determinism"]),
}


@pytest.mark.parametrize("pitfall", list(PITFALLS))
def test_each_pitfall_fails_the_check_that_catches_it(folder, pitfall):
    (old, new), expected = PITFALLS[pitfall]
    module = f"wrap{list(PITFALLS).index(pitfall)}"
    path, cls = write_template(module, folder, layer=True)
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))
    assert failing(module, f"{module}:{cls}") == expected


@pytest.mark.slow
def test_the_readme_wrapper_of_local_attention_passes_every_check(folder):
    pytest.importorskip("local_attention")  # the peers extra (make test installs it)
    (folder / "wraplocal.py").write_text(readme_wrapper())
    assert failing("wraplocal", "wraplocal:LocalMHAAttention") == []
    layer = build_attention("wraplocal", 16, 2, {"window_size": 4}, max_len=64)
    assert [name for name, _ in layer.named_children()] == ["layer"]
    x = torch.randn(2, 20, 16)
    assert layer(x).shape == x.shape  # a length that is not a multiple of the window


#: appended to the layer template: 2x forward whose backward forgets the 2, as a hand-written backward missing a term
WRONG_BACKWARD = """

class _Scaled(__import__("torch").autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return grad
"""


def test_a_backward_that_is_not_the_forwards_derivative_fails_the_gradcheck(folder):
    path, cls = write_template("wrapgrad", folder, layer=True)
    text = path.read_text()
    old = "        return out"
    assert text.count(old) == 1, "the template's forward ends with `return out`"
    text = text.replace(old, "        return _Scaled.apply(out)") + WRONG_BACKWARD
    path.write_text(text)
    assert failing("wrapgrad", f"wrapgrad:{cls}") == ["gradcheck"]
