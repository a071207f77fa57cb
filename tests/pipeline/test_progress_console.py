"""The pipeline's progress on the console (rules/progress.smk): when its jobs start, the expected wall time
and the plan of the invocation; after each training job, the runs done of the invocation's, the elapsed time and
an ETA. A dry run plans nothing."""
from __future__ import annotations

import re

import pytest
import yaml

from snakemake_runs import TINY, snakemake

CONFIG = {**TINY, "variants": {"full": {}}, "distill": {"students": {}}, "bench": {"enabled": False},
          "tasks": {"listops": TINY["tasks"]["listops"]}}
RECORDS = [f"results/runs/listops/full/seed{seed}/record.json" for seed in (0, 1)]


@pytest.mark.slow
def test_the_console_shows_runs_done_of_the_invocations_with_an_eta(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    plan = tmp_path / "results" / ".progress" / "plan.json"
    dry = snakemake(tmp_path, "-n", *RECORDS)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert not plan.exists() and "runs done" not in dry.stdout + dry.stderr
    result = snakemake(tmp_path, *RECORDS, env={"ATTNBENCH_ESTIMATE": "1"})  # the two runs (and data), not the report
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert re.search(r"attnbench: 2 training runs and 0 sweep jobs to do; expected wall time on this machine: ~\d+ ",
                     out), out[-3000:]
    done = re.findall(r"^attnbench: (\d) of 2 runs done, elapsed \d+:\d\d, ETA \d+:\d\d$", out, re.M)
    assert len(done) == 2 and max(done) == "2", out[-3000:]  # one line per job (side by side: both may say 2)
    assert plan.exists()


@pytest.mark.slow
def test_without_an_estimate_the_progress_lines_still_count_the_runs(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    result = snakemake(tmp_path, *RECORDS)  # ATTNBENCH_ESTIMATE=0, as every other pipeline test runs
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "no time estimate for this run (RuntimeError: ATTNBENCH_ESTIMATE=0)" in out
    done = re.findall(r"^attnbench: (\d) of 2 runs done, elapsed \d+:\d\d, ETA \d+:\d\d$", out, re.M)
    assert len(done) == 2, out[-3000:]
