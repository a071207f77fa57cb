"""The subcommands the Snakemake pipeline runs, one per step (each also runs by hand): ``prepare`` (a task's
tensor file), ``train`` (one run: from labels, distilled, a pretraining or self-pretrained), ``select`` (a tuned
trial), ``seed-round`` (adaptive seeds), ``aggregate`` (the runs' summary table), ``bench`` (one variant's
efficiency sweep), ``aggregate-bench`` and ``report``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from attnbench.harness.cli.setup_commands import config_of
from attnbench.harness.core import paths
from attnbench.harness.core.errors import UsageError

# Each command imports what it runs inside its function: torch, pandas and matplotlib take seconds
# to import, and `attnbench --help` or a report should not pay for the training code.
from attnbench.harness.results.records import RunKey, task_id


def cmd_prepare(args: argparse.Namespace) -> int:
    from attnbench.harness.config import task_data_params
    from attnbench.harness.results.set_aside import note_prepared
    from attnbench.tasks.base import build_task, save_prepared

    params = json.loads(args.data_json) if args.data_json else task_data_params(config_of(args), args.task)
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


def cmd_train(args: argparse.Namespace) -> int:
    from attnbench.harness.config import resolve_run
    from attnbench.harness.run.distill import distill_run
    from attnbench.harness.run.pretrain import pretrain_run
    from attnbench.harness.run.self_pretrained import spt_run
    from attnbench.harness.run.train import train_run
    from attnbench.tasks.base import build_task, load_prepared, save_prepared

    if args.teacher_dir and args.method != "distill":
        raise UsageError("--teacher-dir: only a distilled run (--method distill) has a teacher")
    if args.pretrain_dir and args.method != "spt":
        raise UsageError("--pretrain-dir: only a self-pretrained run (--method spt) is fine-tuned from a pretraining")
    run = (json.loads(args.run_config) if args.run_config
           else resolve_run(config_of(args), args.task, args.variant, args.seed, args.method))
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
    elif args.method == "pretrain":
        record = pretrain_run(run, data, out, bar=args.progress)
    elif args.method == "spt":
        record = spt_run(run, data, out, args.pretrain_dir, bar=args.progress)
    else:
        record = train_run(run, data, out, bar=args.progress)
    return 0 if record["status"] != "failed" or not args.strict else 1


def cmd_select(args: argparse.Namespace) -> int:
    from attnbench.harness.config.selection import write_selection

    chosen = write_selection([Path(p) for p in args.trials], Path(args.out))
    print(f"{chosen['task']}/{chosen['label']}: selected trial {chosen['trial']} of {chosen['trials']} (validation "
          f"accuracy {chosen['best_val_acc']:.4f}; {chosen['counted']} trial(s) had one): {chosen['point']}; "
          f"wrote {args.out}")
    return 0


def cmd_seed_round(args: argparse.Namespace) -> int:
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


def cmd_aggregate(args: argparse.Namespace) -> int:
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

        config, plan_name = config_of(args), str(args.config or DEFAULT_CONFIG)
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


def cmd_bench(args: argparse.Namespace) -> int:
    from attnbench.harness.bench.files import expand_sweep, run_sweep, sweep_plan

    out = Path(args.out or paths.BENCH / f"{args.variant}.json")
    plan = json.loads(args.sweep_json) if args.sweep_json else sweep_plan(config_of(args), args.variant,
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


def cmd_aggregate_bench(args: argparse.Namespace) -> int:
    from attnbench.harness.bench.files import aggregate_bench

    df = aggregate_bench([Path(p) for p in args.inputs], Path(args.out))
    counts = ", ".join(f"{v} {k}" for k, v in df["status"].value_counts().items())
    print(f"{len(df)} cases ({counts}) -> {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
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
