# Self-pretraining's planning (rules/pretrain.smk has its rules): the pretraining runs of the config, the ones whose
# record or checkpoint cannot be used set aside so that they run again, and a pretraining job's run config.
from attnbench.harness.config.runs import planned_pretraining

SPT_VARIANTS = list(config["spt"]["variants"])
PRETRAINING = planned_pretraining(config, TASKS)


def set_aside_unusable_pretraining():
    """A pretraining run whose record cannot be read, or whose best checkpoint is missing or damaged, would fail
    every fine-tuning from it: its record is set aside (with the reason), so that this run pretrains again."""
    good, aside = readable([run.record for run in PRETRAINING if run.record.exists()])
    moved = [(entry["record"], entry["moved_to"], entry["reason"]) for entry in aside]
    for path, record in good:
        problem = checkpoint_problem(path, record)
        if problem is not None:
            reason = f"its best checkpoint {problem}"
            moved.append((path, set_aside(Path(path), reason), reason))
    for path, to, reason in moved:
        logger.warning(f"attnbench: set aside the pretraining record {path} (moved to {to}): {reason}; it is "
                       "pretrained again, and then fine-tuned")


set_aside_unusable_pretraining()


def pretrain_json(wildcards):
    """The resolved config of the pretraining run (task, variant, seed): a param, so that a change to `spt:` or to
    the variant's settings pretrains again."""
    return json.dumps(resolve_run(config, wildcards.task, wildcards.variant, int(wildcards.seed), "pretrain"),
                      sort_keys=True)


def get_pretraining_records(wildcards=None):
    """The pretraining record of each self-pretrained run the aggregation takes (with adaptive seeds, those of the
    seeds its rounds decided on): targets of `rule all`, so that deleting one pretrains again, and then
    fine-tunes again."""
    finals = set(final_records())
    return [str(run.record) for run in PRETRAINING
            if str(RunKey(run.task, run.variant, run.seed, "spt").record) in finals]
