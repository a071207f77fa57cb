"""The report's opening Summary, its statistics (t-intervals, paired differences, seed
suggestions), the accuracy/cost frontier, the table of contents, LRA's published numbers only
where comparable, and several machines in one report. Runs' tables are built here, row by row,
with the columns ``attnbench aggregate`` writes, so every expected number is known."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from attnbench.harness.cli import main
from attnbench.harness.report.differences import interval_table, paired_rows
from attnbench.harness.report.frontier import frontiers, on_frontier, points
from attnbench.harness.report.lra import comparable_tasks
from attnbench.harness.report.machines import for_accuracy, for_cost, with_machines
from attnbench.harness.report.render import render_report
from attnbench.harness.report.stats import paired_difference, seeds_for, t_interval, verdict
from attnbench.harness.report.summary import task_line
from attnbench.harness.results.aggregate import COLUMNS

MACHINE_A = {"device_name": "Test CPU A", "device": "cpu", "torch": "2.13.0", "git_commit": "a" * 40, "host": "ha"}
MACHINE_B = {"device_name": "Test GPU B", "device": "cuda", "torch": "2.13.0", "git_commit": "b" * 40, "host": "hb"}


def run_row(task: str, variant: str, seed: int, acc: float, *, tok_s: float = 1000.0, mem: float = 100.0,
            machine: dict = MACHINE_A, setup: str | None = None, lra: bool = False, seq_len: int = 48) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(task=task, variant=variant, attention=variant, method="labels", seed=seed, status="ok", message="",
               test_acc=acc, best_val_acc=acc, best_step=100, chance_acc=0.1, majority_test_acc=0.12,
               steps_done=100, steps_planned=100, wall_s=10.0, train_steps_per_s=tok_s / 1000,
               train_tokens_per_s=tok_s, eval_tokens_per_s=3 * tok_s, peak_memory_mb=mem,
               peak_memory_method="tracemalloc (CPU)", timing_method="median of steps", params=1000, layers=2,
               seq_len=seq_len, batch_size=32, torch_threads=1, python="3.11", cuda="", git_dirty=False,
               config_hash=f"{task}-{variant}-{seed}", setup_hash=setup or f"{task}-{variant}", lra_settings=lra,
               record=f"/nonexistent/{task}/{variant}/seed{seed}/record.json", **machine)
    return row


def table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


# ---------------------------------------------------------------- statistics

def test_t_interval_is_scipys_student_t_and_needs_two_values():
    x = [50.0, 52.0, 57.0]
    iv = t_interval(x)
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(x), scale=stats.sem(x))
    assert (iv.low, iv.high) == pytest.approx((lo, hi)) and iv.n == 3
    one = t_interval([50.0])
    assert one.mean == 50.0 and not one.defined and math.isnan(one.low)
    # two seeds: the t quantile with 1 degree of freedom is 12.7, the interval that wide
    two = t_interval([50.0, 52.0])
    assert two.half_width == pytest.approx(12.706 * 1.0, rel=1e-3)


def test_paired_difference_pairs_by_seed_and_says_within_noise_or_not():
    a = pd.Series({0: 60.0, 1: 62.0, 2: 61.0})
    b = pd.Series({0: 50.0, 1: 51.0, 2: 50.5, 3: 99.0})  # seed 3 has no pair: left out
    d = paired_difference(a, b)
    assert d.n == 3 and d.mean == pytest.approx(10.5)
    assert verdict(d) == "higher" and verdict(paired_difference(b, a)) == "lower"
    noisy = paired_difference(pd.Series({0: 50.0, 1: 60.0}), pd.Series({0: 55.0, 1: 54.0}))
    assert verdict(noisy) == "within noise"
    assert verdict(paired_difference(pd.Series({0: 1.0}), pd.Series({0: 2.0}))) == "cannot tell (1 seed)"
    assert verdict(paired_difference(pd.Series({0: 1.0}), pd.Series({1: 2.0}))) == "no common seeds"


def test_seeds_for_a_half_width_is_the_smallest_n_that_reaches_it():
    n = seeds_for(2.0, 1.0)
    assert stats.t.ppf(0.975, n - 1) * 2.0 / math.sqrt(n) <= 1.0
    assert stats.t.ppf(0.975, n - 2) * 2.0 / math.sqrt(n - 1) > 1.0
    assert seeds_for(0.0, 1.0) == 2 and seeds_for(float("nan"), 1.0) is None


# ---------------------------------------------------------------- frontier and summary

def three_variants(seeds=(0, 1, 2)) -> pd.DataFrame:
    rows = []
    for s in seeds:
        rows += [run_row("listops", "full", s, 0.50 + 0.01 * s, tok_s=1000, mem=100),
                 run_row("listops", "window", s, (0.51, 0.49, 0.52)[s], tok_s=2000, mem=80),
                 run_row("listops", "linear", s, 0.30 + 0.01 * s, tok_s=1500, mem=60),
                 run_row("listops", "lsh", s, 0.29 + 0.01 * s, tok_s=900, mem=120)]
    return table(rows)


def test_the_frontier_holds_the_points_no_other_beats_on_both_axes():
    df = three_variants()
    fr = frontiers(df)["listops"]
    # throughput: window is faster than full and almost as accurate, full the most accurate;
    # linear is slower than window and less accurate; lsh is beaten by everything
    assert fr["throughput"] == ["window", "full"]
    # memory: linear is the leanest, window leaner than full, full the most accurate
    assert fr["memory"] == ["linear", "window", "full"]
    pts = points(df)
    assert not on_frontier(pts, "throughput")[pts["variant"] == "lsh"].any()


def test_task_line_names_the_best_the_ties_and_the_clearly_worse():
    line = task_line(three_variants(), "listops")
    assert line.startswith("**listops** (N=48, 3 seeds): best **full** 51.0% (95% CI ")
    assert "indistinguishable from it (paired by seed, 95%): window" in line
    assert re.search(r"below it: .*linear \(-20\.0 points, CI -20\.0 to -20\.0\)", line)
    assert "taught nothing" not in line


def test_a_task_at_its_majority_class_is_called_out():
    df = table([run_row("pathfinder", v, s, 0.125) for v in ("full", "window") for s in (0, 1)])
    assert "No variant beats the majority class (12.0%) by 5 points" in task_line(df, "pathfinder")


def test_interval_and_paired_tables_say_how_many_seeds_would_help():
    df = three_variants()
    iv = interval_table(df).set_index(["task", "variant"])
    assert iv.loc[("listops", "full"), "95% CI"] == "48.5 – 53.5" and iv.loc[("listops", "full"), "seeds"] == 3
    rows = {r["variant"]: r for r in paired_rows(df)}
    assert rows["window"]["verdict"] == "within noise" and rows["window"]["seeds_to_resolve"] > 3
    assert rows["linear"]["verdict"] == "lower" and rows["linear"]["seeds_to_resolve"] is None


@pytest.mark.slow
def test_the_report_opens_with_the_summary_then_the_contents(tmp_path):
    summary = tmp_path / "summary.csv"
    three_variants().to_csv(summary, index=False)
    index = render_report(summary, tmp_path / "out")
    page, md = index.read_text(), (tmp_path / "out" / "summary.md").read_text()
    h2 = re.findall(r"<h2 id='([^']+)'>([^<]+)</h2>", page)
    assert h2[0] == ("summary", "Summary")
    nav = page.index("<nav class='toc'")
    assert page.index("<h2 id='summary'") < page.index("frontier") < nav < page.index(f"<h2 id='{h2[1][0]}'")
    # every later section is in the contents, as a working anchor
    for key, text in h2[1:]:
        assert f"<a href='#{key}'>{text}</a>" in page
    assert [t for _, t in h2[-2:]] == ["Runs", "About this run"]
    assert md.index("## Summary") < md.index("- [Test accuracy (%)](#test-accuracy)")
    assert (tmp_path / "out" / "figures" / "frontier.png").stat().st_size > 0
    assert "**listops**" in md and "<strong>listops</strong>" in page


# ---------------------------------------------------------------- LRA: comparable or reference

@pytest.mark.slow
def test_lra_table_1_sits_beside_this_run_only_for_tasks_run_at_lras_settings(tmp_path):
    rows = [run_row("listops", "full", s, 0.37, lra=True, seq_len=2000) for s in (0, 1)]
    rows += [run_row("image", "full", s, 0.9, lra=False, seq_len=64) for s in (0, 1)]
    df = table(rows)
    df["published_as"] = "Transformer"
    assert comparable_tasks(df) == (["listops"], ["image"])
    summary = tmp_path / "summary.csv"
    df.to_csv(summary, index=False)
    md = (render_report(summary, tmp_path / "out").parent / "summary.md").read_text()
    comparison = md[md.index("## LRA Table 1 comparison"):]
    comparison = comparison[:comparison.index("\n## ")]
    rows = comparison.split("\n|", 1)[1]  # the table, after the note
    assert "ListOps (N=2000)" in rows and "Image" not in rows and "full (this run)" in rows
    reference = md[md.index("## Published reference: LRA Table 1"):]
    reference = reference[:reference.index("\n## ")]
    assert "Image at N=64 did not use LRA's data and length" in reference
    assert "this run" not in reference.split("\n|", 1)[1]  # the table holds published rows only
    assert ("| Transformer (published, LRA Table 1) | LRA's code | 36.37 | 64.27 | 57.46 | 42.44 | 71.40 | FAIL |"
            in reference)
    # no run at LRA's settings: no comparison at all, only the reference
    df["lra_settings"] = False
    df.to_csv(summary, index=False)
    md = (render_report(summary, tmp_path / "out2").parent / "summary.md").read_text()
    assert "## LRA Table 1 comparison" not in md and "## Published reference: LRA Table 1" in md


# ---------------------------------------------------------------- several machines

def two_machines() -> pd.DataFrame:
    rows = []
    for s in (0, 1):
        # full: the identical setup on both machines (poolable); window: a different setup on B
        rows.append(run_row("listops", "full", s, 0.50 + 0.01 * s, tok_s=1000, machine=MACHINE_A, setup="same"))
        rows.append(run_row("listops", "full", s + 2, 0.54 + 0.01 * s, tok_s=9000, machine=MACHINE_B, setup="same"))
        rows.append(run_row("listops", "window", s, 0.45, tok_s=2000, machine=MACHINE_A, setup="w-cpu"))
        rows.append(run_row("listops", "window", s, 0.47, tok_s=20000, machine=MACHINE_B, setup="w-gpu"))
    return table(rows)


def test_accuracy_pools_only_identical_setups_and_cost_never_pools_machines():
    df = with_machines(two_machines())
    acc, cost = for_accuracy(df), for_cost(df)
    assert sorted(acc["variant"].unique()) == ["full", "window @ Test CPU A (cpu, torch 2.13.0, aaaaaaa)",
                                               "window @ Test GPU B (cuda, torch 2.13.0, bbbbbbb)"]
    assert (acc["variant"] == "full").sum() == 4  # four seeds of one setup, pooled
    assert cost["variant"].nunique() == 4 and all(" @ " in v for v in cost["variant"])


@pytest.mark.slow
def test_one_report_from_two_results_folders(tmp_path, capsys):
    df = two_machines()
    folders = []
    for name, machine in (("cpu", MACHINE_A), ("gpu", MACHINE_B)):
        folder = tmp_path / name / "results"
        folder.mkdir(parents=True)
        df[df["device_name"] == machine["device_name"]].to_csv(folder / "summary.csv", index=False)
        folders.append(folder)
    out = tmp_path / "out"
    assert main(["report", "--results", *map(str, folders), "--out", str(out)]) == 0
    md = (out / "summary.md").read_text()
    assert "8 runs: 8 ok on 2 machines." in md
    acc = md[md.index("## Test accuracy (%)"):md.index("## Accuracy with confidence intervals")]
    # full pooled over both machines' four seeds, the windows kept apart
    assert "52.5 ± 2.4 (n=4)" in acc
    assert "window @ Test CPU A" in acc and "window @ Test GPU B" in acc
    cost = md[md.index("## Training cost"):]
    cost = cost[:cost.index("\n## ")]
    for machine in ("Test CPU A (cpu", "Test GPU B (cuda"):
        assert f"full @ {machine}" in cost and f"window @ {machine}" in cost
    assert "| listops | full |" not in cost  # never a throughput pooled across machines
    # one frontier per machine, each with its own figure
    for machine in ("Test CPU A (cpu, torch 2.13.0, aaaaaaa)", "Test GPU B (cuda, torch 2.13.0, bbbbbbb)"):
        assert f"- On {machine}: Frontier of accuracy against training throughput" in md
    assert {"frontier.png", "frontier_2.png"} <= {p.name for p in (out / "figures").iterdir()}
    about = md[md.index("## About this run"):]
    assert "Test CPU A (cpu, torch 2.13.0, aaaaaaa)" in about and "Test GPU B (cuda, torch 2.13.0, bbbbbbb)" in about
    # a folder without results is one line and exit status 2, not a traceback
    (tmp_path / "nothing").mkdir()
    assert main(["report", "--results", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "holds neither summary.csv nor bench.csv" in capsys.readouterr().err
