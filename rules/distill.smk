# Distillation: one job per (task, seed) of each variant trained from a teacher (flag
# `needs_teacher`, e.g. distilled). The job waits for the teacher variant's run of the same
# task and seed: its record.json is an input (written after best.pt, it marks the
# checkpoint complete), so a re-run teacher re-runs its students.


rule distill:
    input:
        data=get_dataset,
        teacher=get_teacher_record,
    output:
        "results/runs/{task}/{variant}/seed{seed}/record.json",
    params:
        run=get_run_json,
        outdir=get_run_dir,
        teacher_dir=get_teacher_dir,
    wildcard_constraints:
        variant=one_of(FROM_TEACHER),
    threads: config["threads"]
    resources:
        **rule_resources("distill", gpu=True),
    log:
        "logs/distill/{task}/{variant}/seed{seed}.log",
    conda:
        "../environment.yml"
    shell:
        "attnbench train --task {wildcards.task} --variant {wildcards.variant} --seed {wildcards.seed} "
        "--data {input.data} --teacher-dir {params.teacher_dir} --run-config {params.run:q} "
        "--out {params.outdir} --no-progress > {log} 2>&1"
