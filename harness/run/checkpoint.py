"""Resume checkpoints: a killed training run continues where it was, bit-identically on CPU
with deterministic settings.

With ``train.checkpoint_every: K`` the trainer writes ``<run dir>/checkpoint/last.pt``
(atomically: a kill during the write leaves the previous one) after every K-th optimiser
step, once that step's evaluation, if due, is done. It holds everything the rest of the run
depends on: model, AdamW and LR-schedule state, the step, the best-validation state so far,
the curve rows and the training losses since the last evaluation, the training time so far
(the curve's ``elapsed_s`` and the time limit continue from it), the training-step time so far
(``train_s``: a seconds budget and its LR decay continue from it, with the time warm-up ended),
the FLOPs of a step and how they were counted (not counted again), the data position (this
epoch's permutation and the place in it) and every random number generator: torch's CPU
and CUDA ones, Python's ``random``, NumPy's, and each ``torch.Generator`` the trainer or its
model holds as an attribute. The steps done after the checkpoint by the killed process are
lost with their time: a resumed run's train_s counts the steps that its weights went through.

A checkpoint is used only by the same run: the hash of its resolved run config, less
``train.checkpoint_every`` (which changes when the run is saved, not what it computes), and
of what its training method takes from other runs (the record entries it adds: a run it
learns from differs, if retrained, at least in its measured throughput), must match;
otherwise it is ignored with a printed line and the run starts fresh. The folder
is not a declared output of the pipeline's rules, so Snakemake leaves it in place when it
re-runs a job whose record is missing.
"""
from __future__ import annotations

import contextlib
import copy
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from attnbench.harness.core.hashing import config_hash
from attnbench.harness.core.io import atomic_torch_save

if TYPE_CHECKING:  # for the annotations only: trainer_steps.py imports this module
    from attnbench.harness.run.trainer_steps import TrainerSteps

FORMAT = 1
CHECKPOINT_DIR = "checkpoint"


def checkpoint_path(out_dir: Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / "last.pt"


def resume_hash(run: dict[str, Any], inputs: dict[str, Any] | None = None) -> str:
    """What must match for a checkpoint to be resumed: the run config less ``checkpoint_every``,
    and ``inputs``, the record entries the training method takes from other runs."""
    run = copy.deepcopy(run)
    run["train"].pop("checkpoint_every", None)
    return config_hash({"run": run, "inputs": inputs or {}})


# ---------------------------------------------------------------- random number generators

def owned_generators(trainer: TrainerSteps) -> dict[str, torch.Generator]:
    """The ``torch.Generator`` attributes of the trainer and of every module of its model, by name."""
    found = {f"trainer.{k}": v for k, v in vars(trainer).items() if isinstance(v, torch.Generator)}
    for name, module in trainer.model.named_modules():
        found.update({f"model.{name}.{k}".replace("..", "."): v
                      for k, v in vars(module).items() if isinstance(v, torch.Generator)})
    return found


def capture_rng(trainer: TrainerSteps) -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "python": random.getstate(),
        # plain values, so that the checkpoint loads with weights_only=True
        "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(),
                                        "pos": int(np_state["state"]["pos"])}},
        "generators": {name: gen.get_state() for name, gen in owned_generators(trainer).items()},
    }


def restore_cuda_rng(states: list[torch.Tensor] | None) -> str | None:
    """Restore the CUDA generators saved per device, on the devices that are visible now. A run
    saved with more visible GPUs than it has now (a resubmitted SLURM job that got fewer) restores
    the ones it has (training uses the first) and says what it left out; None when all were restored."""
    if not states or not torch.cuda.is_available():
        return None if not states else f"{len(states)} saved CUDA generator state(s) not restored: no CUDA device"
    count = torch.cuda.device_count()
    for index, rng in enumerate(states[:count]):
        torch.cuda.set_rng_state(rng, index)
    if len(states) > count:
        return (f"the checkpoint has CUDA generator states of {len(states)} devices, {count} visible now: "
                f"devices {count}..{len(states) - 1} not restored (training runs on device 0)")
    return None


def restore_rng(trainer: TrainerSteps, state: dict[str, Any]) -> str | None:
    """Put every generator where it was; returns a note when some CUDA states had no device."""
    torch.set_rng_state(state["torch"])
    note = restore_cuda_rng(state["cuda"])
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state({**np_state, "state": {"key": np.array(np_state["state"]["key"], dtype=np.uint32),
                                               "pos": np_state["state"]["pos"]}})
    gens = owned_generators(trainer)
    if set(gens) != set(state["generators"]):
        raise ValueError(f"the checkpoint has generators {sorted(state['generators'])}, the trainer {sorted(gens)}")
    for name, gen in gens.items():
        gen.set_state(state["generators"][name])
    return note


@contextlib.contextmanager
def rng_kept(trainer: TrainerSteps) -> Iterator[None]:
    """Within the block, draw from every generator (``capture_rng``) as you like: they are put back
    where they were at its start, so that what the run draws afterwards is unchanged."""
    state = capture_rng(trainer)
    try:
        yield
    finally:
        restore_rng(trainer, state)


# ---------------------------------------------------------------- save, load, restore

def save(path: Path, trainer: TrainerSteps, *, key: str, losses: list[float], elapsed_s: float) -> None:
    """Write the trainer's state after its step ``trainer.step``; ``key``: its ``resume_hash``."""
    atomic_torch_save({
        "format": FORMAT,
        "config_hash": config_hash(trainer.run),
        "resume_hash": key,
        "step": trainer.step,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.opt.state_dict(),
        "scheduler": trainer.sched.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "best": trainer.best,
        "curve": trainer.curve,
        "losses": list(losses),
        "elapsed_s": elapsed_s,
        "train_s": trainer.clock.exact(),
        "warmup_end_s": trainer.warmup_end_s,
        "flops": {"per_step": trainer.flops_per_step, "method": trainer.flops_method},
        "data": {"perm": trainer.perm, "pos": trainer.pos},
        "rng": capture_rng(trainer),
    }, path)


def load(path: Path, run: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if there is one made by this run (``key``: its
    ``resume_hash``), else None (with a printed line saying why one that exists is ignored)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unreadable checkpoint only costs the steps in it
        first = (str(exc).splitlines() or [""])[0]
        print(f"ignoring checkpoint {path}: cannot read it ({type(exc).__name__}: {first}); starting fresh", flush=True)
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("resume_hash") != key:
        theirs = state.get("config_hash") if isinstance(state, dict) else None
        print(f"ignoring checkpoint {path}: made with another run config or from other runs "
              f"(config hash {theirs}, this run {config_hash(run)}); starting fresh", flush=True)
        return None
    return state


def restore(trainer: TrainerSteps, state: dict[str, Any]) -> None:
    """Put the trainer where it was when ``state`` was saved."""
    trainer.model.load_state_dict(state["model"])
    trainer.opt.load_state_dict(state["optimizer"])
    trainer.sched.load_state_dict(state["scheduler"])
    if state.get("scaler"):  # fp16 runs: the loss scale and its growth tracker
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.step = trainer.resumed_from_step = int(state["step"])
    trainer.best, trainer.curve = state["best"], state["curve"]
    trainer.losses, trainer.elapsed_s = list(state["losses"]), float(state["elapsed_s"])
    trainer.clock.before, trainer.warmup_end_s = float(state["train_s"]), state["warmup_end_s"]
    trainer.flops_per_step, trainer.flops_method = state["flops"]["per_step"], state["flops"]["method"]
    trainer.perm, trainer.pos = state["data"]["perm"], int(state["data"]["pos"])
    note = restore_rng(trainer, state["rng"])
    if note:
        print(f"resuming: {note}", flush=True)


def remove(out_dir: Path) -> None:
    shutil.rmtree(Path(out_dir) / CHECKPOINT_DIR, ignore_errors=True)
