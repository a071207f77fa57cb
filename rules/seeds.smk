# Adaptive seeds (`seeds: {min, max, step, target}`): round 0 trains seeds 0..min-1 of every (task, run label);
# after each round, the checkpoint seed_round decides from the task's final records which labels get `step` more
# seeds (a label whose paired difference to the reference has not resolved, and the reference, up to max):
# results/seeds/TASK/roundR.json. Snakemake plans the next round's runs once it has (rules/seeds_plan.smk); a
# round that adds none ends the task, and the report's Seeds section says how each comparison ended.


checkpoint seed_round:
    input:
        seed_round_records,
    output:
        in_results("seeds/{task}/round{round}.json"),
    params:
        seeds=lambda wildcards: json.dumps(ADAPTIVE, sort_keys=True),
        labels=lambda wildcards: json.dumps(list(FINAL_LABELS)),
    wildcard_constraints:
        round=r"\d+",
    resources:
        **rule_resources("report"),
    log:
        in_logs("seeds/{task}/round{round}.log"),
    conda:
        "../environment.yml"
    shell:
        "attnbench seed-round --task {wildcards.task} --round {wildcards.round} --seeds {params.seeds:q} "
        "--labels {params.labels:q} --records {input} --out {output} > {log} 2>&1"


# One target per task, so that every task's rounds are planned from the start (side by side, not one task after
# the other): the final records its rounds decided on, one path a line, once its last round has decided.
rule seeds_final:
    input:
        lambda wildcards: adaptive_records(wildcards.task),
    output:
        in_results("seeds/{task}/final.txt"),
    log:
        in_logs("seeds/{task}/final.log"),
    conda:
        "../environment.yml"
    shell:
        "printf '%s\\n' {input} > {output} 2> {log}"
