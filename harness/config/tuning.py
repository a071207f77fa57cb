"""Tuning with an equal budget per variant: the trial design and the selection, as pure functions.

Every (task, variant) of a config with a ``tune:`` section trains the same ``tune.trials`` points
(``trial_points``): trial 0 is the config's own, untuned settings (``own_point``), trials 1.. a
seeded design over ``tune.space`` (a scrambled Halton or Sobol sequence, or numpy's seeded
generator). A trial never reads the test split; the selected trial (``select_trial``) is the one
with the highest *validation* accuracy, and the final runs train with its point (``apply_point``).

TUNE_KEYS: a searched key is dotted, ``<section>.<setting>``, and names a setting that the
resolved run config (``runs.resolve_run``) already has:

- ``train.<setting>``: a training setting (``train.lr``, ``train.weight_decay``, ``train.warmup_steps``);
- ``model.<setting>``: a model setting (``model.dropout``, ``model.attn_dropout``);
- ``variant.<param>``: a parameter of the run's attention variant, held in the run's
  ``variant.params`` (``variant.window`` for the window variant).

A space entry is ``{"low", "high", "log", "integer"}`` (a range: geometric where ``log``, whole
numbers where ``integer``) or ``{"choices": [values]}``. Design values that are floats are rounded
to 4 significant digits, so that points read the same in JSON, hashes and tables.
"""
from __future__ import annotations

import copy
import math
from collections import Counter
from typing import TypeGuard

import numpy as np

from attnbench.harness.config.schema import ConfigError
from attnbench.harness.core.errors import UserError

#: section of a dotted tune key -> where its settings live in a resolved run config
TUNE_KEYS: dict[str, tuple[str, ...]] = {"train": ("train",), "model": ("model",), "variant": ("variant", "params")}
SAMPLERS = ("halton", "sobol", "random")
SIGNIFICANT_DIGITS = 4


class TuningError(UserError, ValueError):
    """Tuning that cannot pick a setting: no trial of a (task, variant) has a validation accuracy."""


def trial_points(tune: dict, own: dict) -> list[dict]:
    """The ``tune["trials"]`` points each (task, variant) trains, the same for every variant but for
    point 0, which is ``own`` (the run's own values of the searched keys, see ``own_point``); points
    1.. are the seeded design over ``tune["space"]``. Each point's keys are the space's, sorted; the
    same ``tune`` and ``own`` give the same points in any process."""
    keys = sorted(tune["space"])
    if not keys:
        raise ConfigError("tune.space is empty: name at least one setting to search")
    missing = [k for k in keys if k not in own]
    if missing:
        raise ConfigError(f"tune.space key {missing[0]!r} has no value in the run's own settings "
                          f"(own settings: {', '.join(sorted(own)) or 'none'})")
    trials = int(tune["trials"])
    if trials < 1:
        raise ConfigError(f"tune.trials is {trials}; it must be at least 1")
    unit = _unit_design(tune.get("sampler", "halton"), len(keys), trials - 1, int(tune["seed"]))
    design = [{k: _map(k, tune["space"][k], u) for k, u in zip(keys, row, strict=True)} for row in unit]
    return [{k: copy.deepcopy(own[k]) for k in keys}, *design]


def apply_point(run: dict, point: dict) -> dict:
    """A copy of the resolved run config ``run`` with ``point``'s settings set (``variant.<param>`` in
    ``run["variant"]["params"]``); ``run`` is left as it was. A key whose section or setting the run
    does not have is a ConfigError naming it (a typo such as ``train.lrr`` is not silently added)."""
    out = copy.deepcopy(run)
    for key, value in point.items():
        settings, name = _locate(out, key)
        settings[name] = copy.deepcopy(value)
    return out


def own_point(run: dict, space: dict) -> dict:
    """The resolved run config's own values of the keys of ``space``, sorted by key: trial 0's point,
    the inverse of ``apply_point``."""
    point = {}
    for key in sorted(space):
        settings, name = _locate(run, key)
        point[key] = copy.deepcopy(settings[name])
    return point


def select_trial(trials: list[dict]) -> dict:
    """The trial with the highest validation accuracy (``best_val_acc``), ties to the lowest trial index.

    ``trials``: ``{"trial", "status", "best_val_acc", "point"}`` each. Any trial with a validation
    accuracy counts, whatever its status (a trial stopped by its time limit was still evaluated).
    A trial that carries a test accuracy is a ValueError: selection must not be able to see one.
    Returns ``{"trial", "point", "best_val_acc", "trials": how many, "counted": how many had a
    validation accuracy}``; a TuningError when none had one."""
    leaked = [t["trial"] for t in trials if t.get("test_acc") is not None]
    if leaked:
        raise ValueError(f"tuning trial(s) {', '.join(map(str, leaked))} carry a test accuracy; "
                         "a trial must never read the test split")
    usable = sorted((t for t in trials if _number(t.get("best_val_acc"))), key=lambda t: t["trial"])
    if not usable:
        statuses = Counter(str(t.get("status")) for t in trials)
        summary = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "none ran"
        raise TuningError(f"no tuning trial has a validation accuracy ({len(trials)} trials: {summary}); "
                          "give the trials more steps or time (tune.train), or look at their logs")
    best = usable[0]
    for t in usable[1:]:
        if t["best_val_acc"] > best["best_val_acc"]:  # strictly higher: a tie keeps the lower index
            best = t
    return {"trial": best["trial"], "point": best["point"], "best_val_acc": best["best_val_acc"],
            "trials": len(trials), "counted": len(usable)}


def best_so_far(val_accs: list[float | None]) -> list[float | None]:
    """The running maximum of the trials' validation accuracies in trial order (None, or NaN, counts
    as no value; None until the first value): did the budget of trials suffice?"""
    out: list[float | None] = []
    best = None
    for v in val_accs:
        if _number(v) and (best is None or v > best):
            best = v
        out.append(best)
    return out


def _number(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a number: not None, not NaN."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _locate(run: dict, key: str) -> tuple[dict, str]:
    """The settings dict of ``run`` that holds the dotted ``key``, and the setting's name in it."""
    section, _, name = key.partition(".")
    if section not in TUNE_KEYS or not name or "." in name:
        raise ConfigError(f"tune key {key!r} is not <section>.<setting> with section one of "
                          f"{', '.join(TUNE_KEYS)}")
    settings = run
    for part in TUNE_KEYS[section]:
        settings = settings[part]
    if name not in settings:
        where = "the variant's parameters" if section == "variant" else f"the {section} settings"
        raise ConfigError(f"tune key {key!r}: {name!r} is not one of {where} ({', '.join(sorted(settings))})")
    return settings, name


def _unit_design(sampler: str, dims: int, n: int, seed: int) -> np.ndarray:
    """``n`` points of the unit cube ``[0, 1)^dims``, seeded."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"tune.sampler {sampler!r}; known samplers: {', '.join(SAMPLERS)}")
    rng = np.random.default_rng(seed)
    if n == 0:
        return np.empty((0, dims))
    if sampler == "random":
        return rng.random((n, dims))
    from scipy.stats import qmc  # here: scipy.stats is slow to import and only tuning needs it

    if sampler == "halton":
        return qmc.Halton(dims, scramble=True, seed=rng).random(n)
    # Sobol's balance needs a power of two: draw the next one and keep the first n
    return qmc.Sobol(dims, scramble=True, seed=rng).random_base2(max(0, math.ceil(math.log2(n))))[:n]


def _map(key: str, spec: dict, u: float):
    """The unit value ``u`` as a value of the space entry ``spec`` of ``key``."""
    if "choices" in spec:
        choices = spec["choices"]
        if not choices:
            raise ConfigError(f"tune.space.{key}: choices is empty")
        return copy.deepcopy(choices[min(int(u * len(choices)), len(choices) - 1)])
    low, high, log, integer = spec["low"], spec["high"], spec.get("log", False), spec.get("integer", False)
    if not low <= high or (log and low <= 0):
        raise ConfigError(f"tune.space.{key}: low {low} and high {high} are not a range"
                          + (" of positive numbers (log scale)" if log else ""))
    if integer:  # each whole number of [low, high] an equal share of the (log) line: draw in [low, high + 1)
        low, high = math.ceil(low), math.floor(high)
        if low > high:
            raise ConfigError(f"tune.space.{key}: no whole number between low and high")
        value = _scale(low, high + 1, log, u)
        return int(min(max(math.floor(value), low), high))
    value = float(f"{_scale(low, high, log, u):.{SIGNIFICANT_DIGITS - 1}e}")
    return min(max(value, float(low)), float(high))


def _scale(low: float, high: float, log: bool, u: float) -> float:
    if log:
        return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    return low + u * (high - low)
