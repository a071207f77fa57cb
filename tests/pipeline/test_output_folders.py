"""Two configs with output folders of their own (`results_dir`, `reports_dir`) run in one folder without
touching each other's results; the prepared data is shared."""
from __future__ import annotations

import copy
import hashlib

import pytest
import yaml

from conftest import TINY_CONFIG
from snakemake_runs import snakemake


def config_in(folder: str, steps: int) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config.update(results_dir=f"{folder}/results", reports_dir=f"{folder}/reports", bench={"enabled": False})
    config["train"]["steps"] = steps
    return config


def digests(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_configs_with_their_own_folders_run_side_by_side(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(config_in("ag", steps=10)))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(config_in("ng", steps=6)))
    for name in ("a", "b"):
        (tmp_path / "config.yaml").write_text((tmp_path / f"{name}.yaml").read_text())
        if name == "b":
            before = digests(tmp_path / "ag")
        result = snakemake(tmp_path)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert digests(tmp_path / "ag") == before  # b's run left a's results, reports and logs as they were
    invocations = set()
    for folder, steps in (("ag", 10), ("ng", 6)):
        record = yaml.safe_load((tmp_path / folder / "results/runs/listops/full/seed0/record.json").read_text())
        assert record["training"]["steps_done"] == steps
        invocations.add(record["environment"]["invocation"])
        assert (tmp_path / folder / "reports/index.html").exists()
        assert (tmp_path / folder / "results/summary.csv").exists()
        assert (tmp_path / folder / "results/logs/train/listops/full/seed0.log").exists()
    assert None not in invocations and len(invocations) == 2  # each snakemake's jobs carry its invocation
    assert not (tmp_path / "results").exists() and not (tmp_path / "reports").exists()
    assert len(list((tmp_path / "data/listops").iterdir())) == 1  # one data set, prepared once for both
    (tmp_path / "config.yaml").write_text((tmp_path / "a.yaml").read_text())
    again = snakemake(tmp_path, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
