"""The ``attnbench`` command line: list, schema, check-config, estimate, prepare, train (or distil), check-variant,
new-variant, select, seed-round, aggregate, bench, aggregate-bench, report, progress (and compare).

``main`` is the ``attnbench`` console script (and ``python -m attnbench.harness.cli``): it parses the arguments
with ``parser.build_parser`` and runs the subcommand, one of ``setup_commands`` (list, schema, check-config,
check-variant, new-variant), ``estimate_command`` (estimate, progress) or ``pipeline_commands`` (the Snakemake
pipeline's steps); ``compare`` and its arguments go to ``compare_command`` (which reads ``--config``) and on to
``attnbench.harness.compare.command``."""
from __future__ import annotations

import os
import sys

from attnbench.harness.cli.parser import build_parser
from attnbench.harness.core.errors import PATH_ERRORS, UserError


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. An error the user can fix (a bad config, missing or corrupt data, a busy
    lock, a missing file) is one line on stderr and exit status 2; anything else is a bug and keeps
    its traceback. Output to a reader that went away (``| head``) ends quietly with status 141.
    Ctrl-C, SIGTERM or SIGHUP stops the command and every process it started (``core.signals``):
    one line, and exit status 128 + the signal's number (130 for Ctrl-C)."""
    from attnbench.harness.core import signals

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with signals.stop_on_signals():
            if argv[:1] == ["compare"]:
                from attnbench.harness.cli.compare_command import main as compare_main

                status = compare_main(argv[1:])
            else:
                args = build_parser().parse_args(argv)
                status = args.func(args)
            sys.stdout.flush()  # here, so that a reader gone away is caught below, not at exit
            return status
    except BrokenPipeError:
        # the reader stopped early (`attnbench compare --list | head`): it had what it wanted; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is left to flush goes nowhere
        return 141  # 128 + SIGPIPE, as a shell reports a command whose reader went away
    except (UserError, *PATH_ERRORS) as exc:
        print(f"attnbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"attnbench: {signals.describe(exc)}", file=sys.stderr)
        return signals.exit_status(exc)
