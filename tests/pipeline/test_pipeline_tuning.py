"""Tuning, lengths and adaptive seeds through snakemake: a tiny config that tunes two variants at two ListOps
lengths, then runs their final seeds in rounds. The trials run as jobs of their own, the checkpoint selects on
validation accuracy, the final runs are planned once it has and train with its point; each seed round is planned
once the round before has decided, and a round that adds no seed ends the task. The report holds the Tuning, the
accuracy-against-length and the Seeds sections; the same trials select the same point again, and nothing then
re-runs."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from attnbench.harness.results.records import read_record
from snakemake_runs import planned_jobs, snakemake

TUNED = {
    "seeds": {"min": 2, "max": 3},  # adaptive: round 0 runs seeds 0 and 1, a round after it at most seed 2
    "variants": {"full": {}, "linear": {}},
    "model": {"layers": 1, "dim": 16, "heads": 2, "mlp_dim": 32},
    "train": {"steps": 16, "batch_size": 16, "eval_every": 8, "warmup_steps": 4},
    "tune": {"trials": 2, "seed": 1, "space": {"train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}},
             "train": {"steps": 8}},
    "tasks": {"listops": {"lengths": [16, 32],
                          "data": {"n_train": 160, "n_val": 40, "n_test": 40, "max_depth": 4, "max_args": 4}}},
    "bench": {"enabled": False},
}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    work = tmp_path_factory.mktemp("tuned")
    (work / "config.yaml").write_text(yaml.safe_dump(TUNED))
    dry = snakemake(work, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    result = snakemake(work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, planned_jobs(dry)


@pytest.mark.slow
def test_trials_are_jobs_and_the_final_runs_train_with_the_selected_point(tuned):
    work, dry = tuned
    # before any trial ran, the plan holds every trial and the final runs (waiting on the selection)
    assert dry["trial"] == 2 * 2 * 2 and dry["select_trial"] == 2 * 2 and dry["train"] == 2 * 2 * 2
    assert dry["seed_round"] == dry["seeds_final"] == 2  # round 0 of each length, planned side by side
    for task in ("listops@16", "listops@32"):
        for label in ("full", "linear"):
            selection = json.loads((work / f"results/tune/{task}/{label}/selected.json").read_text())
            trials = [read_record(work / f"results/tune/{task}/{label}/trial{t}/record.json") for t in range(2)]
            assert all(t["stage"] == "tune" and t["accuracy"]["test"] is None for t in trials)
            best = max(range(2), key=lambda t: (trials[t]["accuracy"]["best_val"], -t))
            assert selection["trial"] == best
            final = read_record(work / f"results/runs/{task}/{label}/seed1/record.json")
            assert final["config"]["tuning"] == {"stage": "final", "trial": best, "trials": 2,
                                                 "point": selection["point"]}
            assert final["config"]["train"]["lr"] == selection["point"]["train.lr"]
            assert final["config"]["train"]["steps"] == 16 and final["accuracy"]["test"] is not None
    df = pd.read_csv(work / "results/summary.csv")
    assert df["stage"].value_counts()["tune"] == 8
    assert set(df["length"]) == {16, 32} and set(df["base_task"]) == {"listops"}
    report = (work / "reports/summary.md").read_text()
    assert "## Tuning" in report and "## Accuracy against length" in report and "## Seeds" in report
    assert "Accuracies are of tuned settings (2 trials per variant" in report
    assert "**listops** at 2 lengths" in report
    assert (work / "reports/figures/tuning.png").exists() and (work / "reports/figures/accuracy_vs_length.png").exists()


@pytest.mark.slow
def test_seed_rounds_add_seeds_until_a_round_adds_none_and_only_those_runs_count(tuned):
    work, _ = tuned
    df = pd.read_csv(work / "results/summary.csv")
    for task in ("listops@16", "listops@32"):
        decisions = [json.loads(path.read_text()) for path in sorted((work / f"results/seeds/{task}").glob("round*"))]
        assert decisions[0]["counts"] == {"full": 2, "linear": 2} and decisions[-1]["done"]
        assert not any(d["done"] for d in decisions[:-1]) and len(decisions) <= 2  # max 3: one more round at most
        if len(decisions) == 2:  # the second round gave seed 2 to the unresolved comparison's two sides only
            assert decisions[0]["next"] == decisions[1]["counts"] == {"full": 3, "linear": 3}
        counts = decisions[-1]["counts"]
        runs = {(path.parent.parent.name, int(path.parent.name.removeprefix("seed")))
                for path in (work / f"results/runs/{task}").glob("*/seed*/record.json")}
        assert runs == {(label, seed) for label, n in counts.items() for seed in range(n)}  # no seed beyond a round's
        finals = df[(df["task"] == task) & (df["stage"] == "final")]
        assert sorted(map(tuple, finals[["variant", "seed"]].values.tolist())) == sorted(runs)
        listed = (work / f"results/seeds/{task}/final.txt").read_text().split()
        assert sorted(listed) == sorted(f"results/runs/{task}/{label}/seed{seed}/record.json" for label, seed in runs)


@pytest.mark.slow
def test_the_same_trials_select_the_same_point_and_nothing_reruns(tuned):
    work, _ = tuned
    assert planned_jobs(snakemake(work, "-n")) == {}
    pair = work / "results/tune/listops@32/linear"
    before = json.loads((pair / "selected.json").read_text())
    (pair / "selected.json").unlink()  # the selection and the selected trial, gone: trained and selected again
    shutil.rmtree(pair / f"trial{before['trial']}")
    result = snakemake(work)
    assert result.returncode == 0, result.stderr[-3000:]
    after = json.loads((pair / "selected.json").read_text())
    assert (after["trial"], after["point"], after["best_val_acc"]) == (before["trial"], before["point"],
                                                                       before["best_val_acc"])
    out = result.stdout + result.stderr
    assert "rule train:" not in out  # the same selection: the final runs keep their records
    assert planned_jobs(snakemake(work, "-n")) == {}
