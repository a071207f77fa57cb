"""The seeds of a config's final runs: a list, or adaptive (``seeds: {min, max, step, target}``, decided in
rounds: ``seed_rounds``)."""
from __future__ import annotations


def adaptive_seeds(config: dict) -> dict | None:
    """The adaptive ``seeds:`` settings ({min, max, step, target}), or None where the config lists its seeds."""
    return config["seeds"] if isinstance(config["seeds"], dict) else None


def seed_list(config: dict) -> list[int]:
    """Every seed a final run may have: the listed seeds, or with adaptive seeds 0..max-1 (each (task, run label)
    runs seeds 0..n-1, n decided by the rounds of ``harness/config/seed_rounds.py``)."""
    adaptive = adaptive_seeds(config)
    return list(range(adaptive["max"])) if adaptive else [int(s) for s in config["seeds"]]


def first_seed(config: dict) -> int:
    """The first of the final runs' seeds: the one every tuning trial trains with (a distilled student's trials
    learn from the teacher's final run of that seed)."""
    return seed_list(config)[0]
