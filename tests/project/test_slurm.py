"""The pipeline through a real SLURM scheduler: a one-node cluster on this machine (tests/slurm_local.py)
runs a tiny config submitted by `snakemake --profile profiles/slurm`.

Needs root and Debian's slurm-wlm and munge (installed with apt-get when sbatch is missing); skipped,
with the reason, where they cannot be installed or the daemons do not start.
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from attnbench.harness.results.records import read_record
from conftest import REPO
from slurm_local import LocalSlurm, install_reason
from snakemake_runs import TINY

VENV_BIN = Path(sys.executable).parent
LIMIT_S = 240  # the whole snakemake run; `timeout -k 10` ends it (and, after 10 s more, kills it)

# The tiny pipeline of test_pipeline_e2e with one seed, variant full only and no sweep: prepare_data x 2,
# train x 2, aggregate and report are 6 SLURM jobs (`all` runs on the submitting host). Distinct time
# limits and memory per rule group, to see that each reached its sbatch call.
RESOURCES = {"prepare": {"runtime_min": 4, "mem_mb": 1500}, "train": {"runtime_min": 6, "mem_mb": 1200},
             "distill": {"runtime_min": 6, "mem_mb": 1200}, "report": {"runtime_min": 3, "mem_mb": 800},
             "bench": {"runtime_min": 5, "mem_mb": 1000}}
EXPECTED = {"prepare_data": 2, "train": 2, "aggregate": 1, "report": 1}


@pytest.fixture(scope="module")
def local_slurm(tmp_path_factory, request):
    reason = install_reason()
    if reason:
        pytest.skip(f"no local SLURM: {reason}")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    request.addfinalizer(cluster.stop)  # registered before starting: a half-started cluster is stopped too
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"the local SLURM cluster did not start: {exc}")
    return cluster


def tiny_slurm_config() -> dict:
    cfg = copy.deepcopy(TINY)
    cfg.update(seeds=[0], variants={"full": {}}, bench={"enabled": False}, resources=RESOURCES)
    cfg.pop("distill", None)  # no students
    return cfg


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job` of a (recently) finished job as key -> value."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


@pytest.mark.slow
def test_tiny_pipeline_runs_through_slurm_with_the_slurm_profile(local_slurm, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(tiny_slurm_config()))
    cmd = ["timeout", "-k", "10", str(LIMIT_S),
           str(VENV_BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / "config.yaml"), "--profile", str(REPO / "profiles" / "slurm"),
           # local overrides of the profile: two jobs at a time on the 2-core node, fast status polls,
           # keep every job's SLURM log (to count them), a local filesystem
           "--jobs", "2", "--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs",
           "--latency-wait", "5"]
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the jobs inherit it
           "ATTNBENCH_SLURM_PARTITION": "debug", "ATTNBENCH_SLURM_ACCOUNT": "",  # the profile's placeholders
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=LIMIT_S + 30)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    accepted = local_slurm.submissions()
    slurm_logs = sorted((work / ".snakemake" / "slurm_logs").rglob("*.log"))
    print(f"\nSLURM run: {elapsed:.1f} s, rc {proc.returncode}, {len(submitted)} sbatch submissions "
          f"(snakemake), {len(accepted)} accepted by slurmctld, {len(slurm_logs)} job logs")
    detail = f"{out[-4000:]}\n{local_slurm.logs()}"
    assert proc.returncode == 0, f"rc {proc.returncode} after {elapsed:.0f} s (124/137: timed out)\n{detail}"

    records = sorted((work / "results" / "runs").rglob("record.json"))
    assert [str(p.relative_to(work / "results" / "runs")) for p in records] == [
        "image/full/seed0/record.json", "listops/full/seed0/record.json"]
    for path in records:
        rec = read_record(path)
        assert rec["status"] == "ok", rec.get("message")
    assert (work / "results" / "summary.csv").exists() and (work / "reports" / "index.html").exists()

    # every job went through the scheduler: one sbatch per job, each accepted by slurmctld and logged
    assert len(submitted) == sum(EXPECTED.values()), detail
    assert set(submitted) <= set(accepted), (submitted, accepted)
    assert len(slurm_logs) == len(submitted)
    assert {p.relative_to(work / ".snakemake" / "slurm_logs").parts[0] for p in slurm_logs} == {
        f"rule_{r}" for r in EXPECTED}
    # the config's per-rule resources reached sbatch (-t, --mem); no GPU on device cpu
    infos = [job_info(j) for j in submitted]
    limits = {(i.get("TimeLimit"), i.get("MinMemoryNode")) for i in infos}
    assert limits == {("00:04:00", "1500M"), ("00:06:00", "1200M"), ("00:03:00", "800M")}, limits
    assert not [i for i in infos if "gpu" in " ".join(i.values())], infos
