# attnbench: train every (task, variant, seed) of the config (distilled variants from their teacher's run,
# self-pretrained ones from their pretraining on the task's inputs), sweep every variant's time and memory across
# sequence lengths (`bench:`), aggregate the run records and the sweep, render the report (`snakemake bench`: the
# sweep alone). `snakemake` runs the default config (config/config.yaml); `snakemake --configfile other.yaml` runs
# another one *instead of* the default.
import logging
from pathlib import Path

from snakemake.utils import min_version

# a log handler that cannot write (a full disk: Snakemake's own log file) stays silent instead of printing a
# "--- Logging error ---" traceback for every message; the console still says what happened
logging.raiseExceptions = False

min_version("9.0")

# `snakemake --report report.zip` (after a run): Snakemake's interactive report, with the outputs the rules
# mark with report(...) (attnbench's report and figures, the tables, every run record) and their provenance
report: "rules/captions/workflow.rst"


if not workflow.overwrite_configfiles:
    configfile: str(Path(workflow.basedir) / "config" / "config.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/tune_plan.smk"
include: "rules/seeds_plan.smk"
include: "rules/tune.smk"
include: "rules/train.smk"
include: "rules/distill.smk"
include: "rules/pretrain_plan.smk"
include: "rules/pretrain.smk"
include: "rules/seeds.smk"
include: "rules/bench.smk"
include: "rules/report.smk"
include: "rules/progress.smk"


# The records (the pretraining runs' too, and the sweep's files) are targets too, so that deleting one re-runs that
# training job (and the aggregation and report after it) instead of being skipped as an intermediate file.
rule all:
    default_target: True
    input:
        seed_targets,
        get_records,
        get_pretraining_records,
        get_bench_files,
        in_reports("index.html"),
        in_reports("summary.md"),
