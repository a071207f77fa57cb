# Distillation: one job per (task, seed) of each student in `distill.students`, trained from
# the `distill.teacher` run of the same task and seed. The teacher's record.json is an input
# (written after its best.pt, it marks the checkpoint complete), so a re-run teacher re-runs
# its students (and planning, rules/common.smk, sets aside a teacher's record whose best.pt is
# missing or damaged, so the teacher and its students are trained again). A student's run is named
# distilled[<variant>] (folder distilled-<variant>).
from attnbench.harness.results.records import RunKey

STUDENTS = list(config["distill"]["students"])
TEACHER = config["distill"]["teacher"]


rule distill:
    input:
        data=get_dataset,
        teacher=lambda wc: str(RunKey(wc.task, TEACHER, int(wc.seed)).record),
        selection=get_selection("distill"),
    output:
        report(in_results("runs/{task}/distilled-{variant}/seed{seed}/record.json"), caption="captions/record.rst",
               category="Runs of {task}", subcategory="distilled[{variant}]",
               labels={"task": "{task}", "variant": "distilled[{variant}]", "seed": "{seed}"}),
    params:
        run=run_json("distill"),
        outdir=output_dir,
        teacher_dir=lambda wc: str(RunKey(wc.task, TEACHER, int(wc.seed)).dir),
    wildcard_constraints:
        variant=one_of(STUDENTS),
    threads: config["threads"]
    resources:
        **rule_resources("distill", gpu=True, per_task=True),
    log:
        in_logs("distill/{task}/{variant}/seed{seed}.log"),
    conda:
        "../environment.yml"
    shell:
        "attnbench train --task {wildcards.task} --variant {wildcards.variant} --method distill "
        "--seed {wildcards.seed} --data {input.data} --teacher-dir {params.teacher_dir} --run-config {params.run:q} "
        "--out {params.outdir} --no-progress > {log} 2>&1 "
        "&& (attnbench progress --after {output:q} || true)"
