"""The model's options that LRA's code sets differently (issue 18), checked on built modules: each key's
default keeps the model as it was, and each LRA value builds what the key says."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnbench.harness.run.model import EncoderClassifier, ModelConfig
from conftest import REPO


def build(variant: str = "full", params: dict | None = None, **options) -> EncoderClassifier:
    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, dim=32, heads=4, mlp_dim=64, **options)
    return EncoderClassifier(cfg, variant, params, vocab_size=400, seq_len=16, num_classes=3)


def test_the_defaults_build_todays_model():
    model = build()
    block = model.blocks[0]
    assert block.attn.qkv.bias is not None and block.attn.out.bias is not None
    assert [type(m) for m in block.mlp] == [nn.Linear, nn.GELU, nn.Linear] and block.mlp[1].approximate == "none"
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.cls is not None and model.pos.shape[1] == 17  # the CLS token added
    # torch's default init of a Linear: uniform in +-1/sqrt(fan_in), biases too (not zero)
    assert block.mlp[0].bias.abs().max() > 0


def test_embedding_init_std():
    assert build(embedding_init_std=1.0).embed.weight.std().item() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("variant, params, dropped, kept", [
    ("full", None, ["qkv"], ["out"]),
    ("lsh", {"chunk_size": 4, "n_buckets": 4}, ["qk", "v"], ["out"]),
    ("synthesizer", {"kind": "dense", "dot_product": True}, ["v", "qk"], ["out", "w1", "w2"]),
])
def test_qkv_bias_false_drops_the_query_key_value_biases_only(variant, params, dropped, kept):
    attn = build(variant, params, qkv_bias=False).blocks[0].attn
    for name in dropped:
        assert getattr(attn, name).bias is None, name
    for name in kept:
        assert getattr(attn, name).bias is not None, name
    with_bias = build(variant, params).blocks[0].attn
    assert sum(p.numel() for p in with_bias.parameters()) - sum(p.numel() for p in attn.parameters()) == sum(
        getattr(with_bias, n).bias.numel() for n in dropped if getattr(with_bias, n).bias is not None)


def test_mlp_dropout_after_the_activation():
    mlp = build(mlp_dropout_after_activation=True, dropout=0.25).blocks[0].mlp
    assert [type(m) for m in mlp] == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear] and mlp[2].p == 0.25
    mlp.train()
    hidden = {}
    mlp[3].register_forward_hook(lambda m, i, o: hidden.setdefault("x", i[0]))
    mlp(torch.randn(4, 8, 32))
    zeros = (hidden["x"] == 0).float().mean().item()
    assert 0.15 < zeros < 0.35  # a quarter of the activations dropped before the second layer


def test_gelu_tanh_is_the_tanh_approximation():
    gelu = build(gelu="tanh").blocks[0].mlp[1]
    x = torch.linspace(-4, 4, 101)
    tanh = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    torch.testing.assert_close(gelu(x), tanh)
    assert (gelu(x) - nn.functional.gelu(x)).abs().max() > 1e-5  # not the exact one


def test_xavier_init_of_every_linear_with_zero_biases():
    model = build(init="xavier")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) >= 2 * 4 + 2  # per block qkv, out, two MLP layers; the head's two
    for lin in linears:
        fan_out, fan_in = lin.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.8 * bound
        assert lin.bias is None or torch.count_nonzero(lin.bias) == 0


def test_pooling_first_reads_position_zero_and_adds_no_token():
    model = build(pooling="first").eval()
    assert model.cls is None and model.pos.shape[1] == 16
    seen = {}
    model.ln.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    tokens = torch.randint(1, 400, (3, 16))
    pooled = model.encode(tokens)
    torch.testing.assert_close(pooled, seen["x"][:, 0])


# ---------------------------------------------------------------- LRA's masking of black pixels

def pixel_model(variant: str = "full", params: dict | None = None, **options) -> EncoderClassifier:
    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, dim=32, heads=4, mlp_dim=64, dropout=0.0, **options)
    return EncoderClassifier(cfg, variant, params, vocab_size=257, seq_len=24, num_classes=10,
                             zero_token=1).eval()


@pytest.mark.parametrize("pooling", ["cls", "mean", "first"])
@pytest.mark.parametrize("variant, params", [("full", None), ("window", {"window": 3, "block_size": 4}),
                                             ("linear", None)])
def test_black_pixels_are_masked_like_padding(variant, params, pooling):
    """With mask_zero_tokens a black pixel (token 1) is padding: the logits equal those of the same
    model on the image whose black pixels are replaced by the padding token, which the model masks."""
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(2, 257, (3, 24), generator=gen)
    tokens[0, 1::3] = 1
    tokens[1, 5:] = 1
    if pooling != "first":
        tokens[2, 0] = 1  # "first" reads position 0, whose own query is its embedding: not masked there
    masked = pixel_model(variant, params, pooling=pooling, mask_zero_tokens=True)
    reference = pixel_model(variant, params, pooling=pooling)
    reference.load_state_dict(masked.state_dict())
    with torch.no_grad():
        got = masked(tokens)
        want = reference(torch.where(tokens == 1, 0, tokens))
        # and whatever the black pixels' embeddings were, nothing changes
        masked.embed.weight[1] += 5.0
        again = masked(tokens)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(again, got)


@pytest.mark.parametrize("pooling", ["cls", "mean", "first"])
def test_an_all_black_image_gives_finite_logits(pooling):
    model = pixel_model(pooling=pooling, mask_zero_tokens=True)
    assert torch.isfinite(model(torch.ones(2, 24, dtype=torch.long))).all()


def test_mask_zero_tokens_needs_a_task_with_a_zero_token():
    with pytest.raises(ValueError, match="no raw zero value"):
        EncoderClassifier(ModelConfig(mask_zero_tokens=True), "full", None, vocab_size=20, seq_len=8, num_classes=2)


def test_the_config_refuses_mask_zero_tokens_on_a_task_without_pixels():
    from attnbench.harness.config import ConfigError, validate_config
    from conftest import tiny_config

    config = tiny_config()
    config["tasks"]["listops"]["model"] = {"mask_zero_tokens": True}
    with pytest.raises(ConfigError, match=r"'tasks.listops.model.mask_zero_tokens' is true, but task 'listops'"):
        validate_config(config)


# ---------------------------------------------------------------- the lra profile

def resolved_models(model: dict, tasks: dict | None = None) -> dict:
    from attnbench.harness.config import resolve_run, validate_config
    from conftest import tiny_config

    config = tiny_config(variants={"full": {}, "window": {"window": 3, "block_size": 4}})
    config["model"].update(model)
    config["tasks"]["image"] = {"data": {"source": "digits", "max_train": 100}}
    for task, settings in (tasks or {}).items():
        config["tasks"][task].update(settings)
    config = validate_config(config)
    return {(t, v): resolve_run(config, t, v, 0)["model"] for t in ("listops", "image") for v in ("full", "window")}


def test_the_lra_profile_sets_lras_values_where_nothing_more_specific_does():
    models = resolved_models({"profile": "lra"}, tasks={
        "listops": {"model": {"gelu": "exact"}},  # a task's own setting wins over the shared profile
        "image": {"per_variant": {"window": {"model": {"profile": "attnbench"}}}}})  # a variant's profile too
    lra = {"embedding_init_std": 1.0, "qkv_bias": False, "mlp_dropout_after_activation": True, "init": "xavier"}
    for key in [("listops", "full"), ("listops", "window"), ("image", "full")]:
        assert {k: models[key][k] for k in lra} == lra, key
    assert models["listops", "full"]["gelu"] == "exact" and models["image", "full"]["gelu"] == "tanh"
    # black pixels masked where there are pixels
    assert models["image", "full"]["mask_zero_tokens"] is True
    assert models["listops", "full"]["mask_zero_tokens"] is False
    window = models["image", "window"]
    assert (window["profile"], window["init"], window["qkv_bias"], window["mask_zero_tokens"]) == (
        "attnbench", "default", True, False)


def test_the_default_profile_keeps_todays_model():
    models = resolved_models({})
    for model in models.values():
        assert (model["profile"], model["embedding_init_std"], model["qkv_bias"], model["init"], model["gelu"],
                model["mlp_dropout_after_activation"], model["mask_zero_tokens"]) == (
            "attnbench", 0.02, True, "default", "exact", False, False)


def test_check_config_show_prints_each_tasks_resolved_model(capsys):
    import json

    from attnbench.harness.cli import main

    lra = REPO / "config" / "lra.yaml"
    assert main(["check-config", "--config", str(lra), "--show"]) == 0
    resolved = json.loads(capsys.readouterr().out)["resolved_models"]
    assert {t: resolved[t]["mask_zero_tokens"] for t in ("listops", "text", "retrieval", "image", "pathfinder",
                                                         "pathx")} == {
        "listops": False, "text": False, "retrieval": False, "image": True, "pathfinder": True, "pathx": True}
    assert resolved["retrieval"]["pooling"] == "first" and resolved["image"]["init"] == "xavier"
    assert (resolved["pathfinder/performer"]["layers"], resolved["pathfinder/performer"]["dim"]) == (4, 32)
