# Config validation (before any job starts) and the helpers the rules use.
import json
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError

from harness import paths
from harness.config import ConfigError, resolve_run, task_data_params, validate_config
from tasks.base import data_key

try:
    validate_config(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

# jobs call `attnbench` from the environment running snakemake, even when it is not activated
shell.prefix(f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; ")
TASKS = list(config["tasks"])
VARIANTS = list(config["variants"])
SEEDS = [int(s) for s in config["seeds"]]


wildcard_constraints:
    task="|".join(TASKS),
    variant="|".join(VARIANTS),
    seed=r"\d+",
    key=r"[0-9a-f]{10}",


def dataset_key(task):
    return data_key(task, task_data_params(config, task))


def get_dataset(wildcards):
    return str(paths.dataset_file(wildcards.task, dataset_key(wildcards.task)))


def get_data_json(wildcards):
    return json.dumps(task_data_params(config, wildcards.task), sort_keys=True)


def get_run_json(wildcards):
    run = resolve_run(config, wildcards.task, wildcards.variant, int(wildcards.seed))
    return json.dumps(run, sort_keys=True)


def get_run_dir(wildcards):
    return str(paths.run_dir(wildcards.task, wildcards.variant, int(wildcards.seed)))


def get_records(wildcards=None):
    return [str(paths.run_dir(t, v, s) / "record.json") for t in TASKS for v in VARIANTS for s in SEEDS]
