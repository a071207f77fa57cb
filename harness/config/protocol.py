"""Checks of the fair-comparison protocol's config sections that the schema cannot express: a task's
``lengths`` (accuracy against length), ``tune:`` (an equal tuning budget per variant) and adaptive
``seeds:``. One line per problem, each naming its key; ``validate.validate_config`` raises them together."""
from __future__ import annotations

from attnbench.harness.config.runs import length_param, length_settings
from attnbench.harness.core.registry import build_dataclass
from attnbench.harness.run.train_config import TrainConfig


def check_lengths(config: dict) -> list[str]:
    """A task given ``lengths`` must have a length setting (``Task.length_param``) and must not also set in its
    ``data:`` what each length sets (``Task.length_settings``: ListOps' max_length and min_length)."""
    problems = []
    for task, settings in config["tasks"].items():
        if not settings.get("lengths"):
            continue
        kind = settings.get("task", task)
        if length_param(kind) is None:
            problems.append(f"'tasks.{task}.lengths': task {kind!r} has no length setting (its data fix its "
                            "length); leave 'lengths' out")
            continue
        for param in length_settings(kind, settings["lengths"][0]):
            if param in settings.get("data", {}):
                problems.append(f"'tasks.{task}.data.{param}' is set and 'tasks.{task}.lengths' sets it at each "
                                "length; keep one of them")
    return problems


def check_tune(config: dict) -> list[str]:
    """``tune:`` when it is on (trials > 0): a non-empty space, each entry a range (low < high, low > 0 on a log
    scale) or choices, not both; ``tune.train`` keys of the train settings. (Whether each key names a setting of
    the runs is checked when the trials are resolved, ``runs.resolve_run``.)"""
    tune = config["tune"]
    if not tune["trials"]:
        return []
    if not tune["space"]:
        return ["'tune.space' is empty while 'tune.trials' is set: name the settings to search, e.g. "
                "{train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}}"]
    problems = []
    for key, spec in tune["space"].items():
        where = f"'tune.space.{key}'"
        if "choices" in spec:
            if {"low", "high"} & set(spec):
                problems.append(f"{where}: give either choices or low/high, not both")
            continue
        if not {"low", "high"} <= set(spec):
            problems.append(f"{where}: give low and high (or choices)")
        elif spec["low"] >= spec["high"]:
            problems.append(f"{where}: low {spec['low']} must be below high {spec['high']}")
        elif spec.get("log") and spec["low"] <= 0:
            problems.append(f"{where}: a log scale needs low > 0 (it is {spec['low']})")
    try:
        build_dataclass(TrainConfig, {**config["train"], **tune["train"]}, "'tune.train'")
    except (ValueError, TypeError) as exc:
        problems.append(str(exc))
    return problems


def run_labels(config: dict) -> list[str]:
    """The run labels of the config: its variants (trained from labels) and its distilled students."""
    return list(config["variants"]) + [f"distilled[{student}]" for student in config["distill"]["students"]]


def check_seeds(config: dict) -> list[str]:
    """Adaptive ``seeds:``: min at most max, and a reference that is one of the config's run labels."""
    seeds = config["seeds"]
    if not isinstance(seeds, dict):
        return []
    problems = []
    if seeds["min"] > seeds["max"]:
        problems.append(f"'seeds.min' ({seeds['min']}) is above 'seeds.max' ({seeds['max']})")
    labels = run_labels(config)
    if seeds["target"]["reference"] not in labels:
        problems.append(f"'seeds.target.reference' is {seeds['target']['reference']!r}, not a run of the config; "
                        f"name one of: {', '.join(labels)}")
    return problems
