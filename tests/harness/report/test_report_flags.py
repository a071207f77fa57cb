"""The Summary's evidence flags (issue 29): runs still improving at their last step, training throughput
that differs widely between seeds, cost measurements pooled across hosts; each line exact, absent where
nothing applies, and the rules at their edges. Also the curves' figure, which draws validation accuracy and
training loss against the step and against wall-clock time. Runs' tables are built as in
test_report_summary.py, with curve.csv files written beside their record paths."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from test_report_summary import MACHINE_A, MACHINE_B, run_row, table, three_variants

import attnbench.harness.report.writer as writer
from attnbench.harness.report.curves import figure_curves, load_curves, read_curve
from attnbench.harness.report.flags import (
    SPREAD,
    hosts_line,
    improving_line,
    improving_runs,
    invocations_line,
    spread_line,
    spread_table,
    still_improving,
)
from attnbench.harness.report.machines import with_machines
from attnbench.harness.report.render import render_report
from attnbench.harness.report.summary import summary_section
from attnbench.harness.report.writer import Document

RISING, FLAT, FALLING = (0.30, 0.40, 0.50), (0.30, 0.50, 0.50), (0.30, 0.50, 0.45)
IMPROVING = ("Still improving at the last step (in more than half of their runs the last evaluation's validation "
             "accuracy is above every earlier one): ")
MORE = ". More steps may change the ranking."
SPREAD_HEAD = ("Training throughput differs widely between seeds (the fastest run more than 1.25× the slowest; the "
               "cost tables show the median): ")
HOSTS_HEAD = "Cost measurements pooled across hosts (one median holds runs measured on different hosts): "


def curve_run(tmp: Path, task: str, variant: str, seed: int, accs: tuple[float, ...], **kw) -> dict:
    """A run whose curve.csv (written under ``tmp``) holds ``accs`` at steps 10, 20, ...; its test accuracy the
    last of them."""
    row = run_row(task, variant, seed, accs[-1], **kw)
    row["record"] = str(tmp / task / variant / f"seed{seed}" / "record.json")
    lines = ["step,lr,train_loss,val_loss,val_acc,elapsed_s,train_s,train_flops"]
    lines += [f"{10 * (i + 1)},0.1,{2.0 - acc:g},{2.0 - acc:g},{acc:g},{3.0 * (i + 1) + seed:g},{2.0 * (i + 1):g},"
              for i, acc in enumerate(accs)]
    path = Path(row["record"]).parent / "curve.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return row


def curve(accs: list[float], steps: list[int] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"step": steps or [10 * (i + 1) for i in range(len(accs))], "val_acc": accs})


# ---------------------------------------------------------------- still improving

def test_a_run_is_still_improving_when_its_last_evaluation_beats_every_earlier_one():
    assert still_improving(curve(list(RISING))) is True
    assert still_improving(curve([0.50, 0.20, 0.51])) is True  # above the best so far, not only the one before
    assert still_improving(curve(list(FLAT))) is False  # equal to an earlier best: not above it
    assert still_improving(curve(list(FALLING))) is False
    assert still_improving(curve([0.20, 0.60, 0.50, 0.55])) is False  # rising at the end, below the best
    assert still_improving(curve([0.50])) is None  # one evaluation: no rise to tell
    assert still_improving(curve([0.50, 0.30], steps=[20, 10])) is True  # by step, not by row


def test_the_summary_names_the_pairs_most_of_whose_runs_are_still_improving(tmp_path):
    rows = [curve_run(tmp_path, "listops", "full", s, RISING) for s in (0, 1)]  # 2 of 2: named
    rows += [curve_run(tmp_path, "listops", "window", s, a) for s, a in ((0, RISING), (1, FLAT))]  # 1 of 2: not
    rows += [curve_run(tmp_path, "listops", "linear", s, a)  # 2 of 3: named
             for s, a in ((0, RISING), (1, FALLING), (2, (0.1, 0.2, 0.3, 0.4)))]
    rows += [curve_run(tmp_path, "text", "full", s, (0.6,)) for s in (0, 1)]  # one evaluation each: not counted
    rows += [curve_run(tmp_path, "text", "lsh", 0, FLAT), curve_run(tmp_path, "text", "lsh", 1, RISING),
             curve_run(tmp_path, "text", "lsh", 2, RISING)]
    rows.append(run_row("text", "lsh", 3, 0.4))  # no curve: not counted
    df = table(rows)
    assert improving_line(df) == (IMPROVING + "**listops**: full (2 of 2 runs), linear (2 of 3 runs); **text**: lsh "
                                  "(2 of 3 runs)" + MORE)
    counts = improving_runs(df).set_index(["task", "variant"])
    assert ("text", "full") not in counts.index and counts.loc[("listops", "window"), "improving"] == 1


def test_runs_without_a_test_accuracy_are_not_counted(tmp_path):
    rows = [curve_run(tmp_path, "listops", "full", s, RISING) for s in (0, 1)]
    rows += [curve_run(tmp_path, "listops", "full", s, FALLING) for s in (2, 3)]
    rows[0].update(test_acc=None, status="oom")  # 1 of 3 tested runs rising: not named
    assert improving_line(table(rows)) is None
    rows[2].update(test_acc=None, status="failed")  # 1 of 2: still not (more than half, not half)
    assert improving_line(table(rows)) is None
    rows[3].update(status="timeout")  # a stopped run with a test accuracy counts as any other
    assert improving_line(table(rows[1:2])) == IMPROVING + "**listops**: full (1 of 1 runs)" + MORE


def test_no_improving_line_without_curves_or_when_none_is_rising(tmp_path):
    assert improving_line(three_variants()) is None  # records in no folder: no curves
    assert improving_line(table([])) is None
    df = table([curve_run(tmp_path, "listops", v, s, FLAT) for v in ("full", "window") for s in (0, 1)])
    assert improving_line(df) is None


# ---------------------------------------------------------------- throughput spread and hosts

def test_the_summary_flags_a_throughput_spread_with_its_numbers():
    df = table([run_row("listops", "full", 0, 0.5, tok_s=27_856.0), run_row("listops", "full", 1, 0.5, tok_s=17_158.0),
                run_row("listops", "window", 0, 0.5, tok_s=2000.0), run_row("listops", "window", 1, 0.5, tok_s=2100.0),
                run_row("text", "lsh", 0, 0.5, tok_s=900.0), run_row("text", "lsh", 1, 0.5, tok_s=1000.0),
                run_row("text", "lsh", 2, 0.5, tok_s=1500.0)])
    assert spread_line(df) == (SPREAD_HEAD + "**listops**: full 17,158–27,856 tokens/s over 2 runs (1.62×); "
                               "**text**: lsh 900–1,500 tokens/s over 3 runs (1.67×).")


def test_the_spread_threshold_is_strict_and_needs_two_measured_runs():
    def two(high: float) -> pd.DataFrame:
        return table([run_row("listops", "full", 0, 0.5, tok_s=1000.0), run_row("listops", "full", 1, 0.5, tok_s=high)])

    assert SPREAD == 1.25
    assert spread_line(two(1250.0)) is None  # exactly 1.25×: not above it
    assert spread_line(two(1260.0)) == SPREAD_HEAD + "**listops**: full 1,000–1,260 tokens/s over 2 runs (1.26×)."
    assert spread_line(two(1260.0), threshold=1.3) is None
    one = table([run_row("listops", "full", 0, 0.5, tok_s=1000.0)])
    assert spread_line(one) is None and spread_table(one).empty  # one seed: no spread
    unmeasured = two(5000.0)
    unmeasured.loc[1, "train_tokens_per_s"] = None  # a run that measured nothing (OOM) is not the slowest
    assert spread_line(unmeasured) is None
    zero = two(5000.0)
    zero.loc[0, "train_tokens_per_s"] = 0.0  # not a throughput: left out, not a spread of infinity
    assert spread_line(zero) is None


def test_throughput_on_different_machines_is_never_a_spread_but_within_one_it_is():
    rows = [run_row("listops", "full", s, 0.5, tok_s=1000.0, machine=MACHINE_A) for s in (0, 1)]
    rows += [run_row("listops", "full", s, 0.5, tok_s=9000.0, machine=MACHINE_B) for s in (2, 3)]
    assert spread_line(with_machines(table(rows))) is None  # 9× across machines: costs are per machine
    rows[3]["train_tokens_per_s"] = 12_000.0
    assert spread_line(with_machines(table(rows))) == (
        SPREAD_HEAD + "**listops**: full @ Test GPU B (cuda, torch 2.13.0, bbbbbbb) 9,000–12,000 tokens/s over "
        "2 runs (1.33×).")


def test_cost_rows_from_several_hosts_of_one_machine_are_flagged():
    rows = [run_row("listops", "full", s, 0.5, machine={**MACHINE_A, "host": h})
            for s, h in ((0, "node2"), (1, "node1"), (2, "node1"))]
    rows += [run_row("listops", "window", s, 0.5) for s in (0, 1)]  # one host: not flagged
    rows.append(run_row("text", "full", 0, 0.5, machine={**MACHINE_A, "host": None}))
    rows.append(run_row("text", "full", 1, 0.5))
    df = with_machines(table(rows))
    assert hosts_line(df) == (HOSTS_HEAD + "**listops**: full (node1 ×2, node2 ×1); **text**: full (ha ×1, "
                              "unknown host ×1).")
    assert hosts_line(with_machines(table(rows[3:5]))) is None
    # two machines, each on its own host: costs are per machine already
    two = [run_row("listops", "full", s, 0.5, machine=m) for s, m in ((0, MACHINE_A), (1, MACHINE_B))]
    assert hosts_line(with_machines(table(two))) is None


def test_cost_rows_of_one_task_from_separate_invocations_are_flagged():
    def row(task: str, variant: str, seed: int, invocation: str | None) -> dict:
        return {**run_row(task, variant, seed, 0.5), "invocation": invocation}

    rows = [row("listops", "full", 0, "20261207T1000Z-a-1"), row("listops", "full", 1, "20261207T0900Z-a-7"),
            row("listops", "window", 0, "20261207T1000Z-a-1"), row("listops", "window", 1, None),
            row("text", "full", 0, "20261207T1000Z-a-1"), row("text", "full", 1, None)]
    line = invocations_line(with_machines(table(rows)))
    assert line is not None and line.startswith("Cost measurements from separate invocations")
    assert line.endswith("**listops**: full (1, 2), window (2).")  # numbered by start; text: one known invocation
    assert invocations_line(with_machines(table(rows[2:]))) is None
    assert invocations_line(with_machines(table([run_row("listops", "full", s, 0.5) for s in (0, 1)]))) is None


# ---------------------------------------------------------------- in the Summary

def _summary_bullets(tmp_path: Path, acc: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    doc = Document(tmp_path)
    summary_section(doc, acc, runs, pd.DataFrame())
    doc.write("t")
    return [line[2:] for line in (tmp_path / "summary.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("- ")]


@pytest.mark.slow
def test_the_summary_holds_the_flags_in_their_places(tmp_path):
    rows = [curve_run(tmp_path / "runs", "listops", "full", s, RISING, tok_s=t)
            for s, t in ((0, 27_856.0), (1, 17_158.0))]
    rows += [curve_run(tmp_path / "runs", "listops", "window", s, FALLING, tok_s=2000.0) for s in (0, 1)]
    df = with_machines(table(rows))
    bullets = _summary_bullets(tmp_path / "out", df, df)
    improving = bullets.index(IMPROVING + "**listops**: full (2 of 2 runs)" + MORE)
    spread = bullets.index(SPREAD_HEAD + "**listops**: full 17,158–27,856 tokens/s over 2 runs (1.62×).")
    assert bullets[0].startswith("**listops**") and improving == 1  # beside the ranking it qualifies
    frontier = next(i for i, b in enumerate(bullets) if b.startswith("Frontier of accuracy"))
    assert improving < frontier < spread  # the costs' flag after the costs' lines
    assert not any(b.startswith(HOSTS_HEAD) for b in bullets)


@pytest.mark.slow
def test_no_flag_in_the_summary_when_none_applies(tmp_path):
    df = with_machines(three_variants())  # one host, 1,000 tokens/s per seed, no curves
    text = "\n".join(_summary_bullets(tmp_path, df, df))
    assert "**listops**" in text
    for head in ("Still improving", "differs widely", "pooled across hosts"):
        assert head not in text


# ---------------------------------------------------------------- the curves, by step and by wall-clock time

def test_a_loss_that_is_not_a_number_is_missing_and_a_diverged_ones_is_not_damage(tmp_path):
    path = tmp_path / "curve.csv"
    head = "step,lr,train_loss,val_loss,val_acc,elapsed_s\n"
    path.write_text(head + "10,0.1,1.5,1.4,0.3,2\n20,0.1,nan,inf,0.3,4\n", encoding="utf-8")
    c, said = read_curve(path)
    assert said is None
    assert c["train_loss"].isna().tolist() == [False, True] and c["val_loss"].isna().tolist() == [False, True]
    path.write_text(head + "10,0.1,-1,1.4,0.3,2\n20,0.1,much,1.2,0.3,4\n", encoding="utf-8")
    c, said = read_curve(path)
    assert c["train_loss"].isna().all() and list(c["val_loss"]) == [1.4, 1.2]
    assert said == f"`{path}` 2 `train_loss` value(s) not a number ≥ 0: treated as missing"


@pytest.fixture
def kept(monkeypatch):
    """The figures ``save_figure`` saves, kept open to be looked at (closed at the end)."""
    figures: list = []
    close = plt.close
    monkeypatch.setattr(writer.plt, "close", figures.append)
    yield figures
    for fig in figures:
        close(fig)


@pytest.mark.slow
def test_the_curves_figure_draws_accuracy_and_loss_by_step_and_by_wall_clock_time(tmp_path, kept):
    rows = [curve_run(tmp_path, task, v, s, RISING) for task in ("listops", "text") for v in ("full", "window")
            for s in (0, 1)]
    curves, _ = load_curves(table(rows))
    assert figure_curves(curves, tmp_path / "curves.png") is not None
    axes = kept[0].axes
    assert len(axes) == 8  # two tasks, four panels each
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in axes[:4]] == [
        ("step", "validation accuracy (%)"), ("wall-clock time, evaluation included (s)", "validation accuracy (%)"),
        ("step", "training loss"), ("wall-clock time, evaluation included (s)", "training loss")]
    assert axes[0].get_title() == "listops: validation accuracy by step" and axes[4].get_title().startswith("text")
    # by wall-clock time one line per run, at its own times (seed 1 one second later at each evaluation)
    lines = axes[1].get_lines()
    assert len(lines) == 4 and sorted(tuple(line.get_xdata()) for line in lines)[0] == (3.0, 6.0, 9.0)
    # a curve without its times (older or damaged): the time panels say so
    curves, _ = load_curves(table(rows[:2]))
    kept.clear()
    figure_curves(curves.drop(columns="elapsed_s"), tmp_path / "older.png")
    assert [t.get_text() for t in kept[0].axes[1].texts] == ["no validation accuracy against wall-clock time\n"
                                                             "in these curves"]


@pytest.mark.slow
def test_the_report_renders_the_flags_and_the_curves_note(tmp_path):
    rows = [curve_run(tmp_path / "runs", "listops", v, s, RISING, tok_s=1000.0 + 500 * s)
            for v in ("full", "window") for s in (0, 1)]
    summary = tmp_path / "summary.csv"
    table(rows).to_csv(summary, index=False)
    render_report(summary, tmp_path / "out")
    md = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert f"- {IMPROVING}**listops**: full (2 of 2 runs), window (2 of 2 runs){MORE}" in md
    assert (f"- {SPREAD_HEAD}**listops**: full 1,000–1,500 tokens/s over 2 runs (1.50×), window 1,000–1,500 tokens/s "
            "over 2 runs (1.50×).") in md
    curves = md[md.index("## Validation accuracy during training"):]
    assert "against the step and against wall-clock time (`elapsed_s`" in curves
    assert "![validation curves](figures/validation_curves.png)" in curves
