"""Accuracy at equal compute in the report (issue 27, part 2): per task each variant's validation
accuracy against training time and FLOPs from its curves, the variants ranked at the least time (FLOPs)
every one reached, test accuracies ranked for runs trained to a seconds budget, and the Summary's best
variant at equal time. Older results (curves without train_s/train_flops, summaries without the budget
columns) still render: time from elapsed_s, the FLOPs view left out, each said. Runs' tables are built as
in test_report_summary.py, with curve.csv files written beside their record paths."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_report_summary import MACHINE_B, run_row

from attnbench.harness.report.compute import at_equal, curves_of, equal_compute_section, equal_time_best, views
from attnbench.harness.report.curves import read_curve
from attnbench.harness.report.render import render_report
from attnbench.harness.report.summary import equal_time_lines
from attnbench.harness.report.writer import Document

STEPS = (10, 20, 30, 40)
# per variant: training seconds and FLOPs per 10 steps, validation accuracy at each evaluation (seed 0;
# seed 1: 2 points higher). By step full learns most; per second and per FLOP it is the slowest.
SPEED = {"full": (2.0, 1000), "window": (1.0, 500), "linear": (0.5, 400)}
ACCS = {"full": (0.30, 0.50, 0.60, 0.70), "window": (0.35, 0.45, 0.50, 0.52), "linear": (0.20, 0.30, 0.40, 0.42)}


def curve_text(variant: str, seed: int, new: bool = True) -> str:
    """A curve.csv as the training loop writes it (``new``: with train_s and train_flops)."""
    seconds, flops = SPEED[variant]
    head = "step,lr,train_loss,val_loss,val_acc,elapsed_s" + (",train_s,train_flops" if new else "")
    rows = [f"{step},0.1,1.0,1.0,{acc + 0.02 * seed:.2f},{1.5 * seconds * step / 10:g}"
            + (f",{seconds * step / 10:g},{flops * step // 10}" if new else "")
            for step, acc in zip(STEPS, ACCS[variant], strict=True)]
    return "\r\n".join([head, *rows]) + "\r\n"


def runs(tmp: Path, task: str = "listops", new: bool = True, **extra) -> list[dict]:
    """Two seeds of each variant, test accuracy = the last validation accuracy, curves written under ``tmp``."""
    rows = []
    for variant in SPEED:
        for seed in (0, 1):
            row = run_row(task, variant, seed, ACCS[variant][-1] + 0.02 * seed)
            row["record"] = str(tmp / task / variant / f"seed{seed}" / "record.json")
            curve = Path(row["record"]).parent / "curve.csv"
            curve.parent.mkdir(parents=True, exist_ok=True)
            curve.write_text(curve_text(variant, seed, new), encoding="utf-8", newline="")
            if new:
                seconds, flops = SPEED[variant]
                row.update(budget_kind="steps", budget_limit=40, budget_reached=40, train_s=4 * seconds,
                           train_flops=4 * flops, flops_per_step=flops / 10)
            rows.append({**row, **extra})
    return rows


def section(md: str, heading: str) -> str:
    part = md[md.index(f"## {heading}"):]
    return part[:part.index("\n## ", 3)]


def test_a_curve_keeps_its_time_and_flops_and_a_bad_count_is_missing_and_said(tmp_path):
    path = tmp_path / "curve.csv"
    path.write_text(curve_text("full", 0), encoding="utf-8", newline="")
    curve, said = read_curve(path)
    assert said is None and list(curve["train_s"]) == [2.0, 4.0, 6.0, 8.0]
    assert list(curve["train_flops"]) == [1000, 2000, 3000, 4000]
    # FLOPs not counted (empty) is nothing wrong; a word or a negative time is damage: missing, and said
    path.write_text("step,val_acc,elapsed_s,train_s,train_flops\n10,0.5,1.0,abc,\n20,0.6,2.0,-1,\n30,0.7,3,3,\n",
                    encoding="utf-8")
    curve, said = read_curve(path)
    assert list(curve["step"]) == [10, 20, 30] and curve["train_flops"].isna().all()
    assert curve["train_s"].isna().tolist() == [True, True, False]
    assert said == f"`{path}` 2 `train_s` value(s) not a finite number ≥ 0: treated as missing"
    path.write_text(curve_text("full", 0, new=False), encoding="utf-8", newline="")  # an older curve
    curve, said = read_curve(path)
    assert said is None and "train_s" not in curve and list(curve["elapsed_s"]) == [3.0, 6.0, 9.0, 12.0]


def test_variants_are_ranked_at_the_least_time_and_flops_every_one_reached(tmp_path):
    df = pd.DataFrame(runs(tmp_path))
    curves = curves_of(df)
    # time: linear reached the least, 2 s; by then full had evaluated once, window twice
    column, c = views(curves, "time")["listops"]
    eq = at_equal(c, column)
    assert (column, eq.limit) == ("train_s", 2.0)
    assert list(eq.ranked["variant"]) == ["window", "linear", "full"]
    assert list(eq.ranked["cell"]) == ["46.0 ± 1.4 (n=2)", "43.0 ± 1.4 (n=2)", "31.0 ± 1.4 (n=2)"]
    # FLOPs: linear reached 1,600; by then window had evaluated three times, full once
    column, c = views(curves, "flops")["listops"]
    eq = at_equal(c, column)
    assert (column, eq.limit) == ("train_flops", 1600)
    assert list(eq.ranked["cell"]) == ["51.0 ± 1.4 (n=2)", "43.0 ± 1.4 (n=2)", "31.0 ± 1.4 (n=2)"]
    # a run with no evaluation by T does not count, and is said
    slow = curves.copy()
    slow.loc[(slow["variant"] == "full") & (slow["seed"] == 1), "train_s"] *= 2
    eq = at_equal(slow, "train_s")
    assert eq.ranked.set_index("variant").loc["full", "cell"] == "30.0 (n=1) (1 without an evaluation by then)"


def test_the_summary_names_the_best_at_equal_time_by_validation_or_by_a_seconds_budget(tmp_path):
    df = pd.DataFrame(runs(tmp_path))
    assert equal_time_lines(df) == ["At equal training time on **listops** (2 s of training; best validation "
                                    "accuracy so far): best **window** (46.0%)."]
    # every variant trained to 60 s of training: their test accuracies rank them (full's 71% is the best)
    budget = df.assign(budget_kind="seconds", budget_limit=60.0, budget_reached=60.4)
    assert equal_time_lines(budget) == ["At equal training time on **listops** (a budget of 60 s each; test "
                                        "accuracy): best **full** (71.0%)."]
    # budgets that differ are not ranked together: the validation curves decide
    budget.loc[budget["variant"] == "linear", "budget_limit"] = 120.0
    assert equal_time_best(budget)["listops"].what == "best validation accuracy so far"
    # a run stopped by its time limit is counted and marked
    budget.loc[(budget["variant"] == "window") & (budget["seed"] == 1), "status"] = "timeout"
    assert equal_time_lines(budget)[0].endswith("best **window**† (46.0%) (†: with runs that did not finish ok, "
                                                "as above).")


def test_times_of_two_machines_are_never_ranked_together(tmp_path):
    a = runs(tmp_path / "a")
    b = [{**r, **MACHINE_B} for r in runs(tmp_path / "b")]
    df = pd.DataFrame(a + b)
    df["machine"] = df["device_name"]
    assert sorted(equal_time_best(df)) == ["listops on Test CPU A", "listops on Test GPU B"]


def test_runs_without_curves_or_budgets_are_said_and_named_nowhere(tmp_path):
    df = pd.DataFrame([run_row("listops", v, 0, 0.5) for v in SPEED])  # records in no folder: no curves
    doc = Document(tmp_path)
    equal_compute_section(doc, df, df)
    assert doc.md[-2].startswith("No validation curves to place") and equal_time_lines(df) == []


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> tuple[str, str, Path]:
    """One report of new results (a seconds budget on text, differing on image, a timeout on listops)
    and one of older results (no budget columns, curves without train_s and train_flops)."""
    tmp = tmp_path_factory.mktemp("equal")
    new = runs(tmp, "listops") + runs(tmp, "text", budget_kind="seconds", budget_limit=60.0, budget_reached=60.5)
    new += [{**r, "budget_limit": 30.0 * (1 + (r["variant"] == "full"))}
            for r in runs(tmp, "image", budget_kind="seconds", budget_reached=30.2)]
    new[3] |= {"status": "timeout", "steps_done": 40, "steps_planned": 100, "tested_checkpoint": "best"}
    pd.DataFrame(new).to_csv(tmp / "new.csv", index=False)
    old = pd.DataFrame(runs(tmp / "old", "listops", new=False))
    old.to_csv(tmp / "old.csv", index=False)
    md = (render_report(tmp / "new.csv", tmp / "new").parent / "summary.md").read_text(encoding="utf-8")
    old_md = (render_report(tmp / "old.csv", tmp / "old").parent / "summary.md").read_text(encoding="utf-8")
    return md, old_md, tmp


@pytest.mark.slow
def test_the_report_ranks_at_equal_time_and_flops_and_by_seconds_budgets(reports):
    md, _, tmp = reports
    view = section(md, "Accuracy at equal compute")
    assert md.index("## Validation accuracy during training") < md.index("## Accuracy at equal compute")
    assert "| listops | 2 s | 1 | window† | 46.0 ± 1.4 (n=2; timeout×1)† |" in view
    assert "| listops | 1,600 FLOPs | 1 | window† | 51.0 ± 1.4 (n=2; timeout×1)† |" in view
    assert "| text | 60 s | 1 | full | 71.0 ± 1.4 (n=2) | 60.5 s |" in view
    assert "| text | 60 s | 3 | linear | 43.0 ± 1.4 (n=2) | 60.5 s |" in view
    # image: full had 60 s, the others 30 s: ranked apart, and said
    assert "| image | 60 s | 1 | full |" in view and "| image | 30 s | 1 | window |" in view
    assert "Budgets differ between variants, never ranked together: image: 30 s: linear, window; 60 s: full." in view
    assert "† Did not finish ok: listops/window seed 1 stopped by the time limit after 40 of 100 steps" in view
    for name in ("accuracy_vs_time.png", "accuracy_vs_flops.png"):
        assert (tmp / "new" / "figures" / name).stat().st_size > 1000
    summary = section(md, "Summary")
    assert ("At equal training time on **text** (a budget of 60 s each; test accuracy): best **full** (71.0%)."
            in summary)
    assert ("At equal training time on **image** (2 s of training; best validation accuracy so far): best "
            "**window** (46.0%)." in summary)


@pytest.mark.slow
def test_older_results_render_with_elapsed_time_and_without_the_flops_view(reports):
    _, md, tmp = reports
    view = section(md, "Accuracy at equal compute")
    assert "listops: time is elapsed_s (evaluation included), as not all their curves hold train_s." in view
    assert "| listops | 3 s (elapsed) | 1 | window | 46.0 ± 1.4 (n=2) |" in view
    assert "No curve holds training FLOPs (`train_flops`, written by newer runs): the FLOPs view is left out." in view
    assert "At equal training time on **listops** (3 s elapsed, evaluation included;" in section(md, "Summary")
    assert not (tmp / "old" / "figures" / "accuracy_vs_flops.png").exists()


def test_the_mean_curve_ends_at_the_mean_of_runs_stopped_at_their_own_steps():
    """Runs stopped by a seconds budget end at different steps: the mean line goes through the steps all of them
    evaluated and ends at the mean of their last evaluations, not at the last step they share."""
    from attnbench.harness.report.compute import mean_curve

    curves = pd.DataFrame({"record": ["a", "a", "a", "b", "b", "b"], "step": [50, 100, 195, 50, 100, 186],
                           "train_s": [1.0, 2.0, 6.0, 1.2, 2.2, 6.2], "val_acc": [0.2, 0.3, 0.5, 0.2, 0.4, 0.6]})
    mean = mean_curve(curves, "train_s")
    assert list(mean.index) == [50, 100, 190.5]
    assert mean.loc[190.5].tolist() == pytest.approx([6.1, 0.55])
    same_end = curves.assign(step=[50, 100, 150, 50, 100, 150])
    assert list(mean_curve(same_end, "train_s").index) == [50, 100, 150]
