# Aggregation of the run records and the report.


rule aggregate:
    input:
        records=get_records,
        selections=get_selections,  # with tune: the plan below holds the tuned runs' hashes once they are made
    output:
        csv=report(in_results("summary.csv"), caption="captions/summary_table.rst", category="Tables",
                   labels={"table": "runs (results/summary.csv)"}),
        parquet=in_results("summary.parquet"),
    params:
        # the planned runs, run_id -> config hash: a record is counted only as the run of this config it says it
        # is; a record of another config, or a second one of a run, is left out and named
        plan=lambda wildcards, input: json.dumps(plan_hashes(config, RUNS), sort_keys=True),
    resources:
        **rule_resources("report"),
    log:
        in_logs("aggregate.log"),
    conda:
        "../environment.yml"
    shell:
        "attnbench aggregate --records {input.records} --plan {params.plan:q} --out {output.csv} > {log} 2>&1"


rule report:
    input:
        unpack(get_report_bench),
        summary=in_results("summary.csv"),
    output:
        html=report(in_reports("index.html"), caption="captions/report.rst", category="Report",
                    labels={"report": "attnbench report (reports/index.html)"}),
        md=in_reports("summary.md"),
        figures=report(directory(in_reports("figures")), patterns=["{figure}.png"], caption="captions/figure.rst",
                       category="Figures"),
    params:
        bench=bench_option,
        lra_average=config["report"]["lra_average"],
        # adaptive seeds: the report's Seeds section says how each comparison ended against the target
        seeds=lambda wildcards: f"--seeds {shlex.quote(json.dumps(ADAPTIVE))}" if ADAPTIVE else "",
        out=output_dir,
    resources:
        **rule_resources("report"),
    log:
        in_logs("report.log"),
    conda:
        "../environment.yml"
    shell:
        "attnbench report --summary {input.summary} {params.bench} --lra-average {params.lra_average} {params.seeds} --out {params.out:q} > {log} 2>&1"
