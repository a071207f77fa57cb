"""``attnbench compare --config``: a config's variants, `from:` ones included, each with its parameters, timed
against its peers where it has any and alone where it has none; the README's whole-layer wrapper through it."""
from __future__ import annotations

import json
import sys

import pytest
import yaml

from attnbench.harness.cli import main as cli_main
from attnbench.harness.compare.cases import plan
from attnbench.harness.compare.registry import PEERS, Shape, peer_variant
from attnbench.harness.compare.settings import build_parser, settings_from_args
from attnbench.harness.conformance.template import write_template
from attnbench.variants import VARIANTS
from readme_examples import readme_wrapper


@pytest.fixture
def own(tmp_path, monkeypatch):
    """``cmpown:CmpownAttention`` (the template) importable from ``tmp_path``, the current folder."""
    write_template("cmpown", tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cmpown", raising=False)
    return tmp_path


def test_a_from_variant_is_timed_alone_and_a_built_in_beside_its_peers(own):
    VARIANTS.register_source("mine", "cmpown:CmpownAttention")
    settings = {"mine": {"temperature": 2.0}, "full": {}}
    cases, skipped = plan(["mine", "full"], ["torch-mha"], lambda n: Shape(n), [32, 64], settings=settings,
                          alone=True)
    mine = [c for c in cases if c.variant == "mine"]
    assert [(c.peer, c.n, c.ours_params) for c in mine] == [(None, 32, {"temperature": 2.0}),
                                                            (None, 64, {"temperature": 2.0})]
    assert {(c.peer, c.n) for c in cases if c.variant == "full"} == {("torch-mha", 32), ("torch-mha", 64)}
    assert skipped == []
    # without --config a variant with no peer is skipped, as before
    _, skipped = plan(["mine"], None, lambda n: Shape(n), [32])
    assert [(s.variant, s.reason) for s in skipped] == [("mine", "no public peer registered for it")]


def test_a_variant_whose_peers_are_all_missing_still_runs_alone(monkeypatch):
    monkeypatch.setitem(sys.modules, "local_attention", None)  # importing it raises ImportError
    cases, skipped = plan(["local"], None, lambda n: Shape(n), [32], settings={"local": {"block_size": 8}},
                          alone=True)
    assert [(c.variant, c.peer, c.ours_params) for c in cases] == [("local", None, {"block_size": 8})]
    assert [s.peer for s in skipped] == ["local-attention-blocks"]


def test_a_built_in_class_under_a_second_name_gets_the_peers_of_its_first():
    VARIANTS.register_source("cmp_performer", "attnbench.variants.linear:LinearAttention")
    assert peer_variant("cmp_performer") == "linear" and peer_variant("full") == "full"
    assert "performer-pytorch" in [p.name for p in PEERS.of_variant(peer_variant("cmp_performer"))]
    cases, skipped = plan(["cmp_performer"], ["performer-pytorch"], lambda n: Shape(n), [64])
    # planned against linear's peer (skipped instead where performer-pytorch is not installed)
    assert {c.peer for c in cases} | {s.peer for s in skipped} == {"performer-pytorch"}
    assert all(c.ours_params["feature_map"] == "favor" for c in cases)  # matched as the peer asks


def test_an_unregistered_variant_points_to_the_config_not_to_variants_folder():
    _, skipped = plan(["no_such_variant"], None, lambda n: Shape(n), [32])
    assert "compare --config" in skipped[0].reason and "variants/no_such_variant.py" not in skipped[0].reason


def test_the_configs_variants_and_parameters_become_the_settings(own):
    VARIANTS.register_source("mine", "cmpown:CmpownAttention")
    config_variants = {"full": {}, "mine": {"temperature": 2.0}, "window": {"window": 8}}

    def settings(*argv):
        return settings_from_args(build_parser().parse_args(["--config", "c.yaml", "--out", "x.json", *argv]),
                                  config_variants)

    s = settings()
    assert s.variants == ("full", "mine", "window") and s.config == "c.yaml"
    assert s.overrides == {"full": {}, "mine": {"temperature": 2.0}, "window": {"window": 8}}
    s = settings("--variants", "mine", "--set", "mine.temperature=3", "--set", "window.global_tokens=[0]")
    assert s.variants == ("mine",)
    assert s.overrides["mine"] == {"temperature": 3} and s.overrides["window"] == {"window": 8, "global_tokens": [0]}


def test_a_bad_config_is_one_line_naming_the_key(own, capsys):
    (own / "bad.yaml").write_text(yaml.safe_dump({"variants": {"mine": {"from": "cmpown:CmpownAttention",
                                                                         "params": {"temperature": "hot"}}},
                                                  "tasks": {"listops": {}}}))
    assert cli_main(["compare", "--config", "bad.yaml", "--out", str(own / "x.json")]) == 2
    assert "'variants.mine.params.temperature' is 'hot'" in capsys.readouterr().err
    assert not (own / "x.json").exists()


@pytest.mark.slow
def test_the_readme_wrapper_runs_in_compare_config(tmp_path, monkeypatch, capsys):
    pytest.importorskip("local_attention")  # the peers extra (make test installs it)
    (tmp_path / "localmha.py").write_text(readme_wrapper())
    config = {"variants": {"localmha": {"from": "localmha:LocalMHAAttention", "params": {"window_size": 8}}},
              "tasks": {"listops": {}}}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # as the README says: from the folder of localmha.py (the workers' too)
    monkeypatch.delitem(sys.modules, "localmha", raising=False)
    out = tmp_path / "compare.json"
    assert cli_main(["compare", "--config", "mine.yaml", "--n", "32", "--heads", "2", "--head-dim", "8",
                     "--repeats", "1", "--warmup", "1", "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    sys.modules.pop("localmha", None)
    report = json.loads(out.read_text())
    (case,) = report["cases"]
    assert (case["variant"], case["peer"], case["status"]) == ("localmha", None, "ok")
    assert case["ours_params"] == {"window_size": 8} and case["ours"]["ok"] and case["ours"]["median_s"] > 0
    assert case["ours"]["label"] == "attnbench localmha" and case["ours"]["flops_fwd"] > 0
    assert report["settings"]["config"] == "mine.yaml"
    origin = report["variant_origins"]["localmha"]
    assert origin["file"] == "localmha.py" and origin["distribution"] is None
    assert "local-attention" in origin["uses"]
    stdout = capsys.readouterr().out
    assert "| localmha | window_size=8 | (no peer) | 32 | cpu |" in stdout
    assert "From outside this repository: localmha = localmha:LocalMHAAttention" in stdout
