"""The attention interface's ``max_len``: a variant built for the longest sequence it will see.

tests/length_projected.py is a variant that needs it (keys and values projected along the
length), added as one file; these tests follow it through the model, a training run, the
config and the efficiency sweep.
"""
from __future__ import annotations

import pytest
import torch

from attnbench.harness.bench.case import Stepper
from attnbench.harness.bench.settings import Case
from attnbench.harness.config import resolve_run, validate_config
from attnbench.harness.run.model import EncoderClassifier, ModelConfig
from attnbench.harness.run.train import train_run
from attnbench.variants import VARIANTS, build_attention
from conftest import tiny_config, torch_state_restored

NAME = "test_length_projected"
DIM, HEADS = 16, 2


def test_the_one_file_variant_is_registered():
    assert NAME in VARIANTS.names()


@pytest.mark.parametrize("pooling, extra", [("cls", 1), ("mean", 0)])
def test_model_builds_every_layer_for_its_sequence_length(pooling, extra):
    cfg = ModelConfig(layers=2, dim=DIM, heads=HEADS, mlp_dim=32, pooling=pooling)
    model = EncoderClassifier(cfg, NAME, {"k": 5}, vocab_size=11, seq_len=20, num_classes=3)
    for layer in model.attention_layers():
        assert layer.max_len == 20 + extra and tuple(layer.proj.shape) == (5, 20 + extra)
    tokens = torch.randint(1, 11, (4, 20))
    tokens[1, 12:] = 0  # padded: shorter than max_len
    assert model(tokens).shape == (4, 3)


def test_every_registered_variant_keeps_max_len():
    for entry in VARIANTS:
        assert build_attention(entry.name, DIM, HEADS, entry.cls.small_params, max_len=37).max_len == 37


def test_identity_projection_is_full_attention():
    """The limit case: k = N with E = I gives exactly full attention (same projections)."""
    n = 12
    torch.manual_seed(0)
    ours = build_attention(NAME, DIM, HEADS, {"k": n, "identity": True}, max_len=n).double().eval()
    full = build_attention("full", DIM, HEADS, max_len=n).double().eval()
    full.load_state_dict({k: v for k, v in ours.state_dict().items() if k != "proj"})
    x = torch.randn(3, n, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(x), full(x), rtol=0, atol=1e-12)


def test_longer_input_than_built_for_is_refused():
    layer = build_attention(NAME, DIM, HEADS, {"k": 4}, max_len=8)
    with pytest.raises(ValueError, match="built for at most 8"):
        layer(torch.randn(1, 9, DIM))
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        build_attention("full", DIM, HEADS, max_len=0)


@pytest.mark.slow
def test_config_validates_it_and_a_training_run_ends_ok(tmp_path, tiny_listops_data):
    config = validate_config(tiny_config(variants={"full": {}, NAME: {"k": "4"}}))  # text read as a number
    run = resolve_run(config, "listops", NAME, 0)
    assert run["variant"]["params"] == {"k": 4, "identity": False}
    with torch_state_restored():
        record = train_run(run, tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "ok", record["message"]
    assert record["efficiency"]["attention_flops_fwd"] > 0


@pytest.mark.parametrize("n", [32, 64])
def test_the_sweep_builds_one_module_per_length(n):
    case = Case(NAME, {"k": 4, "identity": False}, "default", "layer", "forward_backward", "float32", 1, n)
    stepper = Stepper(case, heads=HEADS, head_dim=DIM // HEADS, mlp_dim=32, device=torch.device("cpu"), seed=0, n=16)
    assert stepper.module.max_len == n and tuple(stepper.module.proj.shape) == (4, n)
    stepper()  # the priming step: shorter than the module is built for
    stepper.resize(n, seed=0)
    stepper()
    with pytest.raises(ValueError, match="built for at most"):
        stepper.resize(n + 1, seed=0)
