# Planning of tuning (`tune:`, rules/tune.smk): the trials' wildcards and inputs, and the selection a tuned
# final run (rules/train.smk, rules/distill.smk) and the aggregation wait for.
from snakemake.exceptions import IncompleteCheckpointException

from attnbench.harness.config.seeds import first_seed
from attnbench.harness.core.paths import label_dir

#: each run label's folder name -> (variant, method): the trials' {label} wildcard
TRIAL_LABELS = {label_dir(run.label): (run.variant, run.method) for run in RUNS if run.trial is not None}


def trial_key(wildcards):
    variant, method = TRIAL_LABELS[wildcards.label]
    return RunKey(wildcards.task, variant, first_seed(config), method, int(wildcards.trial))


def trial_teacher(wildcards):
    """A distilled student's trial learns from the teacher's final run of the trials' seed."""
    key = trial_key(wildcards)
    return [str(RunKey(key.task, config["distill"]["teacher"], key.seed).record)] if key.method == "distill" else []


def trial_records(wildcards):
    variant, method = TRIAL_LABELS[wildcards.label]
    return [str(run.record) for run in RUNS
            if run.trial is not None and (run.task, run.variant, run.method) == (wildcards.task, variant, method)]


def trial_options(wildcards, input):
    """The trial's method and, for a distilled student, its teacher's run folder."""
    key = trial_key(wildcards)
    teacher = f" --teacher-dir {os.path.dirname(input.teacher[0])}" if key.method == "distill" else ""
    return f"--variant {key.variant} --method {key.method} --seed {key.seed}{teacher}"


def get_selection(method):
    """A final run's input when the config tunes: its (task, label)'s selected trial, made by the checkpoint
    select_trial (Snakemake plans the run again, with the selection in its params, once it is made)."""

    def get(wildcards):
        if not tuning_on(config):
            return []
        label = label_dir(RunKey(wildcards.task, wildcards.variant, int(wildcards.seed), method).label)
        # ancient: a selection made again with the same point re-runs nothing (the run's params hold the point)
        return ancient(checkpoints.select_trial.get(task=wildcards.task, label=label).output[0])

    return get


def get_selections(wildcards=None):
    """Every (task, label)'s selected trial (the aggregation's input: its plan holds the tuned runs' hashes)."""
    if not tuning_on(config):
        return []
    pairs = dict.fromkeys((run.task, label_dir(run.label)) for run in FINAL_RUNS)
    return [checkpoints.select_trial.get(task=task, label=label).output[0] for task, label in pairs]


def selection_pending(key):
    """Whether ``key``'s (task, label) selection is still to be made (or made again) in this run."""
    try:
        checkpoints.select_trial.get(task=key.task, label=label_dir(key.label))
    except IncompleteCheckpointException:
        return True
    return False
