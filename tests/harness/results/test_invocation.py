"""Which pipeline invocation measured a run: the planning snakemake sets ATTNBENCH_INVOCATION, its jobs inherit it
and a record's environment carries it (a run by hand: none)."""
from __future__ import annotations

import torch

from attnbench.harness.results.environment import INVOCATION_VAR, capture, invocation_id


def test_a_record_says_which_invocation_measured_it(monkeypatch):
    monkeypatch.delenv(INVOCATION_VAR, raising=False)
    assert capture(torch.device("cpu"))["invocation"] is None
    first = invocation_id()
    monkeypatch.setenv(INVOCATION_VAR, first)
    assert capture(torch.device("cpu"))["invocation"] == first
    stamp, _, pid = first.partition("-")[0], None, first.rsplit("-", 1)[1]
    assert stamp.endswith("Z") and pid.isdigit()
