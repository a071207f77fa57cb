"""Training's memory cap: a job that grows past it ends as an oom record instead of taking the machine down."""
from __future__ import annotations

import resource

import psutil
import pytest
import torch

from attnbench.harness.measure.memory import MIB, cpu_address_limit, memory_cap
from attnbench.harness.results.records import read_record
from attnbench.harness.run.model import EncoderClassifier
from attnbench.harness.run.train import train_run
from conftest import tiny_run

INF = resource.RLIM_INFINITY


def test_the_address_limit_lets_resident_memory_grow_to_the_cap_and_keeps_a_lower_one():
    assert cpu_address_limit(cap=1000, vms=5000, rss=300, current_soft=INF) == 5700
    assert cpu_address_limit(cap=200, vms=5000, rss=300, current_soft=INF) == 5000  # already past: no growth
    assert cpu_address_limit(cap=1000, vms=5000, rss=300, current_soft=5200) == 5200  # `ulimit -v` stays


def _resident_mb() -> int:
    return psutil.Process().memory_info().rss // MIB


def test_an_allocation_past_the_cap_fails_inside_and_the_limit_is_restored_after():
    before = resource.getrlimit(resource.RLIMIT_AS)
    cap_mb = _resident_mb() + 64  # the cap is the process's whole resident size: 64 MiB more than now
    with memory_cap(torch.device("cpu"), cap_mb) as cap:
        assert cap["bytes"] == cap_mb * MIB and "RLIMIT_AS" in cap["method"]
        with pytest.raises(RuntimeError, match="can't allocate memory"):
            torch.empty(256 * MIB, dtype=torch.uint8)
        small = torch.ones(4 * MIB, dtype=torch.uint8)  # within the cap: fine
        assert int(small.sum()) == 4 * MIB
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    assert torch.empty(256 * MIB, dtype=torch.uint8).numel() == 256 * MIB


def test_the_default_cap_is_80_percent_of_ram():
    with memory_cap(torch.device("cpu"), 0) as cap:
        assert cap["bytes"] == int(0.8 * psutil.virtual_memory().total)


@pytest.mark.slow
def test_a_run_that_grows_past_its_cap_is_an_oom_record(tmp_path, tiny_listops_data, monkeypatch):
    leak, original = [], EncoderClassifier.forward

    def leaking(self, tokens, padded=True):  # holds 32 MiB more on every training forward
        if self.training:
            leak.append(torch.ones(32 * MIB, dtype=torch.uint8))
        return original(self, tokens, padded)

    monkeypatch.setattr(EncoderClassifier, "forward", leaking)
    before = resource.getrlimit(resource.RLIMIT_AS)
    cap_mb = _resident_mb() + 200
    try:
        record = train_run(tiny_run(train={"memory_cap_mb": cap_mb, "steps": 40}), tiny_listops_data, tmp_path,
                           bar=False)
    finally:
        leak.clear()
    assert record["status"] == "oom", record["message"]
    assert "can't allocate memory" in record["message"]
    assert f"memory cap {cap_mb} MiB: train.memory_cap_mb" in record["message"]
    stored = read_record(tmp_path / "record.json")
    assert stored["training"]["memory_cap_bytes"] == cap_mb * MIB
    assert "RLIMIT_AS" in stored["training"]["memory_cap_method"]
    assert 1 <= stored["training"]["steps_done"] < 10  # steps before the cap: 200 MiB more holds 6 leaked blocks
    assert resource.getrlimit(resource.RLIMIT_AS) == before


@pytest.mark.slow
def test_a_run_within_its_cap_records_the_cap(tmp_path, tiny_listops_data):
    cap_mb = _resident_mb() + 2048
    record = train_run(tiny_run(train={"memory_cap_mb": cap_mb}), tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "ok" and record["training"]["memory_cap_bytes"] == cap_mb * MIB
