"""Nothing false in the report (issue 26): runs stopped by their time limit or a diverging loss still
tested a checkpoint, so every accuracy view counts them, marked †, and the Summary never names a best
variant past a better one; a measurement that is not a number in its range (``inf`` tokens/s) is
missing, said, and never a crash; a damaged ``curve.csv`` is left out (or cut to its readable rows)
with a warning in the report and on stderr. Runs' tables are built as in test_report_summary.py."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
from test_report_summary import run_row, table

from attnbench.harness.cli import main
from attnbench.harness.report.curves import read_curve
from attnbench.harness.report.frontier import frontiers, points
from attnbench.harness.report.marks import NAMED, not_finished
from attnbench.harness.report.measurements import RUN_COLUMNS, clean, run_name
from attnbench.harness.report.render import render_report
from attnbench.harness.report.summary import task_line

HEADER = "step,lr,train_loss,val_loss,val_acc,elapsed_s\r\n"  # as csv.DictWriter writes it
GOOD_CURVE = HEADER + "10,0.1,1.0,1.0,0.30,1.0\r\n20,0.1,0.9,0.9,0.40,2.0\r\n"


def stopped(row: dict, status: str, steps_done: int, steps_planned: int = 300) -> dict:
    return {**row, "status": status, "steps_done": steps_done, "steps_planned": steps_planned,
            "tested_checkpoint": "best", "message": f"{status} (test message)"}


def test_the_summary_never_names_a_best_variant_past_a_better_timed_out_one():
    # the image run: linear finished at 58.6%, window hit the time limit having done all its steps
    rows = [run_row("image", "linear", s, 0.586) for s in (0, 1)]
    rows += [stopped(run_row("image", "window", s, 0.760), "timeout", 300, 300) for s in (0, 1)]
    line = task_line(table(rows), "image")
    assert line.startswith("**image** (N=48, 2 seeds): best **window**† 76.0% (95% CI ")
    assert "below it: linear (-17.4 points" in line
    assert "best of the variants whose runs all finished ok: **linear** 58.6%" in line
    assert line.endswith("† Did not finish ok: window seeds 0, 1 stopped by the time limit after 300 of 300 steps "
                         "(best-validation checkpoint tested).")


def incomplete_runs() -> pd.DataFrame:
    """listops at LRA's settings, seeds 0 and 1: full finished; window hit its time limit (the best);
    linear diverged in seed 0; lsh ran out of memory (no test accuracy); a student distilled from window."""
    def row(variant, seed, acc, **kw):
        return run_row("listops", variant, seed, acc, lra=True, seq_len=2000, **kw)

    rows = []
    for s in (0, 1):
        rows.append(row("full", s, 0.50 + 0.02 * s, tok_s=1000, mem=100))
        rows.append(stopped(row("window", s, 0.60 + 0.02 * s, tok_s=2000, mem=80), "timeout", 300))
        linear = row("linear", s, 0.40 + 0.02 * s, tok_s=3000, mem=60)
        rows.append(stopped(linear, "diverged", 120) if s == 0 else linear)
        rows.append({**stopped(row("lsh", s, math.nan), "oom", 0), "test_acc": None, "best_val_acc": None,
                     "tested_checkpoint": None, "train_steps_per_s": None, "train_tokens_per_s": None,
                     "eval_tokens_per_s": None})
        rows.append({**row("distilled[window]", s, 0.45), "method": "distill",
                     "teacher_run_id": f"listops/window/seed{s}", "teacher_status": "timeout",
                     "teacher_test_acc": 0.60 + 0.02 * s, "teacher_layers": 2,
                     "teacher_train_tokens_per_s": 2000.0, "teacher_eval_tokens_per_s": 6000.0,
                     "teacher_params": 1000, "distill_temperature": 2.0, "distill_alpha": 0.5})
    df = table(rows)
    df["published_as"] = df["variant"].map({"full": "Transformer", "linear": "Linear Trans."})
    return df


def section(md: str, heading: str) -> str:
    part = md[md.index(f"## {heading}"):]
    return part[:part.index("\n## ", 3)]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """The folder of the report of ``incomplete_runs``."""
    tmp = tmp_path_factory.mktemp("incomplete")
    incomplete_runs().to_csv(tmp / "summary.csv", index=False)
    return render_report(tmp / "summary.csv", tmp / "out").parent


@pytest.fixture(scope="module")
def report(rendered) -> str:
    return (rendered / "summary.md").read_text(encoding="utf-8")


BANNER = ("5 of 10 runs did not finish ok: 2 oom (listops/lsh seeds 0, 1), 2 timeout (listops/window seeds 0, 1), "
          "1 diverged (listops/linear seed 0)")


def test_the_runs_that_did_not_finish_are_said_in_a_sentence():
    assert not_finished(incomplete_runs()) == BANNER
    assert not_finished(table([run_row("listops", "full", 0, 0.5)])) is None
    # tuning trials by their index; past NAMED (task, variant) groups a status counts the rest
    trials = [{**run_row("text", "lsh", 0, 0.3), "status": "failed", "stage": "tune", "trial": t} for t in (3, 12)]
    many = [stopped(run_row(f"t{i}", "window", 0, 0.5), "timeout", 10) for i in range(NAMED + 2)]
    df = pd.DataFrame(trials + many + [run_row("text", "full", 0, 0.5)])
    assert not_finished(df) == ("8 of 9 runs did not finish ok: 6 timeout (t0/window seed 0; t1/window seed 0; "
                                "t2/window seed 0; t3/window seed 0; and 2 more), 2 failed (text/lsh trials 3, 12)")


@pytest.mark.slow
def test_the_report_opens_with_that_sentence(rendered):
    page = (rendered / "index.html").read_text(encoding="utf-8")
    assert (f"<p class='bad'>{BANNER} (see Runs). Those with a test accuracy (a time limit or a diverging loss "
            "stops a run, and it still tests a checkpoint) count in every accuracy view, marked † with where they "
            "stopped; those without one are counted there by status.</p>") in page
    assert "{&quot;" not in page  # no dict printed


@pytest.mark.slow
def test_every_accuracy_view_counts_the_runs_that_stopped_early_and_marks_them(report):
    window = "window seeds 0, 1 stopped by the time limit after 300 of 300 steps (best-validation checkpoint tested)"
    linear = "linear seed 0 diverged (a non-finite loss) after 120 of 300 steps (best-validation checkpoint tested)"
    summary = section(report, "Summary")
    assert "best **window**† 61.0%" in summary and "all finished ok: **full** 51.0%" in summary
    assert window in summary and linear in summary
    accuracy = section(report, "Test accuracy (%)")
    assert ("| listops | 45.0 ± 0.0 (n=2) | 51.0 ± 1.4 (n=2) | 41.0 ± 1.4 (n=2; diverged×1)† | – OOM×2 "
            "| 61.0 ± 1.4 (n=2; timeout×2)† | 10.0 | 12.0 |") in accuracy
    assert window in accuracy and linear in accuracy
    intervals = section(report, "Accuracy with confidence intervals")
    assert "| listops | window | 61.0† | " in intervals and "| listops | full | 51.0 | " in intervals
    paired = section(report, "Each variant against full attention (paired by seed)")
    assert "| listops | window | +10.0† |" in paired and "| listops | linear | -10.0† |" in paired
    assert "| listops | distilled[window] | -6.0 |" in paired
    lra = section(report, "LRA Table 1 comparison")  # one task of five: no average
    assert "| window (this run) | – | 61.00† | – | 2 |" in lra and "| full (this run) | – | 51.00 | – | 2 |" in lra
    assert "| 2/2† |" in section(report, "Distillation")  # the teacher hit its time limit
    cost = section(report, "Training cost (median over seeds)")
    assert "| listops | window | 2000 | 32 | 2.0 | 2000 | 6000 | 80.0 | 1000 | 2† |" in cost
    assert "| listops | full | 2000 | 32 | 1.0 | 1000 | 3000 | 100.0 | 1000 | 2 |" in cost
    assert "| listops | window | 0 | timeout | 60.0 | 60.0 | 100 | 300 of 300 |" in section(report, "Runs")


def test_the_frontier_counts_and_marks_them():
    df = incomplete_runs()
    pts = points(df).set_index("variant")
    assert pts.loc["window", "marked"] and pts.loc["linear", "marked"] and not pts.loc["full", "marked"]
    assert "lsh" not in pts.index  # no test accuracy: nothing to place
    # window (timeout) is the most accurate and faster than full, linear (diverged once) the fastest
    assert frontiers(df)["listops"]["throughput"] == ["linear†", "window†"]


def test_a_measurement_out_of_its_range_is_missing_and_said(tmp_path):
    df = table([run_row("listops", "full", 0, 0.5), run_row("listops", "window", 0, 0.6)])
    df = df.astype({"train_tokens_per_s": object, "peak_memory_mb": object, "test_acc": object})
    df.loc[1, ["train_tokens_per_s", "peak_memory_mb", "test_acc"]] = [math.inf, -5.0, "abc"]
    out, warnings = clean(df, tmp_path / "summary.csv", RUN_COLUMNS, run_name)
    assert out.loc[1, ["train_tokens_per_s", "peak_memory_mb", "test_acc"]].isna().all()
    assert out.loc[0, "train_tokens_per_s"] == 1000.0 and out.loc[0, "test_acc"] == 0.5
    assert warnings == [
        f"`{tmp_path / 'summary.csv'}`: `test_acc` is not a number from 0 to 1 in 1 row(s) "
        "(listops/window seed 0: 'abc'); treated as missing.",
        f"`{tmp_path / 'summary.csv'}`: `train_tokens_per_s` is not a finite number ≥ 0 in 1 row(s) "
        "(listops/window seed 0: inf); treated as missing.",
        f"`{tmp_path / 'summary.csv'}`: `peak_memory_mb` is not a finite number ≥ 0 in 1 row(s) "
        "(listops/window seed 0: -5.0); treated as missing."]


@pytest.mark.parametrize(("content", "rows", "problem"), [
    (GOOD_CURVE.encode(), [10, 20], None),
    # cut off inside its last number: 0.4 would be drawn as 0.
    ((GOOD_CURVE + "30,0.1,0.8,0.8,0.").encode(), [10, 20], "ends mid-line (cut off?): its last row left out"),
    ((GOOD_CURVE + "30,0.1,0.8\r\n").encode(), [10, 20], "1 of 3 row(s) without a step and an accuracy in 0-1"),
    ((GOOD_CURVE + "30,0.1,0.8,0.8,7.5,3.0\r\n").encode(), [10, 20], "1 of 3 row(s) without a step and an accuracy"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", None, "is not UTF-8 text (byte 0): left out"),
    (b"step,lr\x00\x00\x00\x00", None, "holds NUL bytes (not a text table): left out"),
    (b"", None, "is empty (not even its header): left out"),
    (b"epoch,accuracy\r\n1,0.5\r\n", None, "has no step, val_acc column: left out"),
    ((GOOD_CURVE + "30,0.1,0.8,0.8,0.5,3.0,9,9\r\n").encode(), None, "is not a readable table (Error tokenizing"),
])
def test_a_damaged_curve_is_cut_to_its_readable_rows_or_left_out_and_said(tmp_path, content, rows, problem):
    path = tmp_path / "curve.csv"
    path.write_bytes(content)
    curve, said = read_curve(path)
    assert (None if curve is None else list(curve["step"])) == rows
    if problem is None:
        assert said is None
    else:
        assert said.startswith(f"`{path}` ") and problem in said
    assert read_curve(tmp_path / "none.csv") == (None, None)  # a run that never evaluated: nothing to say


@pytest.mark.slow
def test_attnbench_report_on_an_inf_throughput_and_damaged_curves(tmp_path, capsys):
    """The CLI path: `Infinity` tokens/s (the OverflowError of the issue) and a binary and a cut-off
    curve.csv beside good ones: exit 0, every warning at the top of the report and on stderr."""
    rows = [run_row("image", v, s, 0.5 + 0.1 * (v == "window")) for v in ("full", "window") for s in (0, 1)]
    for r in rows:
        r["record"] = str(tmp_path / "runs" / r["variant"] / f"seed{r['seed']}" / "record.json")
        r["train_tokens_per_s"] = math.inf if r["variant"] == "window" else 1000.0
    df = table(rows)
    curves = [tmp_path / "runs" / r["variant"] / f"seed{r['seed']}" / "curve.csv" for r in rows]
    for path, content in zip(curves, [GOOD_CURVE.encode(), b"\x89PNG\xff\xfe\x00", GOOD_CURVE.encode(),
                                      (GOOD_CURVE + "30,0.1,0.8,0.8,0.").encode()], strict=True):
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
    summary, out = tmp_path / "summary.csv", tmp_path / "reports"
    df.to_csv(summary, index=False)
    assert main(["report", "--summary", str(summary), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    said = [f"Validation curve `{curves[1]}` is not UTF-8 text (byte 0): left out.",
            f"Validation curve `{curves[3]}` ends mid-line (cut off?): its last row left out.",
            f"`{summary}`: `train_tokens_per_s` is not a finite number ≥ 0 in 2 row(s) (image/window seed 0: inf; "
            "image/window seed 1: inf); treated as missing."]
    md = (out / "summary.md").read_text(encoding="utf-8")
    top = md[:md.index("## Summary")]
    assert "**3 warning(s): parts of the results could not be used as they are:**" in top
    page = (out / "index.html").read_text(encoding="utf-8")
    for text in said:
        assert f"attnbench report: warning: {text}" in err and f"- {text}" in top
        assert re.sub(r"`([^`]+)`", r"<code>\1</code>", text) in page
    assert "Traceback" not in err
    # the readable curves are drawn; window's throughput is missing, not infinite
    assert (out / "figures" / "validation_curves.png").stat().st_size > 1000
    assert "| image | window | 48 | 32 | 1.0 |  | 3000 |" in section(md, "Training cost (median over seeds)")
