# Self-pretraining (`spt:`): for each variant in `spt.variants`, per task and seed, a pretraining job on the task's
# own training inputs (masked tokens: no labels, no validation or test inputs), whose record and best.pt land in
# results/pretrain/TASK/VARIANT/seedS/, then a fine-tuning job on the labels that starts from those weights, named
# spt[<variant>] (folder spt-<variant>). The pretraining record.json is the fine-tuning job's input (written after
# its best.pt, it marks the checkpoint complete), as a teacher's is a distilled student's (rules/distill.smk): a
# re-run pretraining re-runs its fine-tuning, and planning sets aside a pretraining record that cannot be read or
# whose best.pt is missing or damaged, so that both run again (rules/pretrain_plan.smk).


rule pretrain:
    input:
        data=get_dataset,
    output:
        in_results("pretrain/{task}/{variant}/seed{seed}/record.json"),
    params:
        run=pretrain_json,
        outdir=output_dir,
    wildcard_constraints:
        variant=one_of(SPT_VARIANTS),
    threads: config["threads"]
    resources:
        **rule_resources("pretrain", gpu=True, per_task=True),
    log:
        in_logs("pretrain/{task}/{variant}/seed{seed}.log"),
    conda:
        "../environment.yml"
    shell:
        "attnbench train --task {wildcards.task} --variant {wildcards.variant} --method pretrain "
        "--seed {wildcards.seed} --data {input.data} --run-config {params.run:q} --out {params.outdir} "
        "--no-progress > {log} 2>&1"


rule train_spt:
    input:
        data=get_dataset,
        pretrain=lambda wc: str(RunKey(wc.task, wc.variant, int(wc.seed), "pretrain").record),
    output:
        report(in_results("runs/{task}/spt-{variant}/seed{seed}/record.json"), caption="captions/record.rst",
               category="Runs of {task}", subcategory="spt[{variant}]",
               labels={"task": "{task}", "variant": "spt[{variant}]", "seed": "{seed}"}),
    params:
        run=run_json("spt"),
        outdir=output_dir,
        pretrain_dir=lambda wc, input: os.path.dirname(input.pretrain),
    wildcard_constraints:
        variant=one_of(SPT_VARIANTS),
    threads: config["threads"]
    resources:
        **rule_resources("train", gpu=True, per_task=True),
    log:
        in_logs("train/{task}/spt-{variant}/seed{seed}.log"),
    conda:
        "../environment.yml"
    shell:
        "attnbench train --task {wildcards.task} --variant {wildcards.variant} --method spt "
        "--seed {wildcards.seed} --data {input.data} --pretrain-dir {params.pretrain_dir} "
        "--run-config {params.run:q} --out {params.outdir} --no-progress > {log} 2>&1 "
        "&& (attnbench progress --after {output:q} || true)"
