# Config validation (before any job starts), planning (before the jobs are planned: damaged records,
# datasets, teacher checkpoints and sweep JSONs are set aside and made again, a finished run of a killed
# snakemake keeps its record) and the helpers the rules use.
import json
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.persistence.file import FilePersistence
from snakemake.settings.enums import PersistenceBackend

from attnbench.harness.bench.files import SweepFileError, read_sweep, sweep_param
from attnbench.harness.bench.settings import bench_settings, bench_variants
from attnbench.harness.config import (
    ConfigError,
    plan_hashes,
    planned_runs,
    resolve_run,
    run_hash,
    task_data_params,
    task_resources,
    validate_config,
)
from attnbench.harness.config.runs import final_run, missing_data, task_kind
from attnbench.harness.config.runs import planned_tasks as planned_config_tasks
from attnbench.harness.config.tuned_runs import tuning_on
from attnbench.harness.core import locks, paths
from attnbench.harness.results.environment import INVOCATION_VAR, invocation_id
from attnbench.harness.results.records import RunKey
from attnbench.harness.results.set_aside import (
    keep_prepared_time,
    move_aside_under,
    readable,
    set_aside,
    torch_file_problem,
)
from attnbench.harness.run.train import RUN_LOCK
from attnbench.tasks.base import FORMAT_VERSION, data_key
from snakemake.logging import logger

try:
    validate_config(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

# This invocation's id, which every job inherits: a record says which invocation measured it (the report flags cost
# comparisons across invocations). Jobs started by a cluster's own snakemake get it from the submitting one.
if workflow.is_main_process:
    os.environ[INVOCATION_VAR] = invocation_id()

# Where this config's outputs go (`results_dir`, `reports_dir`): configs with folders of their own run side by side
# in one checkout. The prepared data (data/) is shared: a data set's folder is named by its settings' hash. The
# job logs go to logs/ for the default folders, else into the results folder (logs/ beside it would mix configs).
RESULTS_DIR, REPORTS_DIR = os.path.normpath(config["results_dir"]), os.path.normpath(config["reports_dir"])
LOGS_DIR = "logs" if RESULTS_DIR == "results" else f"{RESULTS_DIR}/logs"
paths.use_folders(RESULTS_DIR, REPORTS_DIR)


def in_results(path):
    return f"{RESULTS_DIR}/{path}"


def in_reports(path):
    return f"{REPORTS_DIR}/{path}"


def in_logs(path):
    return f"{LOGS_DIR}/{path}"


def rule_resources(group, gpu=False, per_task=False, task_of=None):
    """A rule's `resources:` from the config's `resources.<group>` (config/schema.yaml): `runtime` in
    minutes and `mem_mb`, plus `gpu=1` on a GPU rule (train, distill, pretrain, bench_variant) when `device`
    is not cpu (cuda or auto). Data preparation, aggregation and the report never ask for a GPU. `per_task`: the
    rule has a {task} wildcard, and `tasks.<task>.resources.<group>` overrides the group's values; `task_of`
    gives the task from the wildcards where the {task} wildcard is not a task's name (prepare_data's)."""
    settings = config["resources"][group]
    if per_task:
        task_of = task_of or (lambda wc: wc.task)
        resources = {"runtime": lambda wc: task_resources(config, task_of(wc), group)["runtime_min"],
                     "mem_mb": lambda wc: task_resources(config, task_of(wc), group)["mem_mb"]}
    else:
        resources = {"runtime": settings["runtime_min"], "mem_mb": settings["mem_mb"]}
    if gpu and config["device"] != "cpu":
        resources["gpu"] = 1
    return resources


# jobs call `attnbench` from the environment running snakemake, even when it is not activated
shell.prefix(f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; ")


def planned_tasks():
    """The configured tasks as runs name them (each of a task's `lengths`: task@length) minus the optional ones
    whose source data is missing. Said when the workflow is planned (dry runs too): which source files each
    task needs and cannot find, with how to get them; tasks whose data is already prepared are not checked."""
    missing = missing_data(config)
    planned, left_out = planned_config_tasks(config, missing)
    for task in left_out:
        logger.warning(f"attnbench: task {task!r} is left out (optional, its data is missing): "
                       f"{'; '.join(missing[task])}")
    for task in planned:
        for problem in missing[task]:
            logger.warning(f"attnbench: data of task {task!r} is missing (its prepare_data job will fail "
                           f"until it is there): {problem}")
    return planned


TASKS = planned_tasks()
#: the registered tasks of TASKS (the data each prepares: one data set per task instance and length)
BASE_TASKS = list(dict.fromkeys(task_kind(config, task) for task in TASKS))
VARIANTS = list(config["variants"])
# every run of the config: (task, variant, seed, method, trial); rule train makes the final runs trained from
# labels, rules/distill.smk the distilled ones, rules/tune.smk the tuning trials
RUNS = planned_runs(config, TASKS)
FINAL_RUNS = [run for run in RUNS if run.trial is None]


def set_aside_unreadable_records():
    """A run whose record.json cannot be read (truncated, not UTF-8, not a record) would block the
    aggregation and never be trained again: move it to results/set_aside/ (with the reason) before
    the jobs are planned, so this run plans its training again. Dry runs too: nothing is deleted.
    Returns the records that read, by path."""
    good, aside = readable([run.record for run in RUNS if run.record.exists()])
    for entry in aside:
        logger.warning(f"attnbench: set aside the unreadable {entry['record']} (moved to {entry['moved_to']}): "
                       f"{entry['reason']}; its run is planned again")
    return dict(good)


#: the planned runs' records that read and validate, by path
RECORDS = set_aside_unreadable_records()


def set_aside_teachers_without_checkpoint():
    """A planned student's teacher whose record names a best checkpoint that is missing or cannot be read
    (truncated) would fail every student: its record is set aside (with the reason) so that this run
    trains the teacher again, and then, by the DAG edge (rules/distill.smk), its students."""
    teachers = {RunKey(run.task, config["distill"]["teacher"], run.seed) for run in RUNS if run.method == "distill"}
    for teacher in sorted(teachers):
        record = RECORDS.get(teacher.record)
        problem = checkpoint_problem(teacher.record, record) if record else None
        if problem is None:
            continue
        del RECORDS[teacher.record]
        moved = set_aside(teacher.record, f"its best checkpoint {problem}")
        logger.warning(f"attnbench: set aside {teacher.record} (moved to {moved}): its best checkpoint {problem}; "
                       "the teacher is trained again, and then its students")


def checkpoint_problem(path, record):
    """What is wrong with the best checkpoint a run's record (at ``path``) names: missing or damaged (None: it
    reads, or the record names none)."""
    best = record["training"]["checkpoint"]
    return torch_file_problem(Path(path).parent / best) if best else None


set_aside_teachers_without_checkpoint()


def snakemake_markers():
    """Snakemake's own note of the outputs whose job started and never finished (`.snakemake/incomplete/`,
    which `--rerun-incomplete` re-runs), through its file persistence: the planning below clears a note a
    finished run does not deserve and adds one to a damaged prepared dataset. None where planning leaves it
    alone: in the snakemake process of a single job (a cluster job) or with another persistence backend."""
    if not workflow.is_main_process or workflow.workflow_settings.persistence_backend != PersistenceBackend.FILE:
        return None
    return FilePersistence(nolock=True)


MARKERS = snakemake_markers()


def keep_finished_orphans():
    """A snakemake killed on its own (kill -9) leaves its training jobs running, and their outputs noted
    as incomplete: after `snakemake --unlock`, `--rerun-incomplete` would delete each record they went on
    to write and train the run again from step 0. A planned run whose record reads, is of the run's
    current config (its config hash) and whose run folder's lock is free (the trainer writes the record
    as its last act, then exits) finished: its note is cleared and its record kept. A trainer still
    holding the lock is left as it was: its run is planned again and that job refuses, naming the pid.
    Dry runs (and `--unlock`) too: the note is false either way."""
    if MARKERS is None:
        return
    for key in sorted(MARKERS._filter_incomplete_keys([str(path) for path in RECORDS])):
        run = next(run for run in RUNS if str(run.record) == key)
        current = run_hash(config, run)
        if current is None or RECORDS[run.record]["config_hash"] != current:
            continue  # trained with other settings (or its tuning not selected yet): out of date, trained again
        try:
            lock = locks.try_lock(run.dir / RUN_LOCK, info={"run_id": run.run_id, "checked_by": "snakemake planning"})
        except locks.LockFileError:
            continue  # an unusable lock file: its job says so
        if lock is None:
            continue
        locks.release(lock)
        MARKERS._unmark_incomplete(key)
        logger.warning(f"attnbench: kept {key}: its job, started by a snakemake that was stopped, finished "
                       "after it (its record is complete and no process holds its run folder)")


keep_finished_orphans()


def set_aside_stale_unnoted_records():
    """Snakemake re-runs a job whose params changed only if it holds a note (metadata) of the job that
    made its output; a record without one (kept above from a job whose snakemake was killed, or copied in)
    would stay, out of date, after a change to its run's settings. Such a record, of a config other than
    its run's current one (config hash), is set aside (with the reason), so that this run trains it again."""
    if MARKERS is None:
        return
    for run in RUNS:
        record = RECORDS.get(run.record)
        if record is None or MARKERS._read_record(str(run.record)) is not None:
            continue
        current = run_hash(config, run)
        if current is None or record["config_hash"] == current:
            continue  # (None: a tuned run whose selection is made again in this run; Snakemake's note decides)
        del RECORDS[run.record]
        reason = (f"made with other settings (config hash {record['config_hash']}, the run's is now {current}) "
                  "and Snakemake holds no note of the job that made it, so it would not train it again")
        moved = set_aside(run.record, reason)
        logger.warning(f"attnbench: set aside {run.record} (moved to {moved}): {reason}; its run is planned again")


set_aside_stale_unnoted_records()


def one_of(names):
    """A wildcard constraint matching exactly these names (nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


wildcard_constraints:
    task=one_of(TASKS),
    seed=r"\d+",
    key=r"[0-9a-f]{10}",


def dataset_key(task):
    return data_key(task_kind(config, task), task_data_params(config, task))


def dataset_path(task):
    """The prepared data of a task as runs name it (a named instance, task@length: its registered task's folder,
    its own key)."""
    return paths.dataset_file(task_kind(config, task), dataset_key(task))


#: the data settings of each prepared data set, by (registered task, data key): what prepare_data is given
DATA_PARAMS = {(task_kind(config, task), dataset_key(task)): task_data_params(config, task) for task in TASKS}
#: a task (as runs name it) of each prepared data set, by (registered task, data key): whose `resources` it has
DATA_TASK = {(task_kind(config, task), dataset_key(task)): task for task in reversed(TASKS)}


def repair_damaged_datasets():
    """A planned task's prepared data that cannot be read (truncated, not a torch file, other settings) would
    fail every run of the task, and re-running them would delete their records first. It is set aside under
    data/set_aside/ (with the reason) and prepared again. Where its content digest was recorded when it was
    prepared (`attnbench prepare` writes dataset.digest.json), it is kept in place, linked there, and noted
    as incomplete for Snakemake, whose --rerun-incomplete (profiles/default) then prepares it again; the runs
    built on it see it as ancient (get_dataset), so none of them is re-run, and `attnbench prepare` gives the
    data back its recorded time when the content is the same (and planning gives it back again after
    Snakemake's touch: keep_prepared_time), so they stay up to date. Otherwise (no digest, another
    persistence backend) it is moved: prepared again, and its runs trained again.
    Returns the tasks whose data this run prepares again and whose runs keep their records."""
    remade = set()
    if not workflow.is_main_process:  # a job's own snakemake (cluster): its planner did this
        return remade
    for task in TASKS:
        key, path = dataset_key(task), dataset_path(task)
        problem = torch_file_problem(path, key=key, format=FORMAT_VERSION) if path.exists() else None
        if problem is None:
            keep_prepared_time(path)
            continue
        keep = MARKERS is not None and paths.dataset_digest_file(path).exists()
        aside = move_aside_under(path, problem, paths.DATA, paths.DATA_SET_ASIDE, keep=keep)
        if keep:
            MARKERS._mark_incomplete(str(path), None)
            remade.add(task)
            logger.warning(f"attnbench: the prepared data {problem}: set aside (linked to {aside}); it is prepared "
                           "again (Snakemake's --rerun-incomplete, which profiles/default sets), and the runs built "
                           "on it keep their records (if its content comes out other than recorded when it was "
                           "first prepared, the next snakemake trains them again)")
        else:
            logger.warning(f"attnbench: the prepared data {problem}: set aside (moved to {aside}); it is prepared "
                           "again and the runs built on it are trained again (no content digest of it was recorded)")
    return remade


REMADE = repair_damaged_datasets()


def get_dataset(wildcards):
    """A run's prepared data; ancient (its time does not count) where a damaged one is prepared again
    by this run (REMADE, rules/data.smk): that re-runs none of the runs built on it."""
    path = str(dataset_path(wildcards.task))
    return ancient(path) if wildcards.task in REMADE else path


def get_data_json(wildcards):
    return json.dumps(DATA_PARAMS[(wildcards.task, wildcards.key)], sort_keys=True)


def run_json(method):
    """A rule's param: the resolved run config of its final run (task, variant, seed) trained by ``method``; a
    tuned one's with the point its tuning selected (rules/tune.smk: its job is planned once the selection is
    made, ``get_selection``)."""

    def get(wildcards):
        key = RunKey(wildcards.task, wildcards.variant, int(wildcards.seed), method)
        if tuning_on(config) and selection_pending(key):
            return "<the trial selected by tuning>"  # planned again once it is
        return json.dumps(final_run(config, key), sort_keys=True)

    return get


def output_dir(wildcards, output):
    """A rule's param: the folder of its (first) output, e.g. a run's folder."""
    return os.path.dirname(output[0])


def get_records(wildcards=None):
    """Every planned run's record: the final runs' (with adaptive seeds, those its rounds decided on:
    rules/seeds_plan.smk) and the tuning trials'."""
    return final_records() + [str(run.record) for run in RUNS if run.trial is not None]


# The efficiency sweep (rules/bench.smk): the variants it measures, none when `bench.enabled` is false.
BENCH_VARIANTS = bench_variants(config) if bench_settings(config).enabled else []


def set_aside_damaged_sweeps():
    """A planned variant's sweep JSON that cannot be read (truncated, not an attnbench sweep) would fail
    the aggregation until deleted by hand: it is moved to results/set_aside/bench/ (with the reason), so
    that this run sweeps that variant again."""
    for variant in BENCH_VARIANTS:
        path = paths.bench_file(variant)
        try:
            if path.exists():
                read_sweep(path)
        except SweepFileError as exc:
            moved = move_aside_under(path, str(exc), paths.BENCH.parent, paths.SET_ASIDE)
            logger.warning(f"attnbench: set aside {path} (moved to {moved}): {exc}; its sweep runs again")


set_aside_damaged_sweeps()


def get_bench_files(wildcards=None):
    return [str(paths.bench_file(v)) for v in BENCH_VARIANTS]


def get_sweep_json(wildcards):
    """One variant's sweep plan (device as configured, settings, the variant's parameters): a param, so
    changing `bench:` re-runs that variant's sweep. The job expands it into cases where it runs: `device:
    auto` is resolved on the node that has (or lacks) the GPU, not on the one planning."""
    return sweep_param(config, wildcards.variant, paths.BENCH / ".work")


def get_report_bench(wildcards):
    """The sweep's table when the sweep is on (the report then shows it beside training throughput)."""
    return {"bench": in_results("bench.csv")} if BENCH_VARIANTS else {}


def bench_option(wildcards, input):
    return f"--bench {input.bench}" if "bench" in input.keys() else ""
