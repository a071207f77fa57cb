"""A training run's plain progress lines (``harness.run.progress.Log`` without a bar, as in a pipeline job's log):
one per tenth of the planned steps, never two within MIN_INTERVAL_S, with the elapsed time and an ETA from the
rate of the steps so far; the trainer's own lines are kept."""
from __future__ import annotations

import re

import pytest

from attnbench.harness.run.progress import MIN_INTERVAL_S, Log, clock

LINE = re.compile(r"^step (\d+)/(\d+) \((\d+)%\)  elapsed (\d+:\d\d)  ETA (\d+:\d\d)$")


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def progress_lines(out: str) -> list[tuple[int, int, int, str, str]]:
    return [(int(m[1]), int(m[2]), int(m[3]), m[4], m[5]) for m in map(LINE.match, out.splitlines()) if m]


def test_a_line_per_tenth_of_the_steps_with_elapsed_time_and_eta(capsys):
    now = Clock()
    log = Log(300, "listops/full/seed0", bar=False, now=now)
    now.t += 2.0  # building the model before the first step: elapsed, not in the rate
    log.total(300)
    for step in range(1, 301):
        now.t += 0.5 if step % 100 else 5.5  # an evaluation every 100 steps takes 5 s more
        log.step()
        if step % 100 == 0:
            log.line(f"step {step}/300  train_loss 1.0  val_loss 1.0  val_acc 0.5  best 0.5@{step}")
    out = capsys.readouterr().out
    lines = progress_lines(out)
    assert [done for done, *_ in lines] == list(range(30, 301, 30))
    assert all(total == 300 and pct == done // 3 for done, total, pct, _, _ in lines)
    done, _, _, elapsed, eta = lines[3]  # step 120: 2 s of set-up, 119 steps of 0.5 s and one evaluation after step 1
    assert done == 120 and elapsed == clock(2.0 + 120 * 0.5 + 5.0)
    rate = (119 * 0.5 + 5.0) / 119  # from the first step on, evaluations included
    assert eta == clock(rate * 180)
    assert lines[-1][4] == "0:00"
    assert out.count("train_loss") == 3  # the evaluation lines stay


def test_never_more_often_than_the_minimum_interval(capsys):
    now = Clock()
    log = Log(1000, "fast", bar=False, now=now)
    for _ in range(1000):
        now.t += MIN_INTERVAL_S / 150  # a tenth of the steps (100) in two thirds of the interval
        log.step()
    done = [d for d, *_ in progress_lines(capsys.readouterr().out)]
    assert 3 <= len(done) <= 7 and done == sorted(done)
    assert all(b - a >= 150 for a, b in zip(done, done[1:], strict=False))  # 150 steps make one interval


def test_a_resumed_run_counts_its_rate_from_its_first_step_here(capsys):
    now = Clock()
    log = Log(100, "resumed", bar=False, now=now)
    log.step(60)  # resumed from step 60: those steps took no time here
    for _ in range(40):
        now.t += 1.0
        log.step()
    lines = progress_lines(capsys.readouterr().out)
    assert [d for d, *_ in lines] == [70, 80, 90, 100]
    assert lines[0][4] == clock(30 * 1.0)  # 1 s per step, 30 left at step 70


def test_a_budget_known_later_sets_the_marks(capsys):
    now = Clock()
    log = Log(1000, "flops budget", bar=False, now=now)
    log.total(50)  # a FLOPs budget: 50 steps
    for _ in range(50):
        now.t += 10.0
        log.step()
    assert [d for d, *_ in progress_lines(capsys.readouterr().out)] == list(range(5, 51, 5))


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.6, "1:00"), (125, "2:05"), (3725, "1:02:05")])
def test_clock(seconds, text):
    assert clock(seconds) == text
