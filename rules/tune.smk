# Tuning with an equal budget per variant (`tune:`): every (task, run label) trains `tune.trials` trials, the
# same points of a seeded design for every variant (trial 0: the config's own settings), each a job and a record
# under results/tune/TASK/LABEL/trialN/ (stage tune: its job withholds the test split). The checkpoint
# select_trial then picks the trial with the best validation accuracy (results/tune/TASK/LABEL/selected.json);
# the final runs (rules/train.smk, rules/distill.smk) ask for it (get_selection), so Snakemake plans them, with
# the selected point in their params, once it is made: the DAG depends on the trials' results. A distilled
# student's trials learn from the teacher's final run of the trials' seed (the first of `seeds`).


rule trial:
    input:
        data=get_dataset,
        teacher=trial_teacher,
    output:
        in_results("tune/{task}/{label}/trial{trial}/record.json"),
    params:
        run=lambda wc: json.dumps(resolve_run(config, *trial_key(wc)), sort_keys=True),
        options=trial_options,
        outdir=output_dir,
    wildcard_constraints:
        label=one_of(TRIAL_LABELS),
        trial=r"\d+",
    threads: config["threads"]
    resources:
        **rule_resources("train", gpu=True, per_task=True),
    log:
        in_logs("tune/{task}/{label}/trial{trial}.log"),
    conda:
        "../environment.yml"
    shell:
        "attnbench train --task {wildcards.task} {params.options} --data {input.data} --run-config {params.run:q} "
        "--out {params.outdir} --no-progress > {log} 2>&1"


checkpoint select_trial:
    input:
        trial_records,
    output:
        in_results("tune/{task}/{label}/selected.json"),
    wildcard_constraints:
        label=one_of(TRIAL_LABELS),
    resources:
        **rule_resources("report"),
    log:
        in_logs("tune/{task}/{label}/select.log"),
    conda:
        "../environment.yml"
    shell:
        "attnbench select --trials {input} --out {output} > {log} 2>&1"
