"""Every process the harness starts stops with it (issue 26, items 4 and 7): a SIGTERM to `make run`'s
make stops snakemake and its training jobs, a SIGTERM to `attnbench bench` stops its pytest process and
that process's workers and removes its temporary folder, and Ctrl-C is one line and exit status 130,
with no record written for the run it stopped."""
from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from attnbench.harness.bench.files import sweep_plan
from attnbench.harness.config import validate_config
from attnbench.harness.core import locks
from attnbench.harness.run.train import own_run_folder
from attnbench.tasks.base import save_prepared
from conftest import REPO, stop_process, tiny_config, tiny_run

BIN = Path(sys.executable).parent
#: what the issue asks: nothing of the stopped command runs this long after the signal
STOP_WITHIN_S = 20.0
#: a training run that goes on for minutes: something to stop
ENDLESS_TRAIN = {"steps": 10 ** 7, "eval_every": 10 ** 6}


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen, log: Path | None = None) -> None:
    """Wait until ``condition()``; fail, with the command's output (its stderr, or ``log``), if it ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            output = log.read_text() if log else proc.stderr.read()
            raise AssertionError(f"the command ended (exit status {proc.returncode}) before {what}: {output[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:g} s")
        time.sleep(0.2)


def descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    """Every process ``proc`` started, and those they started, running now (not ``proc``: its exit status is
    the Popen's to collect)."""
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def in_folder(folder: Path) -> list[psutil.Process]:
    """The processes working in ``folder`` (snakemake's --directory, which its jobs inherit)."""
    found = []
    for p in psutil.process_iter():
        try:
            if Path(p.cwd()) == folder:
                found.append(p)
        except psutil.Error:
            pass
    return found


def still_running(procs: list[psutil.Process], timeout: float) -> list[str]:
    """The command lines of those of ``procs`` still running ``timeout`` seconds from now (at the latest)."""
    _, alive = psutil.wait_procs(procs, timeout=max(0.0, timeout))
    left = []
    for p in alive:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(p.cmdline())[:200])
        except psutil.Error:  # ended meanwhile
            pass
    return left


def kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def _start(cmd: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_sigterm_to_make_run_leaves_no_snakemake_or_training_job_behind(tmp_path):
    config = tiny_config(train=ENDLESS_TRAIN, bench={"enabled": False})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    venv = BIN.parent
    args = f"--directory {shlex.quote(str(tmp_path))} --configfile {shlex.quote(str(tmp_path / 'config.yaml'))}"
    log = tmp_path / "make.log"  # a file, not a pipe nobody reads while snakemake writes
    run_dir = tmp_path / "results" / "runs" / "listops" / "full" / "seed0"
    seen: list[psutil.Process] = []
    with log.open("w") as out:
        # -o: the venv counts as installed (the tests run in it)
        make = subprocess.Popen(["make", "-C", str(REPO), "-o", f"{venv}/.installed", f"VENV={venv}", "run",
                                 f"SNAKEMAKE_ARGS={args}"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (run_dir / ".lock").exists(), 90, "training job", make, log)
        time.sleep(1.0)  # training, step after step
        seen = descendants(make)
        assert any("snakemake" in " ".join(p.cmdline()) for p in seen)
        assert any("attnbench train" in " ".join(p.cmdline()) for p in seen)
        make.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        left = still_running(seen, STOP_WITHIN_S)
        left += still_running(in_folder(tmp_path), 0)
        assert not left, f"still running {time.monotonic() - t0:.1f} s after the SIGTERM: {left}"
        assert make.wait(timeout=5) != 0
        assert not (run_dir / "record.json").exists()  # a stopped run has no record
        locks.release(own_run_folder(run_dir, "listops/full/seed0"))  # and no process holds its folder
    finally:
        kill_all(seen + in_folder(tmp_path))
        if make.poll() is None:
            make.kill()
        make.wait(timeout=30)


@pytest.mark.slow
def test_sigterm_to_attnbench_bench_stops_its_pytest_and_workers_and_removes_its_temporary_folder(tmp_path):
    cfg = validate_config(tiny_config(bench={"lengths": [64, 128], "modes": ["forward"], "scopes": ["layer"],
                                             "backends": {"full": ["default"]}, "warmup": 0, "repeats": 10 ** 6}))
    out = tmp_path / "bench" / "full.json"
    plan = sweep_plan(cfg, "full", out.parent / ".work")
    bench = _start([str(BIN / "attnbench"), "bench", "--variant", "full", "--sweep-json", json.dumps(plan),
                    "--out", str(out), "--cores", "2"])
    seen: list[psutil.Process] = []
    try:
        # attnbench -> pytest -> a worker (the matmul probe, a case's fresh-process probe): every generation
        wait_for(lambda: len(descendants(bench)) >= 2, 60, "worker process of the sweep", bench)
        assert list(out.parent.glob(".bench-*"))
        seen = descendants(bench)
        bench.send_signal(signal.SIGTERM)
        left = still_running(seen, STOP_WITHIN_S)
        assert not left, f"still running after the SIGTERM: {left}"
        err = bench.stderr.read()
        assert bench.wait(timeout=5) == 128 + signal.SIGTERM
        assert err.strip().splitlines()[-1] == "attnbench: stopped by SIGTERM" and "Traceback" not in err, err
        assert not list(out.parent.glob(".bench-*")) and not out.exists()
    finally:
        kill_all(seen)
        stop_process(bench)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "line"), [(signal.SIGINT, "attnbench: interrupted"),
                                           (signal.SIGTERM, "attnbench: stopped by SIGTERM")])
def test_a_stopped_training_run_is_one_line_and_writes_no_record(tmp_path, tiny_listops_data, sig, line):
    run = tiny_run(train=ENDLESS_TRAIN)
    data = tmp_path / "dataset.pt"
    save_prepared(data, "listops", run["task"]["data"], tiny_listops_data)
    folder = tmp_path / "run"
    train = _start([str(BIN / "attnbench"), "train", "--task", "listops", "--variant", "full", "--seed", "0",
                    "--data", str(data), "--run-config", json.dumps(run), "--out", str(folder), "--no-progress"])
    try:
        wait_for(lambda: (folder / ".lock").exists(), 60, "training", train)
        time.sleep(1.0)
        train.send_signal(sig)
        status = train.wait(timeout=STOP_WITHIN_S)
        err = train.stderr.read()
        assert status == 128 + sig, err  # its stderr says why, where it is not
        assert err.strip().splitlines() == [line], err  # Ctrl-C: one line, no traceback
        assert not (folder / "record.json").exists()  # no false record
        locks.release(own_run_folder(folder, "listops/full/seed0"))  # the folder is free again
    finally:
        stop_process(train)


@pytest.mark.slow
def test_an_interrupted_fresh_process_measurement_stops_its_worker(tmp_path):
    """``run_fresh`` waits on a worker; interrupted (Ctrl-C, a stop signal, a watchdog), it kills the worker
    instead of leaving it measuring on a core."""
    from attnbench.harness.measure.fresh_process import run_fresh

    (tmp_path / "sleepy_worker.py").write_text("import time\ntime.sleep(60)\n")
    seen = {}

    def interrupt(signum, frame):
        seen["workers"] = psutil.Process().children()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_fresh("sleepy_worker", {}, timeout_s=30, workdir=tmp_path / "work",
                      extra_env={"PYTHONPATH": str(tmp_path)})
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert len(seen["workers"]) == 1
    gone, alive = psutil.wait_procs(seen["workers"], timeout=5)
    assert not alive
