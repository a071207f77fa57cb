"""The subcommands that set up and check a benchmark before it runs: ``list`` (the registered variants and
tasks), ``schema``, ``check-config``, ``check-variant`` (the conformance checks on your attention class) and
``new-variant`` (a variant to start from); and ``config_of``, the ``--config`` every command that takes one
loads."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from attnbench.harness.core.errors import UsageError

# Each command imports what it runs inside its function: torch, pandas and matplotlib take seconds
# to import, and `attnbench --help` or a report should not pay for the training code.


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    """The validated config of ``args.config`` (None: the shipped config/config.yaml)."""
    from attnbench.harness.config import load_config

    return load_config(args.config)


def cmd_list(args: argparse.Namespace) -> int:
    from attnbench.harness.core.registry import dataclass_schema
    from attnbench.tasks import TASKS
    from attnbench.variants import VARIANTS

    if args.config:  # its `from:` variants join the built-in and installed ones
        config_of(args)
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


def cmd_schema(args: argparse.Namespace) -> int:
    from attnbench.harness.config import build_schema

    print(json.dumps(build_schema(), indent=2))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config; then, with ``--estimate`` (default: on a terminal, without ``--show``), a line of its
    expected wall time here (``attnbench estimate``'s headline) before the ``valid`` line."""
    from attnbench.harness.config import DEFAULT_CONFIG

    config = config_of(args)
    if not args.show:
        if args.estimate if args.estimate is not None else sys.stdout.isatty():
            from attnbench.harness.cli.estimate_command import estimate_line

            print(estimate_line(config), flush=True)
        print(f"{args.config or DEFAULT_CONFIG}: valid")
        return 0
    print(json.dumps({**config, "resolved_models": resolved_models(config), "mechanism_forms": mechanism_forms(config)},
                     indent=2))
    return 0


def mechanism_forms(config: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """Per task, each variant's attention as the runs compute it: "LRA's code" or "paper"
    (``results.aggregate.mechanism_form``, what the report's LRA table says), with the Table 1 row it is."""
    from attnbench.harness.config import resolve_run
    from attnbench.harness.config.runs import task_instances
    from attnbench.harness.config.seeds import seed_list
    from attnbench.harness.results.aggregate import mechanism_form, published_as

    seed = seed_list(config)[0]
    out: dict[str, dict[str, str | None]] = {}
    for task in task_instances(config):
        for variant in config["variants"]:
            run = resolve_run(config, task, variant, seed)
            record = {"config": run, "method": "labels"}
            row = published_as(record)
            out.setdefault(task, {})[variant] = f"{mechanism_form(record)}{f' ({row})' if row else ''}"
    return out


def resolved_models(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
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



def cmd_check_variant(args: argparse.Namespace) -> int:
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


def cmd_new_variant(args: argparse.Namespace) -> int:
    from attnbench.harness.conformance.template import write_template

    try:
        path, cls = write_template(args.name, Path(args.dir), force=args.force, layer=args.layer)
    except (ValueError, FileExistsError) as exc:
        raise UsageError(f"new-variant: {exc}") from None
    what = ("a wrapper of torch's nn.MultiheadAttention, to replace with your layer" if args.layer
            else "full softmax attention, to replace with your mechanism")
    print(f"wrote {path} (class {cls}: {what})\n"
          f"check it:  cd {path.parent} && attnbench check-variant {args.name}:{cls}\n"
          f"use it:    variants: {{{args.name}: {{from: \"{args.name}:{cls}\"}}}} in a config\n"
          f"time it:   attnbench compare --config that.yaml (beside the config's other variants and their peers)")
    return 0
