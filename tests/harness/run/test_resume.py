"""Resumable training: a run killed part-way continues from its last checkpoint and ends
exactly where the uninterrupted run ends (CPU, deterministic, one thread)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from attnbench.harness.config import resolve_run, validate_config
from attnbench.harness.run import checkpoint
from attnbench.harness.run.train import RUN_LOCK, Trainer, train_run
from conftest import tiny_config, torch_state_restored

CLI = Path(sys.executable).with_name("attnbench")
# long enough that the best validation accuracy comes after the kill; dropout on, so that
# the global RNG matters; checkpoints every 7 steps fall between evaluations (every 10)
TRAIN = {"steps": 60, "eval_every": 10, "checkpoint_every": 7, "lr": 0.005, "warmup_steps": 5}


def _config(**override) -> dict:
    return tiny_config(**{"train": TRAIN, "model": {"dropout": 0.1}, "threads": 1, "deterministic": True,
                          "device": "cpu", **override})


def _run(**override) -> dict:
    return resolve_run(validate_config(_config(**override)), "listops", "full", 0)


def _curve(run_dir: Path) -> list[dict]:
    with open(run_dir / "curve.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in ("elapsed_s", "train_s")} for row in csv.DictReader(f)]


def _assert_same_result(a: Path, b: Path) -> None:
    ra, rb = (json.loads((d / "record.json").read_text()) for d in (a, b))
    assert rb["status"] == ra["status"] == "ok"
    assert rb["accuracy"] == ra["accuracy"]  # best_val, test and best_step, exactly
    assert _curve(b) == _curve(a)  # lr, train_loss, val_loss, val_acc at every evaluation
    best_a, best_b = (torch.load(d / "best.pt", weights_only=True)["model"] for d in (a, b))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def _kill_at_step(monkeypatch, step: int) -> None:
    """Simulate a kill in-process: the run stops at ``step`` without writing its record."""
    original = Trainer.train_step

    def train_step(self, x, y, padded=True):
        if self.step == step:
            raise KeyboardInterrupt  # not an Exception: train_run does not turn it into a record
        return original(self, x, y, padded)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def _interrupted(monkeypatch, run_fn, out: Path, step: int = 25) -> None:
    with monkeypatch.context() as m:
        _kill_at_step(m, step)
        with pytest.raises(KeyboardInterrupt), torch_state_restored():
            run_fn(out)
    assert not (out / "record.json").exists()


# ---------------------------------------------------------------- a real kill

@pytest.mark.slow
def test_killed_run_resumes_and_ends_like_the_uninterrupted_one(tmp_path, tiny_listops_data):
    from attnbench.tasks.base import save_prepared

    config = _config(train={**TRAIN, "steps": 100, "checkpoint_every": 10})  # 70 steps left at the kill
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    run = resolve_run(validate_config(config), "listops", "full", 0)
    data_file = tmp_path / "data.pt"
    save_prepared(data_file, "listops", run["task"]["data"], tiny_listops_data)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def cmd(out: Path) -> list[str]:
        return [str(CLI), "train", "--config", str(cfg_file), "--task", "listops", "--variant", "full",
                "--seed", "0", "--data", str(data_file), "--out", str(out), "--no-progress"]

    subprocess.run(cmd(tmp_path / "A"), check=True, env=env, capture_output=True, timeout=300)

    b = tmp_path / "B"
    proc = subprocess.Popen(cmd(b), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:  # the step-20 checkpoint is written before step 21 starts
            seen.append(line)
            if line.startswith("step 30/"):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    assert not (b / "record.json").exists(), "the run ended before it was killed"
    killed_at = torch.load(checkpoint.checkpoint_path(b), weights_only=True)["step"]
    assert killed_at >= 20

    done = subprocess.run(cmd(b), check=True, env=env, capture_output=True, text=True, timeout=300)
    assert f"resuming from step {killed_at} (checkpoint " in done.stdout
    record = json.loads((b / "record.json").read_text())
    assert record["training"]["resumed_from_step"] == killed_at > 0
    assert record["training"]["steps_done"] == 100
    _assert_same_result(tmp_path / "A", b)
    assert json.loads((tmp_path / "A" / "record.json").read_text())["training"]["resumed_from_step"] is None
    assert not (b / "checkpoint").exists() and not (tmp_path / "A" / "checkpoint").exists()


# ---------------------------------------------------------------- in-process (simulated kills)

@pytest.mark.slow
def test_resume_between_evaluations_in_process(tmp_path, tiny_listops_data, monkeypatch, capsys):
    run = _run()

    def train(out):
        return train_run(run, tiny_listops_data, out, bar=False)

    train(tmp_path / "A")
    _interrupted(monkeypatch, train, tmp_path / "B")
    assert torch.load(checkpoint.checkpoint_path(tmp_path / "B"), weights_only=True)["step"] == 21
    capsys.readouterr()
    record = train(tmp_path / "B")
    assert "resuming from step 21 (checkpoint " in capsys.readouterr().out
    assert record["training"]["resumed_from_step"] == 21
    _assert_same_result(tmp_path / "A", tmp_path / "B")


@pytest.mark.slow
def test_checkpoint_of_another_config_is_ignored(tmp_path, tiny_listops_data, monkeypatch, capsys):
    _interrupted(monkeypatch, lambda out: train_run(_run(), tiny_listops_data, out, bar=False), tmp_path / "B")
    other = _run(train={**TRAIN, "lr": 0.002})
    capsys.readouterr()
    record = train_run(other, tiny_listops_data, tmp_path / "B", bar=False)
    out = capsys.readouterr().out
    assert "ignoring checkpoint" in out and "another run config" in out and "resuming" not in out
    assert record["training"]["resumed_from_step"] is None
    train_run(other, tiny_listops_data, tmp_path / "fresh", bar=False)
    _assert_same_result(tmp_path / "fresh", tmp_path / "B")


@pytest.mark.slow
def test_checkpoint_every_alone_does_not_make_another_run(tmp_path, tiny_listops_data, monkeypatch):
    _interrupted(monkeypatch, lambda out: train_run(_run(), tiny_listops_data, out, bar=False), tmp_path / "B")
    record = train_run(_run(train={**TRAIN, "checkpoint_every": 0}), tiny_listops_data, tmp_path / "B", bar=False)
    assert record["training"]["resumed_from_step"] == 21


@pytest.mark.slow
def test_unreadable_checkpoint_is_ignored(tmp_path, tiny_listops_data, capsys):
    path = checkpoint.checkpoint_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    record = train_run(_run(), tiny_listops_data, tmp_path, bar=False)
    assert "ignoring checkpoint" in capsys.readouterr().out
    assert record["status"] == "ok" and record["training"]["resumed_from_step"] is None
    assert not path.parent.exists()


@pytest.mark.slow
def test_checkpoint_every_0_writes_no_checkpoint(tmp_path, tiny_listops_data, monkeypatch):
    run = _run(train={**TRAIN, "checkpoint_every": 0})
    _interrupted(monkeypatch, lambda out: train_run(run, tiny_listops_data, out, bar=False), tmp_path)
    assert not (tmp_path / "checkpoint").exists()
    assert [p.name for p in tmp_path.iterdir()] == [RUN_LOCK]  # the run folder's lock, nothing else


@pytest.mark.slow
def test_distilled_run_resumes(tmp_path, tiny_listops_data, monkeypatch, capsys):
    from attnbench.harness.run.distill import distill_run

    config = validate_config(_config(distill={"students": {"full": {}}}, model={"layers": 2, "dropout": 0.1}))
    with torch_state_restored():
        train_run(resolve_run(config, "listops", "full", 0), tiny_listops_data, tmp_path / "teacher", bar=False)
    run = resolve_run(config, "listops", "full", 0, "distill")

    def distill(out):
        return distill_run(run, tiny_listops_data, out, tmp_path / "teacher", bar=False)

    with torch_state_restored():
        distill(tmp_path / "A")
    _interrupted(monkeypatch, distill, tmp_path / "B", step=33)
    capsys.readouterr()
    record = distill(tmp_path / "B")
    assert "resuming from step 28 (checkpoint " in capsys.readouterr().out
    assert record["training"]["resumed_from_step"] == 28 and record["teacher"]["run_id"] == "listops/full/seed0"
    _assert_same_result(tmp_path / "A", tmp_path / "B")

    # a checkpoint made against another teacher run is not resumed (a retrained teacher's
    # record differs at least in its measured throughput)
    _interrupted(monkeypatch, distill, tmp_path / "C", step=33)
    teacher_record = tmp_path / "teacher" / "record.json"
    changed = json.loads(teacher_record.read_text())
    changed["efficiency"]["train_tokens_per_s"] *= 1.5
    teacher_record.write_text(json.dumps(changed))
    capsys.readouterr()
    record = distill(tmp_path / "C")
    assert "ignoring checkpoint" in capsys.readouterr().out and record["training"]["resumed_from_step"] is None
