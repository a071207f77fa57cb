# Planning of adaptive seeds (`seeds: {min, max, step, target}`, rules/seeds.smk): which final runs each round of a
# task holds, read from the round before (a checkpoint), and the records the aggregation takes once a task is done.
from attnbench.harness.config.seeds import adaptive_seeds
from attnbench.harness.core.json_values import read_json

ADAPTIVE = adaptive_seeds(config)
#: each run label of the final runs -> (variant, method)
FINAL_LABELS = {run.label: (run.variant, run.method) for run in FINAL_RUNS}


def round_counts(task, round_index):
    """The seeds each run label of ``task`` has in round ``round_index``: min in round 0, then what the round
    before decided (its checkpoint's `next`)."""
    if round_index == 0:
        return {label: ADAPTIVE["min"] for label in FINAL_LABELS}
    return read_json(checkpoints.seed_round.get(task=task, round=round_index - 1).output[0])["next"]


def records_of(task, counts):
    """The final records of seeds 0..n-1 of each run label of ``task`` (``counts``: label -> n)."""
    keys = [RunKey(task, FINAL_LABELS[label][0], seed, FINAL_LABELS[label][1])
            for label, n in counts.items() for seed in range(n)]
    return [str(key.record) for key in keys]


def seed_round_records(wildcards):
    """A round's input: the final records of the seeds its task has in that round."""
    return records_of(wildcards.task, round_counts(wildcards.task, int(wildcards.round)))


def adaptive_records(task):
    """The final records of ``task`` once its rounds are done: the round whose decision adds no seed (Snakemake
    plans each next round once the round before has decided)."""
    for round_index in range(ADAPTIVE["max"] + 1):  # each round adds a seed, or is the last
        decision = read_json(checkpoints.seed_round.get(task=task, round=round_index).output[0])
        if decision["done"]:
            return records_of(task, decision["counts"])
    raise WorkflowError(f"attnbench: the seed rounds of {task} did not end by round {ADAPTIVE['max']}")


def final_records():
    """The final runs' records: every planned one, or with adaptive seeds those the rounds decided on."""
    if ADAPTIVE is None:
        return [str(run.record) for run in FINAL_RUNS]
    return [path for task in TASKS for path in adaptive_records(task)]


def seed_targets(wildcards=None):
    """With adaptive seeds, each task's list of its decided final records (what the seeds_final rule writes), a target of its own
    per task, so that Snakemake plans every task's rounds at once."""
    return [f"{RESULTS_DIR}/seeds/{task}/final.txt" for task in TASKS] if ADAPTIVE else []
