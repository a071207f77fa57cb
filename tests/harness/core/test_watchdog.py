"""Time limits hold inside a step (issue 26, item 5): a forward that never returns ends a training run as a
`timeout` record, fails its check of `attnbench check-variant` (and the next checks run), and ends the timing
of a sweep's case as a `timeout` row; one stuck where no signal gets through ends the process
(``core.watchdog``)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
import torch.nn.functional as F

from attnbench.harness import cli
from attnbench.harness.bench.files import run_sweep, sweep_file
from attnbench.harness.config import validate_config
from attnbench.harness.core import watchdog
from attnbench.harness.run.train import Trainer, train_run
from attnbench.harness.run.trainer import LIMIT_SLACK_S
from conftest import tiny_config, tiny_run

#: how long the stand-ins for a forward that never returns wait before giving up (raising): a test of a
#: watchdog that does not work fails instead of hanging
HANG_S = 30.0


def hang() -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < HANG_S:
        time.sleep(0.01)
    raise RuntimeError(f"still hanging after {HANG_S:g} s: no watchdog ended it")


@pytest.mark.slow
def test_a_deadline_interrupts_its_block_but_not_an_uninterrupted_part():
    t0 = time.monotonic()
    with watchdog.Deadline(0.2, "sleep") as limit:
        try:
            hang()
        except Exception:  # the work's own `except Exception` does not swallow the limit
            pytest.fail("Expired was caught as an Exception")
    assert limit.expired and limit.fired and time.monotonic() - t0 < 5
    with watchdog.Deadline(0.1, "update") as limit, watchdog.uninterrupted():
        time.sleep(0.3)  # past the limit, not interrupted: the work sees `fired` when it is done
        done = True
    assert done and limit.fired and not limit.expired
    with watchdog.Deadline(0.1, "step") as limit, watchdog.uninterrupted():
        with watchdog.interruptible():
            hang()
    assert limit.expired
    with watchdog.Deadline(0, "no limit") as limit:
        time.sleep(0.05)
    assert not limit.fired and not limit.expired


@pytest.mark.slow
def test_a_block_stuck_where_no_signal_gets_through_ends_the_process():
    code = textwrap.dedent("""
        import signal, time
        from attnbench.harness.core.watchdog import Deadline
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # as one native call that never returns
        with Deadline(0.1, "the stuck work", grace_s=0.3, on_stuck=lambda: print("last word", flush=True)):
            time.sleep(60)
        print("not reached")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == watchdog.STUCK_EXIT and done.stdout == "last word\n"
    assert "the stuck work did not stop within 0.3 s of its time limit of 0.1 s" in done.stderr


class HangingTrainer(Trainer):
    """A trainer whose forward never returns from its third step on."""

    def loss(self, x, y, padded=True):
        if self.step >= 3:
            hang()
        return F.cross_entropy(self.model(x, padded), y)


@pytest.mark.slow
def test_a_training_step_that_never_returns_ends_in_a_timeout_record(tmp_path, tiny_listops_data):
    limit_min = 0.005  # 0.3 s
    run = tiny_run(train={"steps": 50, "eval_every": 1, "time_limit_min": limit_min, "test_checkpoint": "final"})
    t0 = time.monotonic()
    record = train_run(run, tiny_listops_data, tmp_path, bar=False, trainer_cls=HangingTrainer)
    assert time.monotonic() - t0 < limit_min * 60 + LIMIT_SLACK_S + HANG_S / 2
    assert (record["status"], record["training"]["steps_done"]) == ("timeout", 2), record["message"]
    assert "reached at step 2 of 50" in record["message"] and "interrupted" in record["message"]
    # the interrupted step is not counted: the weights tested are those the second step left
    assert record["accuracy"]["test"] is not None and record["accuracy"]["checkpoint"] == "final"
    assert [row.split(",")[0] for row in (tmp_path / "curve.csv").read_text().splitlines()[1:]] == ["1", "2"]


HANGING_VARIANT = '''
import math
import time

import torch

from attnbench.variants import Attention


class HangingAttention(Attention):
    """Softmax attention whose float32 forward never returns (a stand-in: it gives up after {hang_s} s)."""

    complexity = "O(N^2)"

    def attend(self, q, k, v, key_padding_mask):
        t0 = time.monotonic()
        while q.dtype == torch.float32 and time.monotonic() - t0 < {hang_s}:
            time.sleep(0.01)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if key_padding_mask is not None:
            scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
        return scores.softmax(-1) @ v

    def flops(self, batch, seq_len):
        return 4 * batch * self.heads * seq_len * seq_len * self.head_dim + self.projection_flops(batch, seq_len)
'''


@pytest.mark.slow
def test_check_variant_fails_a_check_that_never_returns_and_runs_the_next(tmp_path, monkeypatch, capsys):
    (tmp_path / "hanging.py").write_text(HANGING_VARIANT.format(hang_s=HANG_S))
    monkeypatch.syspath_prepend(str(tmp_path))
    rc = cli.main(["check-variant", "hanging:HangingAttention", "--no-memory", "--check-timeout", "0.5"])
    out = capsys.readouterr().out
    status = {line[6:27].strip(): (line.split()[0], line[27:].strip()) for line in out.splitlines()
              if line.startswith("  ")}
    assert rc == 1
    for check in ("shapes and dtypes", "gradients"):  # the float32 forwards
        assert status[check] == ("FAIL", "did not finish within the time limit of 0.5 s (--check-timeout): "
                                         "interrupted"), out
    assert status["padding invariance"][0] == status["max_len"][0] == "PASS"  # float64: the next checks ran
    assert "failed: shapes and dtypes, gradients" in out


SLOWING_VARIANT = '''
import math
import time

from attnbench.variants import Attention

CALLS = [0]


class SlowingAttention(Attention):
    """Softmax attention whose forward never returns from its fourth call in a process on (a stand-in: it gives
    up after {hang_s} s): a sweep's probe, three steps in a fresh process, passes; its timing hangs."""

    complexity = "O(N^2)"

    def attend(self, q, k, v, key_padding_mask):
        CALLS[0] += 1
        t0 = time.monotonic()
        while CALLS[0] > 3 and time.monotonic() - t0 < {hang_s}:
            time.sleep(0.01)
        return ((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])).softmax(-1) @ v

    def flops(self, batch, seq_len):
        return 4 * batch * self.heads * seq_len * seq_len * self.head_dim + self.projection_flops(batch, seq_len)
'''


@pytest.mark.slow
def test_a_sweep_case_whose_timing_never_returns_is_a_timeout_row(tmp_path, monkeypatch):
    (tmp_path / "slowing.py").write_text(SLOWING_VARIANT.format(hang_s=HANG_S))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the sweep's pytest process and its workers import it
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = validate_config(tiny_config(variants={"slowing": {"from": "slowing:SlowingAttention"}}, bench={
        "lengths": [32], "modes": ["forward"], "scopes": ["layer"], "warmup": 0, "repeats": 4, "time_cap_s": 0.5}))
    out = tmp_path / "bench" / "slowing.json"
    t0 = time.monotonic()
    assert run_sweep(sweep_file(cfg, "slowing", 1, tmp_path / "work"), out) == 0
    assert time.monotonic() - t0 < HANG_S
    data = json.loads(out.read_text())
    (row,) = data["attnbench"]["rows"]
    assert row["status"] == "timeout" and "while timing" in row["message"] and "bench.time_cap_s" in row["message"]
    assert data["benchmarks"] == []  # pytest-benchmark keeps none of its steps
