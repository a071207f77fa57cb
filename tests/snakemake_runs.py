"""Running the pipeline in tests: snakemake on a temporary folder, a tiny config, and what a dry run plans.

Shared by the end-to-end tests (tests/pipeline/), the profile and SLURM tests (tests/project/) and the
bring-your-own-variant test (tests/harness/conformance/)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SNAKEMAKE = Path(sys.executable).parent / "snakemake"

TINY = {
    "seeds": [0, 1],
    "variants": {"full": {}},
    "distill": {"students": {"full": {}}},  # distilled[full]: a 1-layer student of each full run
    "model": {"layers": 2, "dim": 16, "heads": 2, "mlp_dim": 32},
    "train": {"steps": 30, "batch_size": 16, "eval_every": 10, "warmup_steps": 5},
    "tasks": {
        "listops": {"data": {"n_train": 300, "n_val": 60, "n_test": 60, "min_length": 2,
                             "max_length": 24, "max_depth": 3, "max_args": 4}},
        "image": {"data": {"source": "digits", "max_train": 300}, "train": {"steps": 20}},
    },
    # the efficiency sweep of full (the student has full's layers), at two short lengths
    "bench": {"lengths": [32, 64], "modes": ["forward_backward"], "scopes": ["layer"], "warmup": 1, "repeats": 2,
              "backends": {"full": ["default", "math"]}},
}


def snakemake(workdir: Path, *args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    # no time estimate at the start (a calibration per pipeline: seconds each); tests of it set ATTNBENCH_ESTIMATE=1
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                               "ATTNBENCH_ESTIMATE": "0", **(env or {})})


def empty_hf_cache(tmp_path: Path) -> dict[str, str]:
    """Environment pointing every Hugging Face cache at an empty folder: nothing is found or fetched."""
    home = tmp_path / "hf_home"
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_DATASETS_CACHE": str(home / "datasets")}


def planned_wildcards(result: subprocess.CompletedProcess, rule: str) -> list[dict[str, str]]:
    """The wildcards of each job of ``rule`` in a dry run's job listing."""
    out = result.stdout + result.stderr
    jobs = re.findall(rf"^rule {rule}:\n((?:    .*\n)+)", out, re.M)
    found = [re.search(r"^    wildcards: (.*)$", job, re.M) for job in jobs]
    return [dict(kv.split("=", 1) for kv in m.group(1).split(", ")) for m in found if m]


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    out = result.stdout + result.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}
