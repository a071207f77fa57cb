# Config validation (before any job starts) and the helpers the rules use.
import json
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError

from attnbench.harness.bench.files import sweep_param
from attnbench.harness.bench.settings import bench_settings, bench_variants
from attnbench.harness.config import (
    ConfigError,
    planned_runs,
    resolve_run,
    task_data_params,
    task_resources,
    validate_config,
)
from attnbench.harness.core import paths
from attnbench.harness.results.set_aside import readable
from attnbench.tasks.base import build_task, data_key
from snakemake.logging import logger

try:
    validate_config(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None


def rule_resources(group, gpu=False, per_task=False):
    """A rule's `resources:` from the config's `resources.<group>` (config/schema.yaml): `runtime` in
    minutes and `mem_mb`, plus `gpu=1` on a GPU rule (train, distill, bench_variant) when `device` is not
    cpu (cuda or auto). Data preparation, aggregation and the report never ask for a GPU. `per_task`: the
    rule has a {task} wildcard, and `tasks.<task>.resources.<group>` overrides the group's values."""
    settings = config["resources"][group]
    if per_task:
        resources = {"runtime": lambda wc: task_resources(config, wc.task, group)["runtime_min"],
                     "mem_mb": lambda wc: task_resources(config, wc.task, group)["mem_mb"]}
    else:
        resources = {"runtime": settings["runtime_min"], "mem_mb": settings["mem_mb"]}
    if gpu and config["device"] != "cpu":
        resources["gpu"] = 1
    return resources


# jobs call `attnbench` from the environment running snakemake, even when it is not activated
shell.prefix(f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; ")


def planned_tasks():
    """The configured tasks minus the optional ones whose source data is missing. Said when the
    workflow is planned (dry runs too): which source files each task needs and cannot find, with
    how to get them; tasks whose data is already prepared are not checked."""
    planned = []
    for task, settings in config["tasks"].items():
        params = task_data_params(config, task)
        prepared = paths.dataset_file(task, data_key(task, params)).exists()
        problems = [] if prepared else build_task(task, params).missing_sources()
        if problems and settings.get("optional"):
            logger.warning(f"attnbench: task {task!r} is left out (optional, its data is missing): {'; '.join(problems)}")
            continue
        for problem in problems:
            logger.warning(f"attnbench: data of task {task!r} is missing (its prepare_data job will fail "
                           f"until it is there): {problem}")
        planned.append(task)
    return planned


TASKS = planned_tasks()
VARIANTS = list(config["variants"])
# every run of the config: (task, variant, seed, method); rule train makes those trained from
# labels, rules/distill.smk the others
RUNS = planned_runs(config, TASKS)


def set_aside_unreadable_records():
    """A run whose record.json cannot be read (truncated, not UTF-8, not a record) would block the
    aggregation and never be trained again: move it to results/set_aside/ (with the reason) before
    the jobs are planned, so this run plans its training again. Dry runs too: nothing is deleted."""
    _, aside = readable([run.record for run in RUNS if run.record.exists()])
    for entry in aside:
        logger.warning(f"attnbench: set aside the unreadable {entry['record']} (moved to {entry['moved_to']}): "
                       f"{entry['reason']}; its run is planned again")


set_aside_unreadable_records()


def one_of(names):
    """A wildcard constraint matching exactly these names (nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


wildcard_constraints:
    task=one_of(TASKS),
    seed=r"\d+",
    key=r"[0-9a-f]{10}",


def dataset_key(task):
    return data_key(task, task_data_params(config, task))


def get_dataset(wildcards):
    return str(paths.dataset_file(wildcards.task, dataset_key(wildcards.task)))


def get_data_json(wildcards):
    return json.dumps(task_data_params(config, wildcards.task), sort_keys=True)


def run_json(method):
    """A rule's param: the resolved run config of its (task, variant, seed) trained by ``method``."""

    def get(wildcards):
        run = resolve_run(config, wildcards.task, wildcards.variant, int(wildcards.seed), method)
        return json.dumps(run, sort_keys=True)

    return get


def output_dir(wildcards, output):
    """A rule's param: the folder of its (first) output, e.g. a run's folder."""
    return os.path.dirname(output[0])


def get_records(wildcards=None):
    return [str(run.record) for run in RUNS]


# The efficiency sweep (rules/bench.smk): the variants it measures, none when `bench.enabled` is false.
BENCH_VARIANTS = bench_variants(config) if bench_settings(config).enabled else []


def get_bench_files(wildcards=None):
    return [str(paths.bench_file(v)) for v in BENCH_VARIANTS]


def get_sweep_json(wildcards):
    """One variant's sweep plan (device as configured, settings, the variant's parameters): a param, so
    changing `bench:` re-runs that variant's sweep. The job expands it into cases where it runs: `device:
    auto` is resolved on the node that has (or lacks) the GPU, not on the one planning."""
    return sweep_param(config, wildcards.variant, paths.BENCH / ".work")


def get_report_bench(wildcards):
    """The sweep's table when the sweep is on (the report then shows it beside training throughput)."""
    return {"bench": "results/bench.csv"} if BENCH_VARIANTS else {}


def bench_option(wildcards, input):
    return f"--bench {input.bench}" if "bench" in input.keys() else ""
