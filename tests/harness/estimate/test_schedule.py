"""The greedy list schedule the estimate puts jobs on cores with (``harness.estimate.schedule``)."""
from __future__ import annotations

import pytest

from attnbench.harness.estimate.schedule import Job, makespan


def test_one_core_jobs_run_side_by_side_on_the_cores():
    jobs = [Job(f"run{i}", 10.0) for i in range(4)]
    assert makespan(jobs, 2) == 20.0
    assert makespan(jobs, 1) == 40.0
    assert makespan(jobs, 8) == 10.0


def test_a_job_on_every_core_runs_alone():
    jobs = [Job("a", 10.0), Job("b", 10.0), Job("sweep", 5.0, cores=2)]
    assert makespan(jobs, 2) == 15.0
    assert makespan([Job("sweep", 5.0, cores=4)], 2) == 5.0  # asks more than there are: gets them all


def test_a_job_waits_for_those_it_comes_after():
    jobs = [Job("prepare", 3.0), Job("teacher", 10.0, after=("prepare",)), Job("other", 4.0),
            Job("student", 6.0, after=("teacher",)), Job("report", 2.0, after=("student", "other"))]
    assert makespan(jobs, 2) == 3.0 + 10.0 + 6.0 + 2.0
    assert makespan([Job("x", 1.0, after=("not a job",))], 1) == 1.0


def test_a_job_that_does_not_fit_lets_a_later_one_start():
    jobs = [Job("a", 10.0), Job("sweep", 4.0, cores=2), Job("b", 10.0)]
    assert makespan(jobs, 2) == 14.0  # b beside a, then the sweep: not a, the sweep, b


def test_jobs_waiting_for_each_other_are_refused():
    with pytest.raises(ValueError, match="wait for each other"):
        makespan([Job("a", 1.0, after=("b",)), Job("b", 1.0, after=("a",))], 2)
