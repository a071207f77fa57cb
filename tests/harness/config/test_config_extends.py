"""A config built on another (`extends:`), and the two LRA configs it serves: config/lra.yaml runs each Table 1
row as LRA's code computed it, config/lra_paper.yaml (extending it) the same grid with the papers' mechanisms."""
from __future__ import annotations

import pytest
import yaml

from attnbench.harness.config import ConfigError, load_config, resolve_run
from attnbench.harness.config.extends import merged
from attnbench.harness.results.aggregate import mechanism_form
from conftest import REPO, TINY_CONFIG

LRA_FORMS = {"sparse", "lsh", "sparse_fixed", "linear", "performer", "local", "sinkhorn", "linformer"}


def test_mappings_merge_key_by_key_and_the_rest_is_replaced():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1}
    assert merged(base, {"a": {"y": [3]}, "c": 2}) == {"a": {"x": 1, "y": [3]}, "b": 1, "c": 2}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 1}  # the base is not changed


def test_a_config_extending_another_says_only_what_differs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"extends": "base.yaml", "train": {"steps": 7},
                                                        "variants": {"window": {"window": 4}}}))
    config = load_config(tmp_path / "mine.yaml")
    assert config["train"]["steps"] == 7 and config["train"]["batch_size"] == TINY_CONFIG["train"]["batch_size"]
    assert list(config["variants"]) == ["full", "window"]
    assert "extends" not in config


def test_variants_left_out_of_the_base_are_gone_wherever_it_named_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {**TINY_CONFIG, "variants": {"full": {}, "window": {"window": 4}, "linear": {}},
            "distill": {"teacher": "window", "students": {"linear": {}}},
            "tasks": {"listops": {**TINY_CONFIG["tasks"]["listops"], "per_variant": {"window": {"train": {"lr": 0.1}},
                                                                                     "linear": {}}}}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"extends": {"config": "base.yaml",
                                                                    "without_variants": ["window"]}}))
    config = load_config(tmp_path / "mine.yaml")
    assert list(config["variants"]) == ["full", "linear"]
    assert list(config["tasks"]["listops"]["per_variant"]) == ["linear"]
    assert config["distill"]["students"] == {}  # its teacher left: the distillation with it
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"extends": {"config": "base.yaml", "without": ["x"]}}))
    with pytest.raises(ConfigError, match="expected the path of a config file, or {config: PATH"):
        load_config(tmp_path / "bad.yaml")


def test_a_missing_base_or_a_cycle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"'extends': nowhere.yaml does not exist \(a path relative to"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.slow
def test_lra_yaml_runs_lras_code_and_lra_paper_the_papers_mechanisms(tmp_path, monkeypatch):
    code = load_config(REPO / "config" / "lra.yaml")
    monkeypatch.chdir(tmp_path)  # `extends: config/lra.yaml` is then found among the shipped configs
    paper = load_config(REPO / "config" / "lra_paper.yaml")
    assert paper["results_dir"] == "results/lra_paper" and list(paper["tasks"]) == list(code["tasks"])
    assert list(paper["variants"]) == [v for v in code["variants"] if v in LRA_FORMS]  # the others: lra.yaml's runs
    assert not paper["distill"]["students"]
    for task in code["tasks"]:
        for variant in paper["variants"]:
            ours, theirs = resolve_run(code, task, variant, 0), resolve_run(paper, task, variant, 0)
            assert ours["model"]["layers"] == theirs["model"]["layers"]  # LRA's sizes in both
            assert mechanism_form({"config": theirs}) == "paper", (task, variant)
            want = "LRA's code" if variant in LRA_FORMS else "paper"
            assert mechanism_form({"config": ours}) == want, (task, variant)
    assert resolve_run(code, "listops", "performer", 0)["variant"]["params"]["n_features"] == 2
    assert resolve_run(code, "text", "performer", 0)["variant"]["params"]["feature_map"] == "relu"
