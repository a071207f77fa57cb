"""The execution profiles (profiles/workstation, profiles/slurm) plan config/lra.yaml's grid, and the
config's `resources:` reach each job: runtime and memory per rule group, one GPU on the GPU rules
when the device is not cpu. Dry runs only (no scheduler needed; tests/project/test_slurm.py submits for real)."""
from __future__ import annotations

import re

import pytest
import yaml

from attnbench.harness.config import task_resources, validate_config
from conftest import REPO
from snakemake_runs import empty_hf_cache, planned_jobs, snakemake

GPU_RULES = {"train", "distill", "bench_variant"}


def planned_resources(result) -> dict[str, list[dict[str, str]]]:
    """rule -> the `resources:` of each of its jobs in a dry run's job listing."""
    out = result.stdout + result.stderr
    found: dict[str, list[dict[str, str]]] = {}
    for rule, body in re.findall(r"^rule (\w+):\n((?:    .*\n)+)", out, re.M):
        line = re.search(r"^    resources: (.*)$", body, re.M)
        pairs = line.group(1).split(", ") if line else []
        job = dict(p.split("=", 1) for p in pairs)
        task = re.search(r"^    wildcards: .*\btask=(\w+)", body, re.M)
        if task:
            job["_task"] = task.group(1)
        found.setdefault(rule, []).append(job)
    return found


def dry_run(tmp_path, profile: str, **overrides):
    config = yaml.safe_load((REPO / "config" / "lra.yaml").read_text())
    config.update(overrides)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / profile), timeout=180,
                       env={**empty_hf_cache(tmp_path),
                            "ATTNBENCH_SLURM_PARTITION": "gpu", "ATTNBENCH_SLURM_ACCOUNT": "proj"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["workstation", "slurm"])
def test_profile_plans_the_lra_grid_with_a_gpu_per_training_job(tmp_path, profile):
    result = dry_run(tmp_path, profile)
    assert f"Using profiles {REPO / 'profiles' / profile}" in result.stdout + result.stderr
    lra = yaml.safe_load((REPO / "config" / "lra.yaml").read_text())
    tasks, variants, students = len(lra["tasks"]), len(lra["variants"]), len(lra["distill"]["students"])
    jobs = planned_jobs(result)
    assert jobs["prepare_data"] == tasks and jobs["distill"] == tasks * students and jobs["train"] == tasks * variants
    assert jobs["bench_variant"] == variants
    res = planned_resources(result)
    config = validate_config(lra)
    groups = {"prepare_data": "prepare", "train": "train", "distill": "distill", "bench_variant": "bench",
              "aggregate": "report", "bench_aggregate": "report", "report": "report"}
    for rule, group in groups.items():
        assert len(res[rule]) == jobs[rule]
        for job in res[rule]:
            # a task's own resources (Path-X's longer limit) over the group's, for its prepare/train/distill jobs
            want = task_resources(config, job["_task"], group) if "_task" in job else config["resources"][group]
            assert (job["runtime"], job["mem_mb"]) == (str(want["runtime_min"]), str(want["mem_mb"])), (rule, job)
            assert job.get("gpu") == ("1" if rule in GPU_RULES else None), (rule, job)
    pathx_train = [job for job in res["train"] if job["_task"] == "pathx"]
    assert pathx_train and {job["runtime"] for job in pathx_train} == {"2400"}
    assert {job["runtime"] for job in res["train"] if job["_task"] != "pathx"} == {"120"}
    if profile == "slurm":  # the profile's defaults, with the placeholders taken from the environment
        job = res["train"][0]
        assert (job["slurm_partition"], job["slurm_account"], job["tasks_per_gpu"]) == ("gpu", "proj", "0")
        assert job["cpus_per_task"] == "2"  # the config's threads (4), capped by the test's --cores 2


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["workstation", "slurm"])
def test_cpu_device_asks_for_no_gpu(tmp_path, profile):
    result = dry_run(tmp_path, profile, device="cpu")
    res = planned_resources(result)
    assert res["train"] and res["distill"] and res["bench_variant"]
    assert not [(rule, job) for rule, jobs in res.items() for job in jobs if "gpu" in job]


@pytest.mark.slow
def test_auto_device_asks_for_a_gpu(tmp_path):
    res = planned_resources(dry_run(tmp_path, "workstation", device="auto"))
    assert {job.get("gpu") for rule in GPU_RULES for job in res[rule]} == {"1"}
    assert all("gpu" not in job for job in res["prepare_data"] + res["report"])


def test_default_resources_are_filled_from_the_schema():
    from attnbench.harness.config import validate_config
    from attnbench.harness.core import shipped_files

    config = validate_config({"variants": {"full": {}}, "tasks": {"listops": {}},
                              "resources": {"train": {"runtime_min": "600"}}})
    schema = yaml.safe_load(shipped_files.config_schema().read_text())["properties"]["resources"]["properties"]
    assert set(config["resources"]) == set(schema) == {"prepare", "train", "distill", "pretrain", "bench",
                                                       "report"}
    for group, prop in schema.items():
        expected = {key: p["default"] for key, p in prop["properties"].items()}
        if group == "train":
            expected["runtime_min"] = 600  # given (as text, as `--config` passes it), kept as a number
        assert config["resources"][group] == expected, group
        assert prop["description"] and all(p["description"] for p in prop["properties"].values())


def test_a_task_overrides_the_resources_of_its_own_jobs():
    config = validate_config({"variants": {"full": {}}, "tasks": {
        "listops": {"resources": {"train": {"runtime_min": 900}}}, "text": {}},
        "resources": {"train": {"runtime_min": 60, "mem_mb": 3000}}})
    assert task_resources(config, "listops", "train") == {"runtime_min": 900, "mem_mb": 3000}
    assert task_resources(config, "text", "train") == {"runtime_min": 60, "mem_mb": 3000}
    assert task_resources(config, "listops", "distill") == config["resources"]["distill"]
    from attnbench.harness.config import ConfigError

    with pytest.raises(ConfigError, match="unknown key 'tasks.listops.resources.bench'"):
        validate_config({"variants": {"full": {}}, "tasks": {"listops": {"resources": {"bench": {}}}}})


def test_unknown_resources_key_is_rejected():
    from attnbench.harness.config import ConfigError, validate_config

    with pytest.raises(ConfigError) as info:
        validate_config({"variants": {"full": {}}, "tasks": {"listops": {}},
                         "resources": {"train": {"runtime": 60}, "bench": {"mem_mb": 0}}})
    assert "unknown key 'resources.train.runtime'" in str(info.value)
    assert "'resources.bench.mem_mb' is 0" in str(info.value)
