"""Your own attention, from outside the repository: a config's `from: package.module:Class`, an
installed package's `attnbench.variants` entry point, `attnbench new-variant` and
`attnbench check-variant`, and such a variant through the whole pipeline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from attnbench.harness.cli import main as cli_main
from attnbench.harness.config import ConfigError, resolve_run, validate_config
from attnbench.harness.conformance.template import write_template
from attnbench.variants import VARIANTS
from conftest import REPO, tiny_config
from snakemake_runs import snakemake

ATTNBENCH = str(Path(sys.executable).parent / "attnbench")

#: a class whose padding leaks (it ignores the mask) and that claims linear memory it does not have
LEAKY = '''
import math
from attnbench.variants import Attention


class LeakyAttention(Attention):
    """Softmax attention that forgets the padding mask."""

    complexity = "O(N^2)"
    linear_memory = True  # not true: it builds the N x N scores

    def attend(self, q, k, v, key_padding_mask):
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        return scores.softmax(-1) @ v

    def flops(self, batch, seq_len):
        return 4 * batch * self.heads * seq_len * seq_len * self.head_dim + self.projection_flops(batch, seq_len)
'''


def _attnbench(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "ATTNBENCH_VARIANTS"}
    return subprocess.run([ATTNBENCH, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**environ, **(env or {})})


@pytest.mark.slow
def test_new_variant_passes_check_variant_unchanged_from_its_folder(tmp_path):
    new = _attnbench("new-variant", "demo", cwd=tmp_path)
    assert new.returncode == 0, new.stderr
    assert (tmp_path / "demo.py").exists() and "DemoAttention" in new.stdout
    check = _attnbench("check-variant", "demo:DemoAttention", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    lines = [line.split() for line in check.stdout.splitlines() if line.startswith("  ")]
    assert {line[0] for line in lines} <= {"PASS", "SKIP"} and len(lines) == 11
    assert "11 of 11 checks passed or do not apply" in check.stdout
    again = _attnbench("new-variant", "demo", cwd=tmp_path)
    assert again.returncode == 2 and "exists" in again.stderr  # nothing overwritten


@pytest.mark.slow
def test_check_variant_names_what_fails(tmp_path):
    (tmp_path / "leaky.py").write_text(LEAKY)
    check = _attnbench("check-variant", "leaky:LeakyAttention", cwd=tmp_path)
    assert check.returncode == 1
    status = {line.split("  ")[2].strip(): line.split()[0] for line in check.stdout.splitlines()
              if line.startswith("  ")}
    assert status["padding invariance"] == status["padding per element"] == "FAIL"
    assert status["linear memory"] == "FAIL" and status["gradients"] == "PASS"
    assert "failed: padding invariance, padding per element, linear memory" in check.stdout
    missing = _attnbench("check-variant", "nowhere:Nothing", cwd=tmp_path)
    assert missing.returncode == 2 and "cannot import module 'nowhere'" in missing.stderr


def test_new_variant_refuses_a_name_that_is_not_a_module_name(tmp_path):
    assert cli_main(["new-variant", "my-attention", "--dir", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())


@pytest.fixture
def own_variant(tmp_path, monkeypatch):
    """A module `ownattn` in a temporary folder on sys.path, holding the template's class."""
    write_template("ownattn", tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ATTNBENCH_VARIANTS", "")  # recorded, so what validation exports is undone after the test
    return tmp_path


def test_a_config_brings_a_variant_with_from(own_variant, monkeypatch):
    config = validate_config(tiny_config(variants={"full": {}, "mine": {"from": "ownattn:OwnattnAttention",
                                                                        "params": {"temperature": 2.0}}}))
    assert config["variants"]["mine"] == {"temperature": 2.0}
    assert config["variant_sources"] == {"mine": "ownattn:OwnattnAttention"}
    assert VARIANTS.source("mine") == "ownattn:OwnattnAttention" and VARIANTS.source("full") is None
    assert "mine=ownattn:OwnattnAttention" in os.environ["ATTNBENCH_VARIANTS"]  # for the jobs it starts
    run = resolve_run(config, "listops", "mine", 0)
    assert run["variant"] == {"name": "mine", "params": {"temperature": 2.0}, "source": "ownattn:OwnattnAttention"}
    assert "source" not in resolve_run(config, "listops", "full", 0)["variant"]  # built-in runs' hashes unchanged
    assert validate_config(json.loads(json.dumps(config))) == config  # a validated config validates again
    with pytest.raises(ConfigError, match=r"'variants.mine.params.temperature' is 'hot'"):
        validate_config(tiny_config(variants={"mine": {"from": "ownattn:OwnattnAttention",
                                                       "params": {"temperature": "hot"}}}))


@pytest.mark.parametrize(("entry", "message"), [
    ({"from": "ownattn:Missing"}, "module 'ownattn' has no 'Missing'"),
    ({"from": "json:dumps"}, "not a subclass of attnbench.variants.base.Attention"),
    ({"from": "nosuchmodule:X"}, "cannot import module 'nosuchmodule'"),
    ({"from": "ownattn"}, "not of the form 'package.module:ClassName'"),
    ({"from": "ownattn:OwnattnAttention", "window": 3}, "move 'window' under 'params'"),
])
def test_a_bad_from_is_refused_with_the_reason(own_variant, entry, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(tiny_config(variants={"full": {}, "other": entry}))


def test_a_from_variant_cannot_take_a_built_in_name(own_variant):
    with pytest.raises(ConfigError, match="'full' .*taken by attnbench.variants"):
        validate_config(tiny_config(variants={"full": {"from": "ownattn:OwnattnAttention"}}))


@pytest.mark.slow
def test_an_installed_packages_entry_point_registers_its_variant(tmp_path):
    """A package that declares [project.entry-points."attnbench.variants"] is found once installed:
    here a dist-info folder with entry_points.txt on PYTHONPATH, as pip would leave it."""
    write_template("epattn", tmp_path)
    info = tmp_path / "epattn-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: epattn\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[attnbench.variants]\nfrom_ep = epattn:EpattnAttention\n")
    listed = _attnbench("list", cwd=tmp_path.parent, env={"PYTHONPATH": str(tmp_path)})
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith("  from_ep:"))
    assert "(from epattn:EpattnAttention)" in line
    assert "temperature (number, default 1.0)" in listed.stdout


@pytest.mark.slow
def test_an_out_of_tree_variant_runs_through_the_pipeline(tmp_path):
    write_template("zooattn", tmp_path)  # the current folder of every job: importable from there
    config = {
        "seeds": [0],
        "variants": {"full": {}, "mine": {"from": "zooattn:ZooattnAttention", "params": {"temperature": 1.5}}},
        "model": {"layers": 1, "dim": 16, "heads": 2, "mlp_dim": 32},
        "train": {"steps": 10, "batch_size": 16, "eval_every": 5, "warmup_steps": 2},
        "tasks": {"listops": {"data": {"n_train": 200, "n_val": 40, "n_test": 40, "min_length": 2,
                                       "max_length": 24, "max_depth": 3}}},
        "bench": {"lengths": [32], "modes": ["forward"], "scopes": ["layer"], "warmup": 1, "repeats": 2,
                  "backends": {}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {"ATTNBENCH_VARIANTS": ""}
    result = snakemake(tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "results" / "summary.csv")
    mine = summary[summary["variant"] == "mine"]
    assert len(mine) == 1 and mine["status"].iloc[0] == "ok"
    record = json.loads((tmp_path / "results" / "runs" / "listops" / "mine" / "seed0" / "record.json").read_text())
    assert record["config"]["variant"]["source"] == "zooattn:ZooattnAttention"
    bench = pd.read_csv(tmp_path / "results" / "bench.csv")
    assert set(bench[bench["status"] == "ok"]["impl"]) == {"full", "mine"}
    md = (tmp_path / "reports" / "summary.md").read_text()
    assert "mine" in md and "mine" in (tmp_path / "reports" / "index.html").read_text()


def test_the_zoo_config_holds_every_row_of_lra_table_1_and_nystromformer(monkeypatch):
    """config/zoo.yaml: each published model once, two of them built-in classes under a second name."""
    from attnbench.harness.config import load_config
    from attnbench.harness.report.lra_published import OTHER_PUBLISHED, PUBLISHED

    monkeypatch.setenv("ATTNBENCH_VARIANTS", "")
    config = load_config(REPO / "config" / "zoo.yaml")
    published = [VARIANTS.get(v).cls.published_as(params) for v, params in config["variants"].items()]
    assert sorted(published) == sorted([*PUBLISHED, *OTHER_PUBLISHED])
    assert config["variant_sources"] == {"performer": "attnbench.variants.linear:LinearAttention",
                                         "sparse_strided": "attnbench.variants.sparse:SparseAttention"}
    assert VARIANTS.get("performer").config is VARIANTS.get("linear").config  # its parameters are linear's
