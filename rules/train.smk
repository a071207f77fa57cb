# Training from labels: one job per (task, variant, seed) of `variants:`. The resolved run
# config is a param, so a change to any setting that affects a run re-runs exactly that run. With `tune:`, a
# run waits for its tuning's selection (rules/tune.smk) and trains with the selected point.
# (Distilled students: rules/distill.smk.)


rule train:
    input:
        data=get_dataset,
        selection=get_selection("labels"),
    output:
        report(in_results("runs/{task}/{variant}/seed{seed}/record.json"), caption="captions/record.rst",
               category="Runs of {task}", subcategory="{variant}",
               labels={"task": "{task}", "variant": "{variant}", "seed": "{seed}"}),
    params:
        run=run_json("labels"),
        outdir=output_dir,
    wildcard_constraints:
        variant=one_of(VARIANTS),
    threads: config["threads"]
    resources:
        **rule_resources("train", gpu=True, per_task=True),
    log:
        in_logs("train/{task}/{variant}/seed{seed}.log"),
    conda:
        "../environment.yml"
    shell:
        "attnbench train --task {wildcards.task} --variant {wildcards.variant} --seed {wildcards.seed} "
        "--data {input.data} --run-config {params.run:q} --out {params.outdir} --no-progress > {log} 2>&1 "
        "&& (attnbench progress --after {output:q} || true)"
