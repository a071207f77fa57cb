"""Bad configs refused before any job starts, one line per problem naming the key, the value and
what is allowed: non-finite numbers, integral floats read as integers, seeds NumPy cannot take,
per_variant settings for variants the config does not train, attention parameters their
constructor refuses, and YAML or encoding errors with file, line and column."""
from __future__ import annotations

import pytest
import torch

from attnbench.harness.cli import main as cli_main
from attnbench.harness.config import ConfigError, load_config, validate_config
from attnbench.variants import build_attention
from conftest import tiny_config


@pytest.mark.parametrize(("section", "value", "message"), [
    ({"train": {"grad_clip": float("nan")}}, None, "'train.grad_clip' is nan; give a finite number"),
    ({"train": {"lr": float("inf")}}, None, "'train.lr' is inf; give a finite number"),
    ({"train": {"time_limit_min": "nan"}}, None, "'train.time_limit_min' is nan"),
    ({"tasks": {"listops": {"train": {"lr": "-inf"}}}}, None, "'tasks.listops.train.lr' is -inf"),
])
def test_non_finite_numbers_are_refused(section, value, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(tiny_config(**section))


def test_integral_floats_are_integers_and_others_are_refused():
    config = validate_config(tiny_config(train={"steps": 20.0, "batch_size": "8.0"}))
    assert config["train"]["steps"] == 20 and isinstance(config["train"]["steps"], int)
    assert config["train"]["batch_size"] == 8 and isinstance(config["train"]["batch_size"], int)
    with pytest.raises(ConfigError, match=r"'train.steps' is 20.5 \(a number\); expected integer"):
        validate_config(tiny_config(train={"steps": 20.5}))


def test_seeds_numpy_cannot_take_are_refused():
    assert validate_config(tiny_config(seeds=[0, 2 ** 32 - 1]))["seeds"] == [0, 2 ** 32 - 1]
    with pytest.raises(ConfigError, match=r"'seeds.1' is 4294967296; must be <= 4294967295"):
        validate_config(tiny_config(seeds=[0, 2 ** 32]))


def test_per_variant_settings_need_a_trained_variant():
    over = {"listops": {"per_variant": {"window": {"train": {"lr": 0.01}}}}}
    with pytest.raises(ConfigError, match=r"'tasks.listops.per_variant.window': 'window' is not trained by this"):
        validate_config(tiny_config(tasks=over))
    # a distilled student's training settings live there too
    student = tiny_config(tasks=over, distill={"students": {"window": {}}})
    assert validate_config(student)["tasks"]["listops"]["per_variant"]["window"] == {"train": {"lr": 0.01}}


def test_attention_parameters_their_constructor_refuses_are_said_up_front():
    with pytest.raises(ConfigError, match=r"'variants.lsh' on task 'listops': lsh: n_buckets must be even"):
        validate_config(tiny_config(variants={"full": {}, "lsh": {"n_buckets": 3}}))
    odd = {"listops": {"per_variant": {"lsh": {"params": {"n_buckets": 5}}}}}
    per_task = tiny_config(variants={"lsh": {}}, tasks=odd)
    with pytest.raises(ConfigError, match="'variants.lsh' on task 'listops'"):
        validate_config(per_task)


def test_yaml_and_encoding_errors_name_the_file_line_and_column(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("variants: {full: {}\ntasks: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml is not valid YAML at line 2, column 1"):
        load_config(broken)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"variants: {full: {}}\n# \xff\xfe\n")
    assert cli_main(["check-config", "--config", str(binary)]) == 2
    assert "binary.yaml is not UTF-8 text (byte 23" in capsys.readouterr().err


def test_a_window_longer_than_the_sequence_costs_what_the_sequence_allows():
    """window 100000 on 25 tokens: the band reaches the sequence's other blocks, no further."""
    huge, fit = (build_attention("window", 16, 2, {"window": w, "block_size": 4, "global_tokens": []}, max_len=64)
                 for w in (100_000, 24))
    fit.load_state_dict(huge.state_dict())
    assert huge.flops(2, 25) == fit.flops(2, 25)
    x = torch.randn(2, 25, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(huge.eval()(x), fit.eval()(x), rtol=0, atol=1e-6)
