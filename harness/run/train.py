"""A training run from its config to its record: ``train_run`` trains one (task, variant, seed) with a
``Trainer`` (``harness.run.trainer``: the loop; imported here too, so ``train_run`` and ``Trainer`` both come
from this module) and writes, in the run's folder, its record (``harness.run.record``), its curve
(``curve.csv``) and its best-validation weights (``best.pt``).

``train_run`` never raises for an outcome of the run itself: running out of memory, a
non-finite loss, the time limit, or an unexpected error each end in a record with the
matching status, so the pipeline goes on and the report shows what happened.

With ``train.checkpoint_every`` set, a run killed part-way resumes from its last checkpoint
when run again (``attnbench.harness.run.checkpoint``).
"""
from __future__ import annotations

import dataclasses
import os
import random
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnbench.harness.core import locks
from attnbench.harness.core.errors import UserError, WriteError
from attnbench.harness.core.io import atomic_torch_save
from attnbench.harness.measure.memory import PeakMemory, is_out_of_memory, memory_cap
from attnbench.harness.results.records import RECORD_NAME, RunKey, run_stage, write_record
from attnbench.harness.run import checkpoint
from attnbench.harness.run.batches import place_splits
from attnbench.harness.run.progress import Log
from attnbench.harness.run.record import baselines, build_record, write_curve
from attnbench.harness.run.trainer import Diverged, TimeLimit, Trainer
from attnbench.tasks.base import PreparedData

#: the lock file that makes a run folder one process's at a time (``own_run_folder``)
RUN_LOCK = ".lock"


def resolve_device(name: str) -> torch.device:
    """The device ``run.device`` names (auto: CUDA if torch sees one, else the CPU); a RuntimeError if
    CUDA is asked for and torch sees none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device "
                           f"(torch {torch.__version__}); use device: cpu or auto")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python's, NumPy's and torch's generators; ``deterministic``: deterministic algorithms only."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def is_trial(run: dict[str, Any]) -> bool:
    """Whether ``run`` is a tuning trial (``tuning.stage`` tune): it trains and validates, never tests."""
    return run_stage(run)[0] == "tune"


def withhold_test(data: PreparedData) -> PreparedData:
    """``data`` without its test split (the tensors are shared, not copied): what a tuning trial trains on, so
    that nothing it does (training, validation, selection, its record) can read a test example."""
    return dataclasses.replace(data, splits={k: v for k, v in data.splits.items() if k != "test"})


def resume(trainer: Trainer, run: dict[str, Any], inputs: dict[str, Any] | None, out_dir: Path, log: Log,
           rebuild: Callable[[], Trainer]) -> Trainer:
    """The trainer, set to save its checkpoints in ``out_dir`` and restored from the one there
    if that was made by this run; ``rebuild()`` makes a fresh trainer when restoring fails."""
    path, key = checkpoint.checkpoint_path(out_dir), checkpoint.resume_hash(run, inputs)
    state = checkpoint.load(path, run, key)
    if state is not None:
        try:
            checkpoint.restore(trainer, state)
            log.line(f"resuming from step {trainer.step} (checkpoint {path})")
        except Exception as exc:  # e.g. the code changed the model's layout since
            log.line(f"ignoring checkpoint {path}: cannot restore it ({type(exc).__name__}: {exc}); starting fresh")
            seed_everything(run["seed"], run["deterministic"])
            trainer = rebuild()
    trainer.checkpoint_path, trainer.checkpoint_key = path, key
    return trainer


def _failure(exc: BaseException, cap: dict[str, Any] | None, prefix: str = "") -> tuple[str, str]:
    """The status and message of a run that raised ``exc``: ``oom`` (naming the memory cap in force) or ``failed``."""
    message = f"{prefix}{type(exc).__name__}: {exc}"
    if not is_out_of_memory(exc):
        return "failed", message
    return "oom", message + (f" (memory cap {cap['bytes'] / 2 ** 20:.0f} MiB: train.memory_cap_mb)" if cap else "")


def train_run(run: dict[str, Any], data: PreparedData, out_dir: Path, bar: bool | None = None, *,
              trainer_cls: type[Trainer] = Trainer, trainer_kwargs: dict[str, Any] | None = None,
              extra: dict[str, Any] | None = None,
              completes: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train one (task, variant, seed) and return its record (also written to ``out_dir``).

    ``trainer_cls(run, data, device, splits=..., **trainer_kwargs)`` builds the trainer inside the measured,
    guarded section, so that its failures become records too. The data splits are placed for it just before
    the measurement starts, inside the guarded section: on a GPU the splits held there are then not in the
    run's peak, as the data a CPU run reads are not, and a trainer rebuilt on resuming does not place them
    again. ``extra``: record entries that a
    training method adds (what it took from other runs; none for a run trained from labels); ``completes``: a
    function of the record that gives entries a method adds from the run's outcome (a pretraining's tokens
    seen), written with the record.
    Raises ``RunFolderBusy`` (and writes nothing) while another process trains in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_trial(run):
        data = withhold_test(data)
    lock = own_run_folder(out_dir, RunKey.of(run).run_id)
    try:
        return _train_run(run, data, out_dir, bar, trainer_cls, trainer_kwargs, extra, completes)
    finally:
        locks.release(lock)


class RunFolderBusy(UserError):
    """Another process is training in the same run folder."""


def own_run_folder(out_dir: Path, run_id: str) -> int:
    """Lock ``out_dir/.lock`` for this process (released by closing the returned descriptor, or when the
    process ends): two trainers in one run folder would overwrite each other's checkpoints and record,
    as after ``snakemake --unlock`` while an orphaned job of a killed snakemake still runs."""
    path = out_dir / RUN_LOCK
    fd = locks.try_lock(path, info={"run_id": run_id})
    if fd is None:
        raise RunFolderBusy(f"run folder {out_dir} is in use: {run_id} is being trained by "
                            f"{locks.describe_owner(locks.lock_owner(path))}; wait for it to end, or stop that "
                            "process, then run again")
    return fd


def _train_run(run: dict[str, Any], data: PreparedData, out_dir: Path, bar: bool | None, trainer_cls: type[Trainer],
               trainer_kwargs: dict[str, Any] | None, extra: dict[str, Any] | None,
               completes: Callable[[dict[str, Any]], dict[str, Any]] | None) -> dict[str, Any]:
    status, steps_done = "ok", 0
    message: str | None = None
    trainer: Trainer | None = None
    torch.set_num_threads(run["threads"])
    seed_everything(run["seed"], run["deterministic"])
    try:
        device = resolve_device(run["device"])
    except RuntimeError as exc:
        device, status, message = torch.device("cpu"), "failed", str(exc)
    mem = PeakMemory(device)
    wall0 = time.perf_counter()
    test_acc: float | None = None
    log = Log(run["train"]["steps"], f"{run['task']['name']}/{run['variant']['name']}/seed{run['seed']}", bar)
    cap = None
    if status == "ok":
        with memory_cap(device, run["train"]["memory_cap_mb"]) as cap:
            try:
                splits = place_splits(data, device)  # the data first: their bytes are not the run's
                with mem:
                    def make() -> Trainer:
                        return trainer_cls(run, data, device, splits=splits, **(trainer_kwargs or {}))

                    trainer = resume(make(), run, extra, out_dir, log, make)
                    steps_done = trainer.fit(log)
            except Diverged as exc:
                status, message = "diverged", str(exc)
            except TimeLimit as exc:
                status, message = "timeout", str(exc)
            except WriteError:  # a full disk is not the run's outcome: one line, no record, trained again later
                raise
            except Exception as exc:  # every outcome becomes a record
                status, message = _failure(exc, cap)
                log.line(traceback.format_exc())
            finally:
                log.close()
            if trainer is not None:  # a run that diverged or failed did not complete the step it stopped in
                steps_done = steps_done or max(0, trainer.step - (status in ("diverged", "oom", "failed")))
            if trainer is not None and status in ("ok", "diverged", "timeout") and not is_trial(run):
                try:
                    test_acc = trainer.test(status)
                except Exception as exc:  # the test pass's failure is a record too
                    status, message = _failure(exc, cap, "testing failed: ")
    if trainer is not None and trainer.best["state"] is not None:
        atomic_torch_save({"model": trainer.best["state"], "step": trainer.best["step"], "run": run},
                          out_dir / "best.pt")
    if trainer is not None:
        write_curve(out_dir / "curve.csv", trainer.curve)
    record = build_record(run=run, data=data, status=status, message=message, trainer=trainer,
                          test_acc=test_acc, steps_done=steps_done, mem=mem, device=device,
                          wall_s=time.perf_counter() - wall0, baselines=baselines(data),
                          step_work=trainer_cls.step_work, extra=extra, memory_cap=cap)
    if completes is not None:
        record.update(completes(record))
    write_record(out_dir / RECORD_NAME, record)
    if status in ("ok", "diverged", "timeout"):  # a re-run would end the same: nothing left to resume
        checkpoint.remove(out_dir)
    log.line(f"{record['run_id']}: status {status}"
             + (f", test accuracy {test_acc:.4f}" if test_acc is not None else "")
             + (f" ({message})" if message else ""))
    return record
