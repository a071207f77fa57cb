"""The ``attnbench`` argument parser: every subcommand, its arguments and help, in the order ``attnbench --help``
lists them; each runs the ``cmd_*`` function of ``setup_commands`` or ``pipeline_commands`` it names."""
from __future__ import annotations

import argparse

from attnbench.harness.cli.estimate_command import cmd_estimate, cmd_progress
from attnbench.harness.cli.pipeline_commands import (
    cmd_aggregate,
    cmd_aggregate_bench,
    cmd_bench,
    cmd_prepare,
    cmd_report,
    cmd_seed_round,
    cmd_select,
    cmd_train,
)
from attnbench.harness.cli.setup_commands import (
    cmd_check_config,
    cmd_check_variant,
    cmd_list,
    cmd_new_variant,
    cmd_schema,
)
from attnbench.harness.core import paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnbench", description="Benchmark attention variants on LRA-style tasks.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", help="pipeline config YAML (default: the shipped config/config.yaml, in an "
                        "editable install this checkout's)")
        return sp

    sp = with_config(sub.add_parser("list", help="registered variants and tasks with their parameters (with "
                                    "--config: also the config's variants from outside the repository)"))
    sp.set_defaults(func=cmd_list, config=None)
    sub.add_parser("schema", help="print the complete config JSON schema").set_defaults(func=cmd_schema)
    sp = with_config(sub.add_parser("check-config", help="validate a config (and print it resolved with --show)"))
    sp.add_argument("--show", action="store_true")
    sp.add_argument("--estimate", action=argparse.BooleanOptionalAction, default=None,
                    help="also print the expected wall time on this machine (a few seconds of calibration; default: "
                         "when stdout is a terminal and without --show)")
    sp.set_defaults(func=cmd_check_config)

    sp = with_config(sub.add_parser("estimate", help="the expected wall time of a config's pipeline on this machine, "
                                    "from earlier records of it or a short calibration"))
    sp.add_argument("--cores", type=int, help="cores the pipeline gets (snakemake --cores; default: this machine's)")
    sp.add_argument("--json", action="store_true", help="every job's seconds and the totals as JSON")
    sp.set_defaults(func=cmd_estimate)

    sp = with_config(sub.add_parser("prepare", help="build a task's cached tensor file"))
    sp.add_argument("--task", required=True)
    sp.add_argument("--data-json", help="the task's data settings as JSON (what the pipeline passes)")
    sp.add_argument("--out", required=True, help="dataset file to write")
    sp.set_defaults(func=cmd_prepare)

    sp = with_config(sub.add_parser("train", help="train and evaluate one (task, variant, seed, method)"))
    sp.add_argument("--task", required=True)
    sp.add_argument("--variant", required=True, help="the model's attention variant")
    sp.add_argument("--seed", type=int, required=True)
    sp.add_argument("--method", choices=("labels", "distill", "pretrain", "spt"), default="labels",
                    help="labels: train from the labels (default); distill: a student of the config's "
                         "distill.teacher run of the same task and seed; pretrain: self-pretrain on the task's "
                         "training inputs (masked tokens, `spt:`); spt: fine-tune on the labels from that "
                         "pretraining run of the same task, variant and seed")
    sp.add_argument("--out", help="run folder (default: results/runs/TASK/VARIANT/seedS; a distilled "
                    "student: results/runs/TASK/distilled-VARIANT/seedS; self-pretrained: "
                    "results/runs/TASK/spt-VARIANT/seedS, its pretraining results/pretrain/TASK/VARIANT/seedS)")
    sp.add_argument("--run-config", help="the resolved run config as JSON (what the pipeline passes)")
    sp.add_argument("--data", help="prepared dataset file (default: data/TASK/KEY/dataset.pt, prepared if missing)")
    sp.add_argument("--teacher-dir", help="--method distill: the teacher's run folder, with record.json and best.pt "
                    "(default: results/runs/TASK/TEACHER/seedS)")
    sp.add_argument("--pretrain-dir", help="--method spt: the pretraining run's folder, with record.json and "
                    "best.pt (default: results/pretrain/TASK/VARIANT/seedS)")
    sp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar (default: when stderr is a terminal)")
    sp.add_argument("--strict", action="store_true", help="exit 1 when the run's status is 'failed'")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("check-variant", help="run the conformance checks of every variant on your attention class")
    sp.add_argument("source", help="package.module:ClassName, importable from the current folder or PYTHONPATH")
    sp.add_argument("--name", help="the name to register it under (default: the module's last part)")
    sp.add_argument("--no-memory", action="store_true",
                    help="skip the linear-memory check (it measures two fresh processes, a few seconds)")
    sp.add_argument("--check-timeout", type=float, metavar="SECONDS",
                    help="a check still running after this long fails, and the next one runs (default 60; 0: none)")
    sp.set_defaults(func=cmd_check_variant)

    sp = sub.add_parser("new-variant", help="write NAME.py: a new attention variant to start from (passes "
                        "check-variant as written)")
    sp.add_argument("name", help="the module and variant name (a Python identifier)")
    sp.add_argument("--dir", default=".", help="folder to write it in (default: the current one)")
    sp.add_argument("--force", action="store_true", help="overwrite an existing NAME.py")
    sp.add_argument("--layer", action="store_true",
                    help="wrap a whole attention layer from elsewhere (a third-party nn.Module with its own "
                         "projections) instead of writing an attend(q, k, v, mask) to fill in")
    sp.set_defaults(func=cmd_new_variant)

    sp = sub.add_parser("select", help="select a tuned (task, run label)'s trial from its trial records, by "
                        "validation accuracy (what the pipeline runs after the trials)")
    sp.add_argument("--trials", nargs="+", required=True, help="the trial records (results/tune/TASK/LABEL/trial*/"
                    "record.json)")
    sp.add_argument("--out", required=True, help="the selection's JSON (results/tune/TASK/LABEL/selected.json)")
    sp.set_defaults(func=cmd_select)

    sp = sub.add_parser("seed-round", help="adaptive seeds: decide from one task's final records which run labels "
                        "get more seeds (what the pipeline runs after each round)")
    sp.add_argument("--task", required=True)
    sp.add_argument("--round", type=int, required=True)
    sp.add_argument("--seeds", required=True, help="the config's adaptive seeds settings, JSON")
    sp.add_argument("--labels", required=True, help="the task's run labels, a JSON list")
    sp.add_argument("--records", nargs="*", help="the task's final records so far")
    sp.add_argument("--out", required=True, help="the round's JSON (results/seeds/TASK/roundR.json)")
    sp.set_defaults(func=cmd_seed_round)

    sp = with_config(sub.add_parser("aggregate", help="collect the run records of a config into a summary table "
                                    "(records of other runs or configs are left out and named)"))
    sp.add_argument("--runs", default=str(paths.RUNS), help="folder searched for record.json files")
    sp.add_argument("--records", nargs="+", help="exactly these record files (what the pipeline passes)")
    sp.add_argument("--plan", help="the planned runs as a JSON object of run_id -> config hash (what the pipeline "
                    "passes); default: the runs of --config")
    sp.add_argument("--out", default=str(paths.SUMMARY_CSV), help="CSV to write (a .parquet is written beside it)")
    sp.set_defaults(func=cmd_aggregate)

    # listed for --help; main() hands `compare` and its arguments to attnbench.harness.compare.command
    sub.add_parser("compare", add_help=False,
                   help="time variants against public implementations (`attnbench compare --help`)")

    sp = with_config(sub.add_parser("bench", help="run one variant's efficiency sweep (pytest-benchmark)"))
    sp.add_argument("--variant", required=True)
    sp.add_argument("--sweep-json", help="the sweep's plan as JSON (what the pipeline passes: settings, device as "
                    "configured; the cases are expanded here, for the device this job resolves)")
    sp.add_argument("--cores", type=int, default=2, help="cores this sweep may use (default 2); torch uses "
                    "bench.threads, or one fewer than these")
    sp.add_argument("--lengths", type=int, nargs="+", help="only these sequence lengths")
    sp.add_argument("--out", help="JSON to write (default: results/bench/VARIANT.json)")
    sp.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments, e.g. -- -k layer")
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("aggregate-bench", help="collect sweep JSONs into one tidy table")
    sp.add_argument("--inputs", nargs="+", required=True, help="results/bench/*.json files")
    sp.add_argument("--out", default=str(paths.BENCH_CSV), help="CSV to write (a .parquet is written beside it)")
    sp.set_defaults(func=cmd_aggregate_bench)

    sp = sub.add_parser("report", help="render reports/index.html and reports/summary.md",
                        description="Render one report from one or several results (several machines: the "
                                    "machine becomes a dimension; throughput and memory are never pooled across "
                                    "machines, accuracy only across identical configs).")
    sp.add_argument("--summary", nargs="+", help=f"runs' tables (default: {paths.SUMMARY_CSV} when neither "
                    "--results nor --bench is given)")
    sp.add_argument("--bench", nargs="+", help="efficiency sweeps' tables (results/bench.csv) to add")
    sp.add_argument("--results", nargs="+", metavar="DIR",
                    help="results folders, each giving its summary.csv and bench.csv where present")
    sp.add_argument("--bench-only", action="store_true", help="a report of the efficiency sweep alone")
    sp.add_argument("--seeds", help="adaptive seeds settings ({min, max, step, target}, JSON): add the Seeds "
                    "section (how each comparison ended against the target)")
    sp.add_argument("--lra-average", type=int, choices=(5, 6), default=5,
                    help="LRA average over 5 tasks (LRA's own) or 6 with a Path-X FAIL as 50 (S4 and later)")
    sp.add_argument("--out", default=str(paths.REPORTS))
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("progress", help="the pipeline's progress line: runs done of this invocation's, elapsed, "
                        "ETA (what the pipeline prints after each training job)")
    where = sp.add_mutually_exclusive_group(required=True)
    where.add_argument("--plan", help="the invocation's plan (RESULTS/.progress/plan.json, written when snakemake "
                       "starts its jobs); no plan, no line")
    where.add_argument("--after", metavar="RECORD", help="the record a training job just wrote (what the pipeline "
                       "passes): the plan is the one of its results folder")
    sp.set_defaults(func=cmd_progress)
    return p
