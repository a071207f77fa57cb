# The pipeline's progress lines. When Snakemake starts running jobs (onstart: never in a dry run, nor when
# nothing is to be done) the plan of this invocation is written to RESULTS/.progress/plan.json: its start, the
# records its training jobs (train, distill, pretrain, train_spt, trial) write and the sweep files its sweep jobs
# write, with each job's expected seconds on this machine (harness/estimate: earlier records of this machine, else a short
# calibration, said on the console with the expected wall time). After each train and distill job
# `attnbench progress` prints "attnbench: 12 of 36 runs done, elapsed 2:10, ETA 4:05" from it
# (harness/estimate/pipeline_progress.py); with ATTNBENCH_ESTIMATE=0 nothing is estimated (the ETA then follows the
# elapsed time per run). Jobs planned later (a tuned run once its trial is selected) are not
# in the plan. Nothing here can fail the workflow: a plan that cannot be estimated has runs without estimates
# (the ETA then follows the elapsed time per run), and one that cannot be written, none (no progress lines).
import os
import time

import psutil

from attnbench.harness.estimate.pipeline_progress import PLAN_FILE, write_plan

PROGRESS_PLAN = in_results(str(PLAN_FILE))
#: the rules whose jobs are training runs, and those after the runs and the sweep
TRAINING_RULES = ("train", "distill", "train_spt", "pretrain", "trial")


def progress_plan():
    """The plan of the jobs this invocation runs (Snakemake's DAG), estimated; the headline on the console."""
    started = psutil.Process().create_time()
    jobs = list(workflow.dag.needrun_jobs())
    by_record = {str(run.record): run for run in RUNS + PRETRAINING}
    keys = [by_record[str(job.output[0])] for job in jobs
            if job.rule.name in TRAINING_RULES and str(job.output[0]) in by_record]
    sweep = [job.wildcards.variant for job in jobs if job.rule.name == "bench_variant"]
    tail = [job.rule.name for job in jobs if job.rule.name in ("aggregate", "bench_aggregate", "report")]
    cores = int(workflow.cores or 1)
    try:
        if os.environ.get("ATTNBENCH_ESTIMATE", "1") == "0":  # (the test suite's many small pipelines)
            raise RuntimeError("ATTNBENCH_ESTIMATE=0")
        from attnbench.harness.estimate import costs
        from attnbench.harness.estimate.grid import estimate_pipeline
        from attnbench.harness.estimate.text import headline

        est = estimate_pipeline(config, cores, costs.reference_process_start(), keys=keys, sweep=sweep, tail=tail)
    except Exception as exc:  # no estimate: the progress lines still count the runs
        logger.warning(f"attnbench: no time estimate for this run ({type(exc).__name__}: {exc}); the progress "
                       "lines give the ETA from the time per finished run")
        runs = [{"record": str(key.record), "job_s": None, "train_s": None, "threads": config["threads"]}
                for key in keys]
        write_plan(PROGRESS_PLAN, started, cores, runs, [], None)
        return
    runs = [{"record": run.record, "job_s": run.job_s, "train_s": run.train_s, "threads": run.threads}
            for run in est.runs]
    sweeps = [{"output": str(paths.bench_file(s.variant)), "job_s": s.job_s} for s in est.sweeps]
    write_plan(PROGRESS_PLAN, started, cores, runs, sweeps, sum(est.tail.values()))
    logger.info(f"attnbench: {len(runs)} training runs and {len(sweeps)} sweep jobs to do; {headline(est)}")


onstart:
    try:
        progress_plan()
    except Exception as exc:  # the pipeline runs without progress lines
        logger.warning(f"attnbench: no progress lines for this run ({type(exc).__name__}: {exc})")
