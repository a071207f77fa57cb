# Data preparation: one cached, versioned tensor file per task and data settings (a task's lengths: one each).
# The folder name is a hash of the settings, so changed settings prepare a new file. A damaged
# one is prepared again without re-running the runs built on it (planning, rules/common.smk).


rule prepare_data:
    output:
        "data/{task}/{key}/dataset.pt",
    wildcard_constraints:
        task=one_of(BASE_TASKS),  # a registered task: its lengths are data sets of its own (their keys)
    params:
        data=get_data_json,
    resources:
        **rule_resources("prepare", per_task=True, task_of=lambda wc: DATA_TASK[(wc.task, wc.key)]),
    log:
        in_logs("prepare/{task}/{key}.log"),
    conda:
        "../environment.yml"
    shell:
        "attnbench prepare --task {wildcards.task} --data-json {params.data:q} --out {output} > {log} 2>&1"
