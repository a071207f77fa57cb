"""Tuning (issue 27 part 1): the seeded trial design over a search space, setting a point in a resolved
run config, and the selection of a trial by validation accuracy only."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import pytest

from attnbench.harness.config import ConfigError, resolve_run, validate_config
from attnbench.harness.config.tuning import (
    SAMPLERS,
    TuningError,
    apply_point,
    best_so_far,
    own_point,
    select_trial,
    trial_points,
)

SPACE = {
    "train.lr": {"low": 1e-4, "high": 1e-2, "log": True, "integer": False},
    "model.dropout": {"low": 0.0, "high": 0.3, "log": False, "integer": False},
    "train.warmup_steps": {"low": 0, "high": 200, "log": False, "integer": True},
    "variant.window": {"choices": [4, 8, 16]},
}
OWN = {"train.lr": 0.001, "model.dropout": 0.1, "train.warmup_steps": 50, "variant.window": 8}


def tune(**override) -> dict:
    return {"trials": 8, "seed": 0, "sampler": "halton", "space": SPACE, "train": {"steps": 150}, **override}


@pytest.fixture(scope="module")
def window_run() -> dict:
    config = validate_config({"variants": {"window": {}}, "tasks": {"listops": {"data": {"n_train": 10}}}})
    return resolve_run(config, "listops", "window", 0)


# --- the design ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_same_inputs_give_the_same_points_and_another_seed_others(sampler):
    points = trial_points(tune(sampler=sampler), OWN)
    assert len(points) == 8
    assert points == trial_points(tune(sampler=sampler), dict(OWN))
    other = trial_points(tune(sampler=sampler, seed=1), OWN)
    assert other[0] == points[0] and other[1:] != points[1:]
    assert all(list(p) == sorted(SPACE) for p in points)


@pytest.mark.slow
def test_another_process_computes_the_same_points():
    code = ("import json, sys; from attnbench.harness.config.tuning import trial_points; "
            "t, o = json.loads(sys.argv[1]); print(json.dumps([trial_points(dict(t, sampler=s), o) "
            "for s in ('halton', 'sobol', 'random')]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps([tune(), OWN])],
                         capture_output=True, text=True, check=True).stdout
    here = [trial_points(tune(sampler=s), OWN) for s in ("halton", "sobol", "random")]
    assert json.loads(out) == json.loads(json.dumps(here))


def test_point_zero_is_the_configs_own_setting_untouched():
    own = {**OWN, "train.lr": 0.00123456789, "train.steps": 300}  # not rounded; keys outside the space left out
    points = trial_points(tune(), own)
    assert points[0] == {**OWN, "train.lr": 0.00123456789}
    assert trial_points(tune(trials=1), own) == [points[0]]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_points_stay_in_their_bounds_with_their_types(sampler):
    for point in trial_points(tune(sampler=sampler, trials=64), OWN)[1:]:
        assert 1e-4 <= point["train.lr"] <= 1e-2 and 0.0 <= point["model.dropout"] <= 0.3
        assert isinstance(point["train.warmup_steps"], int) and 0 <= point["train.warmup_steps"] <= 200
        assert point["variant.window"] in (4, 8, 16)
        for key in ("train.lr", "model.dropout"):  # 4 significant digits
            assert point[key] == float(f"{point[key]:.3e}")


def test_choices_and_whole_numbers_are_all_reached():
    space = {"variant.window": {"choices": [4, 8, 16]}, "train.warmup_steps": {"low": 1, "high": 3, "integer": True}}
    points = trial_points(tune(space=space, trials=33), {"variant.window": 8, "train.warmup_steps": 2})[1:]
    assert {p["variant.window"] for p in points} == {4, 8, 16}
    assert {p["train.warmup_steps"] for p in points} == {1, 2, 3}


def test_a_log_range_spreads_geometrically():
    space = {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True, "integer": False}}
    for sampler in SAMPLERS:
        lrs = [p["train.lr"] for p in trial_points(tune(space=space, sampler=sampler), {"train.lr": 1e-3})[1:]]
        below = sum(lr < 1e-3 for lr in lrs)
        assert 2 <= below <= len(lrs) - 2, (sampler, lrs)  # both sides of the geometric middle
    # a linear range over the same bounds puts most points above 1e-3
    linear = {"train.lr": {"low": 1e-4, "high": 1e-2, "log": False, "integer": False}}
    lrs = [p["train.lr"] for p in trial_points(tune(space=linear, trials=33), {"train.lr": 1e-3})[1:]]
    assert sum(lr > 1e-3 for lr in lrs) > 0.8 * len(lrs)


def test_sobol_draws_any_number_of_points_without_a_balance_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(trial_points(tune(sampler="sobol", trials=6), OWN)) == 6


def test_a_searched_key_without_an_own_value_is_named():
    with pytest.raises(ValueError, match="'variant.window'"):
        trial_points(tune(), {k: v for k, v in OWN.items() if k != "variant.window"})


# --- setting a point ----------------------------------------------------------------------------

def test_apply_point_sets_each_section_on_a_copy(window_run):
    before = json.dumps(window_run, sort_keys=True)
    point = {"train.lr": 0.003, "model.dropout": 0.2, "variant.window": 16}
    run = apply_point(window_run, point)
    assert (run["train"]["lr"], run["model"]["dropout"], run["variant"]["params"]["window"]) == (0.003, 0.2, 16)
    assert json.dumps(window_run, sort_keys=True) == before  # the resolved run is left as it was
    assert run["train"]["steps"] == window_run["train"]["steps"]


@pytest.mark.parametrize("key", ["train.lrr", "optim.lr", "variant.windw", "lr", "train.budget.seconds"])
def test_apply_point_refuses_a_key_the_run_does_not_have(window_run, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        apply_point(window_run, {key: 1})
    with pytest.raises(ConfigError, match=f"'{key}'"):
        own_point(window_run, {key: {"choices": [1]}})


def test_own_point_is_the_inverse_of_apply_point(window_run):
    own = own_point(window_run, SPACE)
    assert own == {"model.dropout": window_run["model"]["dropout"], "train.lr": window_run["train"]["lr"],
                   "train.warmup_steps": window_run["train"]["warmup_steps"],
                   "variant.window": window_run["variant"]["params"]["window"]}
    assert apply_point(window_run, own) == window_run
    for point in trial_points(tune(), own):
        assert own_point(apply_point(window_run, point), SPACE) == point


# --- selection ----------------------------------------------------------------------------------

def trial(i: int, val: float | None, status: str = "ok", **extra) -> dict:
    return {"trial": i, "status": status, "best_val_acc": val, "point": {"train.lr": i / 1000}, **extra}


def test_the_highest_validation_accuracy_is_selected_whatever_the_status():
    trials = [trial(0, 0.5), trial(1, None, "failed"), trial(2, 0.7, "timeout"), trial(3, 0.6)]
    assert select_trial(trials) == {"trial": 2, "point": {"train.lr": 0.002}, "best_val_acc": 0.7,
                                    "trials": 4, "counted": 3}


def test_a_tie_goes_to_the_lowest_trial_index():
    assert select_trial([trial(3, 0.6), trial(1, 0.6), trial(2, 0.5)])["trial"] == 1
    assert select_trial([trial(0, 0.6), trial(1, 0.6)])["trial"] == 0


def test_selection_never_sees_a_test_accuracy():
    trials = [trial(0, 0.6, test_acc=None), trial(1, 0.5, test_acc=0.9)]
    with pytest.raises(ValueError, match="test accuracy"):
        select_trial(trials)
    assert select_trial([trial(0, 0.6, test_acc=None), trial(1, 0.5)])["trial"] == 0


def test_no_validation_accuracy_at_all_is_one_line_naming_the_statuses():
    with pytest.raises(TuningError) as caught:
        select_trial([trial(0, None, "failed"), trial(1, None, "diverged"), trial(2, math.nan, "diverged")])
    message = str(caught.value)
    assert "\n" not in message and "3 trials" in message and "2 diverged" in message and "1 failed" in message
    with pytest.raises(ValueError, match="0 trials"):
        select_trial([])


def test_best_so_far_is_the_running_maximum():
    assert best_so_far([None, 0.4, None, 0.3, 0.6, math.nan, 0.5]) == [None, 0.4, 0.4, 0.4, 0.6, 0.6, 0.6]
    assert best_so_far([]) == []
