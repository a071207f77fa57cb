"""The pipeline's progress line from the invocation's plan (``harness.estimate.pipeline_progress``): runs done
are the records written since the plan, the ETA is the rest of the plan scaled by the pace of the finished
runs, and without estimates the elapsed time per finished run; ``attnbench progress`` never fails a job."""
from __future__ import annotations

import json
import os
import re
import time

from attnbench.harness.cli import main as cli_main
from attnbench.harness.estimate.pipeline_progress import pace, progress_line, read_plan, write_plan


def finish(record, wall_s: float, at: float) -> None:
    """A run's record, written at ``at``, whose training took ``wall_s``."""
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"training": {"wall_s": wall_s}}))
    os.utime(record, (at, at))


def make_plan(tmp_path, runs: int, estimated: bool = True, cores: int = 1, tail_s: float | None = 5.0):
    records = [tmp_path / "runs" / f"r{i}" / "record.json" for i in range(runs)]
    entries = [{"record": str(r), "job_s": 10.0 if estimated else None, "train_s": 8.0 if estimated else None,
                "threads": 1} for r in records]
    sweep = tmp_path / "bench" / "full.json"
    write_plan(tmp_path / "plan.json", time.time() - 60, cores, entries,
               [{"output": str(sweep), "job_s": 20.0}] if estimated else [], tail_s)
    return read_plan(tmp_path / "plan.json"), records, sweep


def eta_seconds(line: str) -> int:
    minutes, seconds = re.search(r"ETA (\d+):(\d\d)$", line).groups()
    return 60 * int(minutes) + int(seconds)


def test_runs_done_are_the_records_written_since_the_plan(tmp_path):
    plan, records, _ = make_plan(tmp_path, 3)
    finish(records[0], 8.0, plan["planned"] - 30)  # an old record of a run this invocation trains again
    assert progress_line(plan).startswith("attnbench: 0 of 3 runs done, elapsed 1:0")
    finish(records[0], 8.0, plan["planned"] + 1)
    line = progress_line(plan, now=plan["started"] + 125)
    assert line.startswith("attnbench: 1 of 3 runs done, elapsed 2:05, ETA ")


def test_the_eta_is_the_rest_of_the_plan_at_the_pace_of_the_finished_runs(tmp_path):
    plan, records, sweep = make_plan(tmp_path, 3)
    finish(records[0], 8.0, plan["planned"] + 1)  # as expected: pace 1
    on_time = eta_seconds(progress_line(plan))
    assert on_time == 2 * 10 + 20 + 5  # two runs and the sweep one after the other on one core, then the tail
    finish(records[0], 16.0, plan["planned"] + 1)  # twice as long as expected: everything left takes twice as long
    assert pace([plan["runs"][0]]) == 2.0
    assert eta_seconds(progress_line(plan)) == 2 * on_time
    finish(sweep, 0.0, plan["planned"] + 2)  # the sweep is done too
    assert eta_seconds(progress_line(plan)) == 2 * (2 * 10 + 5)


def test_runs_side_by_side_shorten_the_eta(tmp_path):
    plan, records, _ = make_plan(tmp_path, 5, cores=2, tail_s=0.0)
    finish(records[0], 8.0, plan["planned"] + 1)
    assert eta_seconds(progress_line(plan)) == 2 * 10 + 20  # 4 runs of 10 s on 2 cores, the sweep on both


def test_without_estimates_the_eta_follows_the_elapsed_time_per_run(tmp_path):
    plan, records, _ = make_plan(tmp_path, 4, estimated=False)
    assert progress_line(plan, now=plan["started"] + 60).endswith("ETA 0:00")  # nothing done: nothing to go by
    finish(records[0], 8.0, plan["planned"] + 1)
    finish(records[1], 8.0, plan["planned"] + 1)
    line = progress_line(plan, now=plan["started"] + 100)
    assert line == "attnbench: 2 of 4 runs done, elapsed 1:40, ETA 1:40"


def test_the_progress_command_prints_the_line_and_never_fails(tmp_path, capsys):
    plan, records, _ = make_plan(tmp_path, 2)
    finish(records[1], 8.0, plan["planned"] + 1)
    assert cli_main(["progress", "--plan", str(tmp_path / "plan.json")]) == 0
    assert capsys.readouterr().out.startswith("attnbench: 1 of 2 runs done, elapsed ")
    (tmp_path / "broken.json").write_text("{not json")
    for missing in ("nothing.json", "broken.json"):
        assert cli_main(["progress", "--plan", str(tmp_path / missing)]) == 0
    assert capsys.readouterr().out == ""


def test_after_a_run_the_plan_is_found_from_its_record(tmp_path):
    from attnbench.harness.cli.estimate_command import plan_of_record

    for results in ("results", "out/ng20/results"):
        for record in (f"{results}/runs/ng20/full/seed0/record.json", f"{results}/tune/ng20/full/trial3/record.json"):
            assert plan_of_record(tmp_path / record) == tmp_path / results / ".progress" / "plan.json"

