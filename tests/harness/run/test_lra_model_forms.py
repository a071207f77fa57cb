"""The model options of LRA's code that are not the paper's (issue 30): `mask_padding: false` (LRA's Linear
Trans., Performer, Reformer and Linformer kernels ignore the padding mask) and `pooling: mean_all` (LRA's MEAN
pooling averages every position, padding included). Each is checked against what it says, on built modules."""
from __future__ import annotations

import pytest
import torch

from attnbench.harness.core.registry import as_dict
from attnbench.harness.run.model import EncoderClassifier, ModelConfig

PAD = 0


def model(**options) -> EncoderClassifier:
    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, dim=16, heads=2, mlp_dim=32, dropout=0.0, **options)
    return EncoderClassifier(cfg, "linear", None, vocab_size=50, seq_len=12, num_classes=3).eval()


def tokens() -> torch.Tensor:
    t = torch.randint(1, 50, (2, 12), generator=torch.Generator().manual_seed(3))
    t[1, 7:] = PAD
    return t


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_without_the_padding_mask_padding_takes_part_in_attention(pooling):
    masked, unmasked = model(pooling=pooling), model(pooling=pooling, mask_padding=False)
    unmasked.load_state_dict(masked.state_dict())
    seen = {}
    unmasked.blocks[0].attn.register_forward_hook(lambda m, args, out: seen.setdefault("mask", args[1]))
    with torch.no_grad():
        t = tokens()
        full_row = masked(t)[0], unmasked(t)[0]
        padded_row = masked(t)[1], unmasked(t)[1]
        # the padded element's real tokens now see the padding: changing a padding embedding changes its logits
        unmasked.embed.weight[PAD] += torch.linspace(-1.0, 1.0, 16)  # not a constant shift: LayerNorm removes one
        moved = unmasked(t)[1]
    assert seen["mask"] is None  # the layers get no mask at all
    torch.testing.assert_close(full_row[0], full_row[1])  # no padding: the same model
    assert not torch.allclose(padded_row[0], padded_row[1])
    assert not torch.allclose(moved, padded_row[1])


def test_mean_all_averages_every_position_padding_included():
    mean, mean_all = model(pooling="mean"), model(pooling="mean_all")
    mean_all.load_state_dict(mean.state_dict())
    outs = {}
    for name, m in (("mean", mean), ("mean_all", mean_all)):
        m.ln.register_forward_hook(lambda mod, args, out, name=name: outs.setdefault(name, out))
    t = tokens()
    with torch.no_grad():
        pooled_mean, pooled_all = mean.encode(t), mean_all.encode(t)
    x = outs["mean_all"]  # the final LayerNorm's output, (B, N, dim): the same in both models
    torch.testing.assert_close(outs["mean"], x)
    torch.testing.assert_close(pooled_all, x.mean(1))
    torch.testing.assert_close(pooled_mean[1], x[1, :7].mean(0))
    torch.testing.assert_close(pooled_mean[0], pooled_all[0])  # no padding: the same


def test_the_defaults_keep_the_run_hash():
    assert "mask_padding" not in as_dict(ModelConfig())  # added later: hashed only where it is set
    assert as_dict(ModelConfig(mask_padding=False))["mask_padding"] is False
