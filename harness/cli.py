"""The ``attnbench`` command line: list, schema, check-config, prepare, train (or distil), check-variant,
new-variant, aggregate, bench, aggregate-bench, report (and compare)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from attnbench.harness.core import paths
from attnbench.harness.core.errors import PATH_ERRORS, UsageError, UserError

# Each command imports what it runs inside its function: torch, pandas and matplotlib take seconds
# to import, and `attnbench --help` or a report should not pay for the training code.
from attnbench.harness.results.records import RunKey, task_id


def _load(args) -> dict:
    from attnbench.harness.config import load_config

    return load_config(args.config)


def cmd_list(args) -> int:
    from attnbench.harness.core.registry import dataclass_schema
    from attnbench.tasks import TASKS
    from attnbench.variants import VARIANTS

    if args.config:  # its `from:` variants join the built-in and installed ones
        _load(args)
    for title, registry in (("Variants", VARIANTS), ("Tasks", TASKS)):
        print(f"{title}:")
        for entry in registry:
            flags = ""
            if registry is VARIANTS:
                source = VARIANTS.source(entry.name)
                flags = (f"  [{entry.cls.complexity}{'; exact' if entry.cls.exact else ''}]"
                         + (f"  (from {source})" if source else ""))
            print(f"  {entry.name}: {entry.description}{flags}")
            props = dataclass_schema(entry.config)["properties"]
            if not props:
                print("      (no parameters)")
            for name, p in props.items():
                kind = p.get("type") or "one of " + "|".join(map(str, p.get("enum", [])))
                print(f"      {name} ({kind}, default {json.dumps(p['default'])}): {p['description']}")
        print()
    return 0


def cmd_schema(args) -> int:
    from attnbench.harness.config import build_schema

    print(json.dumps(build_schema(), indent=2))
    return 0


def cmd_check_config(args) -> int:
    from attnbench.harness.config import DEFAULT_CONFIG

    config = _load(args)
    if not args.show:
        print(f"{args.config or DEFAULT_CONFIG}: valid")
        return 0
    print(json.dumps({**config, "resolved_models": resolved_models(config)}, indent=2))
    return 0


def resolved_models(config: dict) -> dict[str, dict]:
    """The model each task's runs get, every option resolved (profiles, per-task values, black-pixel
    masking): per task that of its first variant, and ``task/variant`` for a variant with its own settings."""
    from attnbench.harness.config import resolve_run
    from attnbench.harness.config.runs import task_instances, task_settings
    from attnbench.harness.config.seeds import seed_list

    seed = seed_list(config)[0]
    first = next(iter(config["variants"]))
    out = {}
    for task in task_instances(config):
        settings = task_settings(config, task)
        out[task] = resolve_run(config, task, first, seed)["model"]
        for variant in settings.get("per_variant", {}):
            if variant in config["variants"]:
                out[f"{task}/{variant}"] = resolve_run(config, task, variant, seed)["model"]
    return out


def cmd_prepare(args) -> int:
    from attnbench.harness.config import task_data_params
    from attnbench.harness.results.set_aside import note_prepared
    from attnbench.tasks.base import build_task, save_prepared

    params = json.loads(args.data_json) if args.data_json else task_data_params(_load(args), args.task)
    out = Path(args.out)
    t0 = time.perf_counter()
    data = build_task(args.task, params).prepare(out.parent / "source")
    save_prepared(out, args.task, params, data)
    noted = {"same": "; the same content as when it was first prepared: it keeps that time, the runs built on "
                     "it stay up to date",
             "changed": "; its content differs from when it was first prepared: the runs built on it are out of "
                        "date"}.get(note_prepared(out), "")
    sizes = ", ".join(f"{s} {t['labels'].shape[0]}" for s, t in data.splits.items())
    print(f"{args.task}: {sizes}; seq_len {data.seq_len}, vocab {data.vocab_size}, "
          f"{data.num_classes} classes; {data.source}; wrote {out} in {time.perf_counter() - t0:.1f} s"
          + noted)
    return 0


def cmd_train(args) -> int:
    from attnbench.harness.config import resolve_run
    from attnbench.harness.run.distill import distill_run
    from attnbench.harness.run.train import train_run
    from attnbench.tasks.base import build_task, load_prepared, save_prepared

    if args.teacher_dir and args.method != "distill":
        raise UsageError("--teacher-dir: only a distilled run (--method distill) has a teacher")
    run = (json.loads(args.run_config) if args.run_config
           else resolve_run(_load(args), args.task, args.variant, args.seed, args.method))
    names = {"task": task_id(run["task"]), "variant": run["variant"]["name"], "method": run["method"]["name"]}
    for key, want in (("task", args.task), ("variant", args.variant), ("method", args.method)):
        have = names[key]
        if have != want:
            raise UsageError(f"--{key} {want} does not match the run config's {have}")
    if run["seed"] != args.seed:
        raise UsageError(f"--seed {args.seed} does not match the run config's seed {run['seed']}")
    if run["variant"].get("source"):  # a variant from outside the repository: the run says where it lives
        from attnbench.variants import VARIANTS

        VARIANTS.register_source(run["variant"]["name"], run["variant"]["source"], export=True)
    # Lease one GPU before anything touches torch.cuda (it sets CUDA_VISIBLE_DEVICES).
    from attnbench.harness.measure.gpu_lease import acquire

    lease = acquire(run["device"])
    if lease:
        print(f"gpu lease: device {lease['index']} (CUDA_VISIBLE_DEVICES={lease['cuda_visible_devices']})",
              flush=True)
    params, task = run["task"]["data"], run["task"]["name"]  # the registered task (of a task@length too)
    data_file = Path(args.data) if args.data else paths.dataset_file(task, run["task"]["data_key"])
    if not data_file.exists() and not args.data:
        print(f"preparing {data_file} (not found)", flush=True)
        save_prepared(data_file, task, params, build_task(task, params).prepare(data_file.parent / "source"))
    data = load_prepared(data_file, task, params)
    out = Path(args.out) if args.out else RunKey.of(run).dir
    if args.method == "distill":
        record = distill_run(run, data, out, args.teacher_dir, bar=args.progress)
    else:
        record = train_run(run, data, out, bar=args.progress)
    return 0 if record["status"] != "failed" or not args.strict else 1


def cmd_check_variant(args) -> int:
    from attnbench.harness.conformance.checks import CHECK_TIMEOUT_S, CHECKS, FAST_CHECKS, run_checks
    from attnbench.variants import VARIANTS

    name = args.name or args.source.partition(":")[0].rsplit(".", 1)[-1]
    VARIANTS.register_source(name, args.source, export=True)  # exported: the memory check's processes load it
    checks = FAST_CHECKS if args.no_memory else list(CHECKS)
    width = max(map(len, checks))
    print(f"{args.source} as variant {name!r}:", flush=True)
    timeout_s = CHECK_TIMEOUT_S if args.check_timeout is None else args.check_timeout
    results = run_checks(name, checks, timeout_s,  # each line as its check ends
                         report=lambda r: print(f"  {r.status.upper():4}  {r.check:{width}}  {r.detail}", flush=True))
    failed = [r.check for r in results if r.status == "fail"]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed or do not apply"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def cmd_new_variant(args) -> int:
    from attnbench.harness.conformance.template import write_template

    try:
        path, cls = write_template(args.name, Path(args.dir), force=args.force)
    except (ValueError, FileExistsError) as exc:
        raise UsageError(f"new-variant: {exc}") from None
    print(f"wrote {path} (class {cls}: full softmax attention, to replace with your mechanism)\n"
          f"check it:  cd {path.parent} && attnbench check-variant {args.name}:{cls}\n"
          f"use it:    variants: {{{args.name}: {{from: \"{args.name}:{cls}\"}}}} in a config")
    return 0


def cmd_select(args) -> int:
    from attnbench.harness.config.selection import write_selection

    chosen = write_selection([Path(p) for p in args.trials], Path(args.out))
    print(f"{chosen['task']}/{chosen['label']}: selected trial {chosen['trial']} of {chosen['trials']} (validation "
          f"accuracy {chosen['best_val_acc']:.4f}; {chosen['counted']} trial(s) had one): {chosen['point']}; "
          f"wrote {args.out}")
    return 0


def cmd_seed_round(args) -> int:
    from attnbench.harness.config.seed_rounds import write_seed_round

    try:
        seeds, labels = json.loads(args.seeds), json.loads(args.labels)
    except ValueError as exc:
        raise UsageError(f"--seeds / --labels are not JSON ({exc})") from None
    decision = write_seed_round([Path(p) for p in args.records or []], args.task, labels, seeds, args.round,
                                Path(args.out))
    grow = {label: n for label, n in decision["next"].items() if n != decision["counts"][label]}
    print(f"{args.task} round {args.round}: seeds {decision['counts']}; "
          + (f"more seeds for {grow}" if grow else "done: every comparison resolved or at the maximum")
          + f"; wrote {args.out}")
    return 0


def cmd_aggregate(args) -> int:
    from attnbench.harness.results.aggregate import aggregate, left_out_file, set_aside_file

    if args.plan:  # the pipeline's: run_id -> config hash of each planned run
        try:
            plan, plan_name = json.loads(args.plan), "the pipeline's plan"
        except ValueError as exc:
            raise UsageError(f"--plan is not JSON ({exc}): give an object of run_id -> config hash") from None
        if not isinstance(plan, dict) or not all(isinstance(v, str) for v in plan.values()):
            raise UsageError("--plan: give a JSON object of run_id -> config hash")
    else:  # every run of the config, as `snakemake` with that config plans it
        from attnbench.harness.config import DEFAULT_CONFIG, plan_hashes

        config, plan_name = _load(args), str(args.config or DEFAULT_CONFIG)
        plan = plan_hashes(config)
    out = Path(args.out)
    df, aside, left_out = aggregate(args.records or Path(args.runs), out, plan, plan_name)
    for entry in aside:
        print(f"set aside {entry['record']} -> {entry['moved_to']}: {entry['reason']}", file=sys.stderr)
    for entry in left_out:
        print(f"left out: {entry['reason']}", file=sys.stderr)
    print(f"aggregated {len(df)} run records into {out}"
          + (f"; set aside {len(aside)} unreadable or false record(s), listed in {set_aside_file(out)} (the "
             "next snakemake run trains them again)" if aside else "")
          + (f"; left out {len(left_out)} record(s) that are not runs of {plan_name} or repeat one, listed in "
             f"{left_out_file(out)} (left in place)" if left_out else ""))
    return 0


def cmd_bench(args) -> int:
    from attnbench.harness.bench.files import expand_sweep, run_sweep, sweep_plan

    out = Path(args.out or paths.BENCH / f"{args.variant}.json")
    plan = json.loads(args.sweep_json) if args.sweep_json else sweep_plan(_load(args), args.variant,
                                                                          out.parent / ".work")
    if plan.get("variant", args.variant) != args.variant:
        raise UsageError(f"--variant {args.variant} does not match the sweep's variant {plan['variant']}")
    plan.setdefault("variant", args.variant)
    # Lease one GPU before anything touches torch.cuda (it sets CUDA_VISIBLE_DEVICES; resolving
    # `device: auto` below asks torch). The case processes inherit it.
    from attnbench.harness.measure.gpu_lease import acquire

    lease = acquire(plan["device"])
    sweep = expand_sweep(plan, args.cores)  # the device and the cases of this machine
    if args.lengths:
        sweep["cases"] = [c for c in sweep["cases"] if c["n"] in args.lengths]
    if not sweep["cases"]:
        raise UsageError(f"bench: no cases to run for {args.variant} on {sweep['device']}")
    print(f"{args.variant}: {len(sweep['cases'])} cases on {sweep['device']}"
          + (f" (configured: {plan['device']})" if plan["device"] != sweep["device"] else "")
          + (f" (leased GPU {lease['cuda_visible_devices']})" if lease else "")
          + f" with {sweep['threads']} threads -> {out}", flush=True)
    rc = run_sweep(sweep, out, args.pytest_args)
    if rc:
        print(f"attnbench bench: the benchmark run failed (pytest exit status {rc}); {out} not written",
              file=sys.stderr)
    return rc


def cmd_aggregate_bench(args) -> int:
    from attnbench.harness.bench.files import aggregate_bench

    df = aggregate_bench([Path(p) for p in args.inputs], Path(args.out))
    counts = ", ".join(f"{v} {k}" for k, v in df["status"].value_counts().items())
    print(f"{len(df)} cases ({counts}) -> {args.out}")
    return 0


def cmd_report(args) -> int:
    from attnbench.harness.report.render import render_report

    summaries = [] if args.bench_only else [Path(p) for p in args.summary or []]
    benches = [Path(p) for p in args.bench or []]
    for folder in map(Path, args.results or []):
        if not folder.is_dir():
            raise FileNotFoundError(f"--results {folder}: no such folder")
        found = [folder / name for name in ("summary.csv", "bench.csv") if (folder / name).exists()]
        if not found:
            raise FileNotFoundError(f"--results {folder}: holds neither summary.csv nor bench.csv")
        summaries += [p for p in found if p.name == "summary.csv" and not args.bench_only]
        benches += [p for p in found if p.name == "bench.csv"]
    if not summaries and not benches and not args.bench_only:
        summaries = [paths.SUMMARY_CSV]
    try:
        seeds = json.loads(args.seeds) if args.seeds else None
    except ValueError as exc:
        raise UsageError(f"--seeds is not JSON ({exc}): give the config's adaptive seeds settings") from None
    index = render_report(summaries or None, Path(args.out), benches or None, lra_average=args.lra_average,
                          seeds=seeds)
    print(f"report: {index.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnbench", description="Benchmark attention variants on LRA-style tasks.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("--config", help="pipeline config YAML (default: the shipped config/config.yaml, in an "
                        "editable install this checkout's)")
        return sp

    sp = with_config(sub.add_parser("list", help="registered variants and tasks with their parameters (with "
                                    "--config: also the config's variants from outside the repository)"))
    sp.set_defaults(func=cmd_list, config=None)
    sub.add_parser("schema", help="print the complete config JSON schema").set_defaults(func=cmd_schema)
    sp = with_config(sub.add_parser("check-config", help="validate a config (and print it resolved with --show)"))
    sp.add_argument("--show", action="store_true")
    sp.set_defaults(func=cmd_check_config)

    sp = with_config(sub.add_parser("prepare", help="build a task's cached tensor file"))
    sp.add_argument("--task", required=True)
    sp.add_argument("--data-json", help="the task's data settings as JSON (what the pipeline passes)")
    sp.add_argument("--out", required=True, help="dataset file to write")
    sp.set_defaults(func=cmd_prepare)

    sp = with_config(sub.add_parser("train", help="train and evaluate one (task, variant, seed, method)"))
    sp.add_argument("--task", required=True)
    sp.add_argument("--variant", required=True, help="the model's attention variant")
    sp.add_argument("--seed", type=int, required=True)
    sp.add_argument("--method", choices=("labels", "distill"), default="labels",
                    help="labels: train from the labels (default); distill: a student of the config's "
                         "distill.teacher run of the same task and seed")
    sp.add_argument("--out", help="run folder (default: results/runs/TASK/VARIANT/seedS; a distilled "
                    "student: results/runs/TASK/distilled-VARIANT/seedS)")
    sp.add_argument("--run-config", help="the resolved run config as JSON (what the pipeline passes)")
    sp.add_argument("--data", help="prepared dataset file (default: data/TASK/KEY/dataset.pt, prepared if missing)")
    sp.add_argument("--teacher-dir", help="--method distill: the teacher's run folder, with record.json and best.pt "
                    "(default: results/runs/TASK/TEACHER/seedS)")
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
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. An error the user can fix (a bad config, missing or corrupt data, a busy
    lock, a missing file) is one line on stderr and exit status 2; anything else is a bug and keeps
    its traceback. Ctrl-C, SIGTERM or SIGHUP stops the command and every process it started
    (``core.signals``): one line, and exit status 128 + the signal's number (130 for Ctrl-C)."""
    from attnbench.harness.core import signals

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with signals.stop_on_signals():
            if argv[:1] == ["compare"]:
                from attnbench.harness.compare.command import main as compare_main

                return compare_main(argv[1:])
            args = build_parser().parse_args(argv)
            return args.func(args)
    except (UserError, *PATH_ERRORS) as exc:
        print(f"attnbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"attnbench: {signals.describe(exc)}", file=sys.stderr)
        return signals.exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
