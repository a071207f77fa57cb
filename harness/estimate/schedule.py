"""The wall time of jobs on a number of cores: a greedy list schedule, as Snakemake's local executor runs them.

Each job takes ``cores`` cores (a training job its ``threads``, a sweep job all of them) for ``seconds`` once
the jobs it comes ``after`` have ended. Whenever cores are free, the ready jobs are started in the order given
(a job that does not fit is passed over for one behind it that does)."""
from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    """One job to schedule: its name, its seconds, the cores it holds and the names it waits for."""

    name: str
    seconds: float
    cores: int = 1
    after: tuple[str, ...] = ()


def makespan(jobs: Sequence[Job], cores: int) -> float:
    """Seconds from the first job's start to the last one's end (jobs asking more than ``cores`` get them all;
    one waiting for a name that is no job waits for nothing)."""
    names = {job.name for job in jobs}
    pending = list(jobs)
    done: set[str] = set()
    running: list[tuple[float, int, str, int]] = []  # (end, order, name, cores)
    now, free = 0.0, cores
    while pending or running:
        for job in list(pending):
            need = min(job.cores, cores)
            if need <= free and all(a in done or a not in names for a in job.after):
                pending.remove(job)
                free -= need
                heapq.heappush(running, (now + job.seconds, len(done) + len(running), job.name, need))
        if not running:  # what is left waits for jobs that never end: a cycle
            raise ValueError(f"jobs that wait for each other: {', '.join(job.name for job in pending)}")
        now, _, name, held = heapq.heappop(running)
        done.add(name)
        free += held
    return now
