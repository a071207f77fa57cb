"""The encoder classifier and the training loop: schedule, determinism, pooling, padding."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from attnbench.harness.run.model import EncoderClassifier, ModelConfig, count_parameters, sinusoidal_positions
from attnbench.harness.run.train import train_run
from attnbench.harness.run.train_config import TrainConfig, lr_factor
from attnbench.variants import VARIANTS
from conftest import tiny_run

# ---------------------------------------------------------------- learning-rate schedule


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("steps, warmup", [(100, 10), (1000, 100), (50, 0), (20, 19)])
def test_lr_factor_shape(schedule, steps, warmup):
    cfg = TrainConfig(steps=steps, warmup_steps=warmup, schedule=schedule)
    f = [lr_factor(s, cfg) for s in range(steps)]  # the factors of optimiser steps 0 .. steps-1
    assert all(0.0 < x <= 1.0 for x in f), (min(f), max(f))
    # linear warm-up: equal increments, reaching the peak on the last warm-up step
    for s in range(warmup):
        assert f[s] == pytest.approx((s + 1) / warmup)
    if warmup:
        assert f[warmup - 1] == pytest.approx(1.0)
    assert f[warmup] == pytest.approx(1.0)  # decay starts from the peak
    after = f[warmup:]
    # strict=False: consecutive pairs, the shifted copy is one shorter
    assert all(a >= b - 1e-12 for a, b in zip(after, after[1:], strict=False)), "not monotone after warm-up"
    if schedule == "constant":
        assert all(x == 1.0 for x in after)
    else:
        span = steps - warmup
        assert f[-1] <= 1.0 / span + 1e-12  # the last step is at most one decay increment above 0
        assert lr_factor(steps, cfg) == pytest.approx(0.0, abs=1e-12)  # and the schedule ends at 0
        mid = warmup + span // 2
        if span >= 10:
            expected_mid = 0.5 if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * (span // 2) / span))
            assert f[mid] == pytest.approx(expected_mid, abs=0.06)


def test_cosine_stays_above_linear_early_and_below_late():
    cos = TrainConfig(steps=200, warmup_steps=0, schedule="cosine")
    lin = TrainConfig(steps=200, warmup_steps=0, schedule="linear")
    assert lr_factor(40, cos) > lr_factor(40, lin)
    assert lr_factor(160, cos) < lr_factor(160, lin)


# ---------------------------------------------------------------- whole training runs

def _curve(out):
    with open(out / "curve.csv", newline="") as f:
        return [{k: r[k] for k in ("step", "lr", "train_loss", "val_loss", "val_acc")} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_training_is_deterministic(tmp_path, tiny_listops_data):
    records, curves = [], []
    for name in ("a", "b"):
        run = tiny_run(seed=3)
        assert run["deterministic"] is True
        records.append(train_run(run, tiny_listops_data, tmp_path / name, bar=False))
        curves.append(_curve(tmp_path / name))
    assert records[0]["status"] == records[1]["status"] == "ok"
    assert curves[0] == curves[1]
    assert len(curves[0]) == 2
    assert records[0]["accuracy"] == records[1]["accuracy"]
    a = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    other = train_run(tiny_run(seed=4), tiny_listops_data, tmp_path / "c", bar=False)
    assert other["status"] == "ok"
    assert [r["train_loss"] for r in _curve(tmp_path / "c")] != [r["train_loss"] for r in curves[0]]


@pytest.mark.slow
def test_curve_lr_follows_schedule(tmp_path, tiny_listops_data):
    run = tiny_run()
    train_run(run, tiny_listops_data, tmp_path, bar=False)
    cfg = TrainConfig(**{**run["train"], "betas": tuple(run["train"]["betas"])})
    for row in _curve(tmp_path):
        # after `step` optimiser steps the scheduler holds the factor of the next step
        assert float(row["lr"]) == pytest.approx(cfg.lr * lr_factor(int(row["step"]), cfg), abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("pooling, positions", [("cls", "learned"), ("mean", "learned"),
                                                ("cls", "sinusoidal"), ("mean", "sinusoidal")])
def test_pooling_and_positions_train(tmp_path, tiny_listops_data, pooling, positions):
    run = tiny_run(model={"pooling": pooling, "positions": positions})
    record = train_run(run, tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "ok", record["message"]
    assert record["config"]["model"]["pooling"] == pooling
    assert 0.0 <= record["accuracy"]["test"] <= 1.0


@pytest.mark.slow
def test_training_reduces_loss(tmp_path, tiny_listops_data):
    run = tiny_run(train={"steps": 60, "eval_every": 20, "lr": 3e-3}, model={"dropout": 0.0})
    record = train_run(run, tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "ok"
    losses = [float(r["train_loss"]) for r in _curve(tmp_path)]
    assert losses[-1] < losses[0], losses


# ---------------------------------------------------------------- the model itself

VOCAB, SEQ, CLASSES = 12, 10, 5
PADDABLE = [e.name for e in VARIANTS if e.cls.supports_padding_mask]


def _model(pooling, positions, variant="full", seq_len=SEQ + 6, layers=2):
    torch.manual_seed(0)
    cfg = ModelConfig(layers=layers, dim=16, heads=2, mlp_dim=24, dropout=0.1, pooling=pooling, positions=positions)
    return EncoderClassifier(cfg, variant, {}, VOCAB, seq_len, CLASSES).double().eval()


@pytest.mark.parametrize("variant", PADDABLE)
@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_model_padding_invariance(pooling, positions, variant):
    model = _model(pooling, positions, variant)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, VOCAB, (3, SEQ), generator=g)  # no padding
    with torch.no_grad():
        base = model(tokens)
        assert base.shape == (3, CLASSES) and torch.isfinite(base).all()
        for pad in (1, 6):
            padded = torch.cat([tokens, torch.zeros(3, pad, dtype=torch.long)], dim=1)
            torch.testing.assert_close(model(padded), base, rtol=0, atol=1e-10)
        # ragged batch: a shorter sequence padded to the batch length scores as it does alone
        ragged = tokens.clone()
        ragged[1, 6:] = 0
        torch.testing.assert_close(model(ragged)[1], model(tokens[1:2, :6])[0], rtol=0, atol=1e-10)


def test_model_output_depends_on_real_tokens():
    model = _model("mean", "learned")
    tokens = torch.randint(1, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(2))
    changed = tokens.clone()
    changed[:, 3] = tokens[:, 3] % (VOCAB - 1) + 1  # another non-pad token
    assert not torch.equal(changed, tokens)
    with torch.no_grad():
        assert not torch.allclose(model(tokens), model(changed))


def test_dropout_only_in_training_mode():
    model = _model("cls", "learned")
    tokens = torch.randint(1, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(tokens), model(tokens))
        model.train()
        assert not torch.equal(model(tokens), model(tokens))


def test_cls_token_and_positions_sizes():
    cls_model = _model("cls", "learned", seq_len=SEQ)
    mean_model = _model("mean", "learned", seq_len=SEQ)
    assert cls_model.pos.shape == (1, SEQ + 1, 16) and mean_model.pos.shape == (1, SEQ, 16)
    assert cls_model.cls is not None and torch.equal(cls_model.cls, torch.zeros_like(cls_model.cls))
    assert count_parameters(cls_model) == count_parameters(mean_model) + 16 + 16  # a CLS vector, one position
    assert len(cls_model.attention_layers()) == 2


def test_sinusoidal_positions():
    table = sinusoidal_positions(7, 6)
    assert table.shape == (7, 6)
    for pos in range(7):
        for i in range(3):
            angle = pos / 10_000 ** (2 * i / 6)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert sinusoidal_positions(5, 7).shape == (5, 7)  # odd widths work too
