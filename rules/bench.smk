# The efficiency sweep: one pytest-benchmark run per variant (every backend, scope, mode,
# dtype, batch size and length of `bench:`), collected into one tidy table. A bench job takes
# every core, so nothing runs beside it while it measures (torch uses one fewer, see bench.threads).
# Its plan (the `bench:` settings, `device` as configured) is a param, so changing `bench:` re-runs
# the sweeps; the job resolves `device: auto` and expands the cases on the node it runs on.
# `snakemake bench` runs the sweep alone and renders reports/bench/index.html. A damaged sweep
# JSON is set aside when planning (rules/common.smk), so its variant is swept again.


rule bench_variant:
    output:
        in_results("bench/{variant}.json"),
    params:
        sweep=get_sweep_json,
    wildcard_constraints:
        variant=one_of(BENCH_VARIANTS),
    threads: workflow.cores
    resources:
        **rule_resources("bench", gpu=True),
    log:
        in_logs("bench/{variant}.log"),
    conda:
        "../environment.yml"
    shell:
        "attnbench bench --variant {wildcards.variant} --sweep-json {params.sweep:q} --cores {threads} "
        "--out {output} > {log} 2>&1"


rule bench_aggregate:
    input:
        get_bench_files,
    output:
        csv=report(in_results("bench.csv"), caption="captions/bench_table.rst", category="Tables",
                   labels={"table": "efficiency sweep (results/bench.csv)"}),
        parquet=in_results("bench.parquet"),
    resources:
        **rule_resources("report"),
    log:
        in_logs("bench/aggregate.log"),
    conda:
        "../environment.yml"
    shell:
        "attnbench aggregate-bench --inputs {input} --out {output.csv} > {log} 2>&1"


rule bench_report:
    input:
        bench=in_results("bench.csv"),
    output:
        html=in_reports("bench/index.html"),
        md=in_reports("bench/summary.md"),
    params:
        out=output_dir,
    resources:
        **rule_resources("report"),
    log:
        in_logs("bench/report.log"),
    conda:
        "../environment.yml"
    shell:
        "attnbench report --bench-only --bench {input.bench} --out {params.out:q} > {log} 2>&1"


rule bench:
    input:
        get_bench_files,
        in_reports("bench/index.html"),
