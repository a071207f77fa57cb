"""Adaptive seeds (issue 27, part 4): a comparison (variant against full on a task) resolves when the
95% paired-difference interval of test accuracy excludes 0 or is narrower than the target width; more
seeds are planned only for the variants that have not resolved (and full, which they are paired with),
and never past the maximum. Records are a fake runs' table (task, variant, seed, status, test_acc).

Each variant's accuracy is full's plus a per-seed difference in points (``DIFF``), alternating with the
seed's parity, so the intervals are known: ``worse`` is 10 points below full (resolved at once), ``same``
is full within 0.1 point (resolved: narrow), ``slow`` is 3 points below with ±2 points of noise (resolved
at 7 seeds), ``noisy`` is full ± 3 points (never resolved: its interval holds 0 and is wide)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from attnbench.harness.report.resolution import (
    comparison_state,
    next_seed_counts,
    resolution_section,
    resolution_table,
    seeds_run,
)
from attnbench.harness.report.writer import Document

TASK = "listops"
TARGET = {"reference": "full", "width": 2.0}
SEEDS = {"min": 3, "max": 10, "step": 2, "target": TARGET}
DIFF = {"full": lambda s: 0.0, "worse": lambda s: -10 + 0.5 * (-1) ** s, "same": lambda s: 0.1 * (-1) ** s,
        "slow": lambda s: -3 + 2 * (-1) ** s, "noisy": lambda s: 3 * (-1) ** s}
LABELS = list(DIFF)


def acc(label: str, seed: int) -> float:
    """Test accuracy (fraction): full's is 80 % ± 1 point by seed, the others full's plus ``DIFF``."""
    return (80 + ((7 * seed) % 3 - 1) + DIFF[label](seed)) / 100


def row(label: str, seed: int, task: str = TASK, status: str = "ok", stage: str = "final", test=True) -> dict:
    return {"task": task, "variant": label, "seed": seed, "status": status, "stage": stage,
            "test_acc": acc(label, seed) if test else math.nan}


def records(counts: dict[str, int], task: str = TASK) -> pd.DataFrame:
    """Seeds 0..n-1 of each label, all ok."""
    return pd.DataFrame([row(label, s, task) for label, n in counts.items() for s in range(n)])


def test_resolves_when_the_interval_excludes_0_or_is_narrow_and_plans_more_only_where_not():
    df = records(dict.fromkeys(["full", "worse", "same", "noisy"], 3))
    worse, same, noisy = (comparison_state(df, TASK, x, TARGET) for x in ("worse", "same", "noisy"))
    assert worse["resolved"] and worse["why"] == "excludes 0" and worse["n"] == 3
    assert worse["high"] < 0 and worse["mean"] == pytest.approx(-10 / 100 + 0.5 / 3 / 100)
    assert same["resolved"] and same["why"] == "narrower than 2 points" and same["low"] < 0 < same["high"]
    assert (same["high"] - same["low"]) * 100 < 2
    assert not noisy["resolved"] and noisy["why"] == "not yet" and noisy["low"] < 0 < noisy["high"]
    assert next_seed_counts(df, TASK, ["full", "worse", "same", "noisy"], SEEDS) == {
        "full": 5, "worse": 3, "same": 3, "noisy": 5}


def test_stops_at_the_maximum():
    seeds = {**SEEDS, "max": 6}
    df = records({"full": 6, "noisy": 6, "worse": 3})
    assert not comparison_state(df, TASK, "noisy", TARGET)["resolved"]
    assert next_seed_counts(df, TASK, ["full", "noisy", "worse"], seeds) == {"full": 6, "noisy": 6, "worse": 3}
    # one below the maximum: the last step is cut at it
    df = records({"full": 5, "noisy": 5})
    assert next_seed_counts(df, TASK, ["full", "noisy"], seeds) == {"full": 6, "noisy": 6}


def test_below_min_gets_min_and_round_0_is_min_everywhere():
    # worse is resolved at 2 seeds (10 points ± 0.5), yet has fewer than min
    df = records({"full": 3, "worse": 2})
    assert comparison_state(df, TASK, "worse", TARGET)["resolved"]
    assert next_seed_counts(df, TASK, ["full", "worse"], SEEDS) == {"full": 3, "worse": 3}
    empty = pd.DataFrame(columns=["task", "variant", "seed", "status", "stage", "test_acc"])
    assert next_seed_counts(empty, TASK, LABELS, SEEDS) == dict.fromkeys(LABELS, 3)
    assert comparison_state(empty, TASK, "noisy", TARGET)["n"] == 0
    # no reference on this task: nothing to compare, nothing grows
    assert next_seed_counts(records({"noisy": 3}), TASK, ["noisy"], SEEDS) == {"noisy": 3}


def test_untested_runs_are_no_pair_but_a_seed_run_and_trials_and_other_tasks_do_not_count():
    df = pd.DataFrame([
        *(row("full", s) for s in range(3)),
        row("noisy", 0), row("noisy", 1, status="timeout"),  # a timeout tested a checkpoint: it counts
        row("noisy", 2, status="failed", test=False),  # no test accuracy: in no pair
        *(row("noisy", s, stage="tune", test=False) for s in range(8)),  # tuning trials
        *(row(x, s, task="text") for x in ("full", "noisy") for s in range(9)),
    ])
    state = comparison_state(df, TASK, "noisy", TARGET)
    assert state["n"] == 2 and not state["resolved"]
    assert seeds_run(df, TASK, "noisy") == 3  # the failed seed 2 is not planned again
    assert next_seed_counts(df, TASK, ["full", "noisy"], SEEDS) == {"full": 5, "noisy": 5}
    # one tested pair: no interval, so not resolved, whatever the difference
    one = pd.DataFrame([row("full", 0), row("full", 1), row("worse", 0), row("worse", 1, status="oom", test=False)])
    state = comparison_state(one, TASK, "worse", TARGET)
    assert state["n"] == 1 and not state["resolved"] and math.isnan(state["low"])
    assert next_seed_counts(one, TASK, ["full", "worse"], SEEDS) == {"full": 4, "worse": 4}


def test_a_table_without_stage_counts_every_row():
    df = records({"full": 3, "noisy": 3}).drop(columns="stage")
    assert seeds_run(df, TASK, "noisy") == 3 and comparison_state(df, TASK, "noisy", TARGET)["n"] == 3


def test_resolution_table_says_resolved_or_hit_the_maximum_or_more_planned():
    df = pd.concat([records({"full": 10, "worse": 3, "same": 3, "noisy": 10}),
                    records({"full": 5, "noisy": 5}, task="text"),
                    records({"noisy": 3}, task="image")])  # no full on image: no comparison
    table = resolution_table(df, SEEDS)
    outcome = {(r.task, r.variant): r.outcome for r in table.itertuples()}
    assert outcome == {(TASK, "noisy"): "unresolved: hit the maximum (10 seeds)",
                       (TASK, "same"): "resolved (narrower than 2 points)",
                       (TASK, "worse"): "resolved (excludes 0)",
                       ("text", "noisy"): "unresolved (5 seeds; more planned)"}
    worse = table[(table["task"] == TASK) & (table["variant"] == "worse")].iloc[0]
    assert worse["seeds"] == 3 and worse["pairs"] == 3
    low, high = (float(x) for x in worse["95% CI, minus full (points)"].split(" – "))
    state = comparison_state(df, TASK, "worse", TARGET)
    assert (low, high) == pytest.approx((100 * state["low"], 100 * state["high"]), abs=0.051) and high < 0


def test_rounds_plan_seeds_only_for_unresolved_comparisons_and_end_at_the_maximum():
    """The pipeline's loop: run the seeds asked for, ask again, until nothing changes."""
    df = pd.DataFrame(columns=["task", "variant", "seed", "status", "stage", "test_acc"])
    have = dict.fromkeys(LABELS, 0)
    rounds = []
    for _ in range(20):
        want = next_seed_counts(df, TASK, LABELS, SEEDS)
        assert all(want[x] >= have[x] for x in LABELS) and max(want.values()) <= SEEDS["max"]
        if want == have:
            break
        rounds.append({x for x in LABELS if want[x] > have[x]})
        new = [row(x, s) for x in LABELS for s in range(have[x], want[x])]
        df, have = pd.concat([df, pd.DataFrame(new)], ignore_index=True), want
    else:
        pytest.fail("the seed plan never settled")
    assert rounds[0] == set(LABELS)  # round 0: min everywhere
    assert all(grown <= {"slow", "noisy", "full"} for grown in rounds[1:])
    assert have == {"full": 10, "worse": 3, "same": 3, "slow": 7, "noisy": 10}
    assert len(rounds) == 5  # 3, 5, 7, 9, 10 seeds
    outcome = dict(zip(*(resolution_table(df, SEEDS)[c] for c in ("variant", "outcome")), strict=True))
    assert outcome == {"worse": "resolved (excludes 0)", "same": "resolved (narrower than 2 points)",
                       "slow": "resolved (excludes 0)", "noisy": "unresolved: hit the maximum (10 seeds)"}


def test_section_states_the_target_and_is_absent_without_adaptive_seeds(tmp_path):
    df = records({"full": 10, "noisy": 10})
    doc = Document(tmp_path)
    resolution_section(doc, df, None)
    assert doc.md == [] and doc.html == []
    resolution_section(doc, df, SEEDS)
    md = "\n".join(doc.md)
    assert "## Seeds" in md and "narrower than 2 points" in md and "up to 10" in md and "2 more seeds" in md
    assert "| listops | noisy | 10 | 10 |" in md and "unresolved: hit the maximum (10 seeds)" in md
