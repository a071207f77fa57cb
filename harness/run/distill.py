"""Distillation (DistilBERT-style), a way of training a model whose attention is any variant:
from a trained teacher run of the same task and seed instead of from the labels alone.

The config's ``distill:`` section (``DistillConfig``) names the students (attention variants),
the teacher variant, the student's depth and the loss settings; ``attnbench.harness.config.runs``
resolves each student's run config (method ``distill``).

- The teacher is the best-validation checkpoint (``best.pt``) of its run, rebuilt from the
  run config stored inside it, in eval mode (dropout off) and without gradients.
- The student is the model its run config describes: the teacher's model settings with
  ``layers = student_layers`` and the student's attention. It starts from the teacher:
  token embeddings, positions, [CLS], the final LayerNorm, the head, and for each student
  block the teacher block ``select_teacher_layers`` picks. A tensor is copied only where the
  teacher has one of the same name and shape; the rest keeps its own initialisation. So a
  student attention with another parameter layout (LSH's shared ``qk`` and ``v`` instead
  of the fused ``qkv``) starts its own projections from scratch and takes over what still
  fits (the output projection), and the LayerNorms and MLPs of every block are copied.
- Loss = alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE,
  the KL averaged over the batch (``KLDivLoss(reduction="batchmean")``); T^2 keeps the soft
  term's gradients comparable across temperatures (Hinton et al. 2015).
- The training loop is ``attnbench.harness.run.trainer``'s: ``DistillTrainer`` overrides the model
  factory and the loss, so every outcome (ok, oom, diverged, timeout, failed) is recorded the
  same way. Its timed step includes the teacher's forward pass: that is what a distillation
  step costs, in time and in the FLOPs counted of a step (``Trainer.count_step_flops``, which runs
  ``loss``), so a budget of seconds or FLOPs counts it too. Evaluation runs the student alone. The
  record gains a ``teacher`` entry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attnbench.harness.core.registry import param
from attnbench.harness.results.records import RECORD_NAME, RunKey, task_id
from attnbench.harness.run.model import EncoderClassifier, model_for_run
from attnbench.harness.run.train import train_run
from attnbench.harness.run.trainer import Trainer
from attnbench.harness.run.upstream import load_checkpoint, relative, upstream_record
from attnbench.tasks.base import DataError, PreparedData

#: model settings a teacher and its student must share (the student only has fewer blocks;
#: dropout is a training setting of each run)
SHARED_MODEL_KEYS = ("dim", "heads", "mlp_dim", "pooling", "positions")


class TeacherError(DataError):
    """The teacher of a distilled run is missing or unusable: like missing data, the message
    names the file and how to obtain it."""


# ---------------------------------------------------------------- the config section

#: ``param``'s schema key making a mapping one entry per registered variant
VARIANT_ENTRIES: dict[str, Any] = {"x-registry": "variant"}


@dataclass(frozen=True)
class DistillConfig:
    """Distillation: students trained from the trained teacher run of the same task and seed (DistilBERT-style)."""

    students: dict[str, dict] = param(
        {}, "attention variant -> its parameters over those it has in `variants:` ({} for the same): one student "
            "run per task and seed for each, named distilled[<variant>], with the teacher's model settings and "
            "student_layers blocks (empty: no distillation)", **VARIANT_ENTRIES)
    teacher: str = param("full", "variant whose trained run of the same task and seed is the teacher; it must be in "
                                 "`variants:`")
    student_layers: int = param(0, "student encoder blocks (0 = half the teacher's, rounded up); initialised from "
                                   "teacher blocks spread evenly, first and last included", minimum=0)
    temperature: float = param(2.0, "softmax temperature T of the distillation term", exclusiveMinimum=0.0)
    alpha: float = param(0.5, "weight of the soft term: alpha * T^2 * KL(teacher/T || student/T) "
                              "+ (1 - alpha) * cross-entropy", minimum=0.0, maximum=1.0)


def student_layer_count(student_layers: int, teacher_layers: int) -> int:
    """The student's depth: ``student_layers``, or half the teacher's rounded up when 0."""
    return student_layers if student_layers > 0 else max(1, math.ceil(teacher_layers / 2))


# ---------------------------------------------------------------- the student's initialisation

def select_teacher_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher block each student block starts from, spread evenly with both ends kept:
    student block i <- teacher block round(i * (L_t - 1) / (L_s - 1)), halves rounded up.
    12 -> 6 gives DistilBERT's [0, 2, 4, 7, 9, 11]; 4 -> 2 gives [0, 3].

    A one-block student takes the teacher's first block (2 -> 1: [0], DistilBERT's "every
    other block from 0"): its input is then exactly what that block was trained on
    (embeddings + positions), where the last block would see a residual stream without the
    updates of the blocks below it; the copied head reads the final LayerNorm of the residual
    stream either way. Checked with the default config's 2-block teachers, 3 seeds: before
    any distillation step, the student from block 0 scored 34-36% validation accuracy on
    ListOps and 66-87% on digits, the one from block 1 6-9% and 7-11% (chance: 10%); after
    distillation both ended level (ListOps 51.2% vs 51.1% test, digits 96.0% vs 96.1%).
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"a student needs 1 to {teacher_layers} blocks (the teacher's), got {student_layers}")
    if student_layers == 1:
        return [0]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [int(math.floor(i * step + 0.5)) for i in range(student_layers)]


def init_student_from_teacher(student: torch.nn.Module, teacher_state: dict[str, torch.Tensor],
                              layer_map: list[int]) -> dict[str, list[str]]:
    """Copy the teacher's tensors into ``student`` (in place): student block i from teacher
    block ``layer_map[i]``, everything outside the blocks by name; only where the teacher has
    a tensor of that name and shape. Returns the student's state keys ``copied`` and ``kept``
    (left at the student's own initialisation)."""
    state = student.state_dict()
    copied, kept = [], []
    for key, value in state.items():
        source = key
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            source = f"blocks.{layer_map[int(index)]}.{rest}"
        other = teacher_state.get(source)
        if other is not None and other.shape == value.shape:
            state[key] = other.detach().to(dtype=value.dtype, device=value.device).clone()
            copied.append(key)
        else:
            kept.append(key)
    student.load_state_dict(state)
    return {"copied": copied, "kept": kept}


# ---------------------------------------------------------------- the loss

def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)), summed over classes, averaged over the batch:
    ``KLDivLoss(reduction="batchmean")`` of log_softmax(student/T) against the teacher's
    probabilities (given as log-probabilities, which is the same value, computed stably)."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * cross-entropy(student, labels)."""
    soft = soft_kl(student_logits, teacher_logits, temperature) * temperature ** 2
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


# ---------------------------------------------------------------- the teacher

def load_teacher(checkpoint: Path, run: dict, data: PreparedData,
                 device: torch.device) -> tuple[EncoderClassifier, dict]:
    """The teacher model of ``checkpoint`` (eval mode, frozen) and the run config stored in it,
    after checking that it was trained on the same data with the student's model settings. A checkpoint
    that is missing or cannot be read (truncated) is a ``TeacherError`` naming it."""
    ckpt = load_checkpoint(checkpoint, TeacherError, "teacher", "train the teacher again (snakemake does when it "
                           "plans: it sets the teacher's record aside)")
    teacher_run = ckpt["run"]
    if teacher_run["task"]["data_key"] != run["task"]["data_key"]:
        raise TeacherError(f"teacher checkpoint {checkpoint} was trained on other data "
                           f"({teacher_run['task']['name']} {teacher_run['task']['data_key']}, this run uses "
                           f"{run['task']['name']} {run['task']['data_key']}); retrain the teacher")
    differ = [f"{k} {teacher_run['model'][k]!r} vs {run['model'][k]!r}"
              for k in SHARED_MODEL_KEYS if teacher_run["model"][k] != run["model"][k]]
    if differ:
        raise TeacherError(f"teacher checkpoint {checkpoint} has other model settings than the student "
                           f"(teacher vs student: {', '.join(differ)}); retrain the teacher")
    # Built under the teacher's own seed, as in its run (where the model is the first thing
    # drawn after seeding): a variant whose fixed eval-time randomness is drawn at construction
    # (LSH's eval rotations are not in the state dict) is then the teacher that was evaluated.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(teacher_run["seed"])
        teacher = model_for_run(teacher_run, data)
    teacher.load_state_dict(ckpt["model"])
    teacher.to(device).eval().requires_grad_(False)
    return teacher, teacher_run


class DistillTrainer(Trainer):
    """The training loop of ``attnbench.harness.run.trainer`` with a student initialised from the teacher and
    the distillation loss."""

    step_work = "teacher forward in eval mode without gradients, student forward, backward, clip, AdamW"

    def __init__(self, run: dict, data: PreparedData, device: torch.device, checkpoint: Path | None,
                 teacher_id: str = "the teacher", splits: dict | None = None):
        if checkpoint is None:
            raise TeacherError(f"{teacher_id} has no checkpoint to distill from")
        method = run["method"]
        self.temperature, self.alpha = float(method["temperature"]), float(method["alpha"])
        self.teacher, self.teacher_run = load_teacher(Path(checkpoint), run, data, device)
        super().__init__(run, data, device, splits)

    def build_model(self) -> EncoderClassifier:
        student = super().build_model()
        self.layer_map = select_teacher_layers(len(self.teacher.blocks), len(student.blocks))
        self.init = init_student_from_teacher(student, self.teacher.state_dict(), self.layer_map)
        return student

    def loss(self, x: torch.Tensor, y: torch.Tensor, padded: bool = True) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(x, padded)
        return distillation_loss(self.model(x, padded), teacher_logits, y, self.temperature, self.alpha)


# ---------------------------------------------------------------- one distilled run

def teacher_key(run: dict) -> RunKey:
    """The teacher's run: the teacher variant trained from labels, same task and seed."""
    return RunKey(task_id(run["task"]), run["method"]["teacher"], int(run["seed"]))


def teacher_entry(run: dict, teacher_dir: Path, out_dir: Path) -> tuple[dict, Path | None]:
    """The record's ``teacher`` entry (paths relative to ``out_dir``) and the checkpoint path."""
    teacher_dir = Path(teacher_dir)
    record_path = teacher_dir / RECORD_NAME
    teacher = run["method"]["teacher"]
    task = task_id(run["task"])
    hint = (f"train the teacher first: attnbench train --task {task} --variant {teacher} "
            f"--seed {run['seed']} --out {teacher_dir}")
    record, checkpoint = upstream_record(teacher_dir, teacher_key(run), TeacherError, "teacher", hint,
                                         f"a {teacher} teacher on {task} with seed {run['seed']} (a final run)")
    teacher_layers = record["config"]["model"]["layers"]
    student_layers = run["model"]["layers"]
    entry = {
        "run_id": record["run_id"],
        "status": record["status"],
        "config_hash": record["config_hash"],
        "record": relative(record_path, out_dir),
        "checkpoint": relative(checkpoint, out_dir) if checkpoint else None,
        "test_acc": record["accuracy"]["test"],
        "train_tokens_per_s": record["efficiency"]["train_tokens_per_s"],
        "eval_tokens_per_s": record["efficiency"]["eval_tokens_per_s"],
        "params": record["efficiency"]["params"],
        "layers": teacher_layers,
        "layers_copied": (select_teacher_layers(teacher_layers, student_layers)
                          if student_layers <= teacher_layers else []),
    }
    return entry, checkpoint


def distill_run(run: dict, data: PreparedData, out_dir: Path, teacher_dir: Path | None = None,
                bar: bool | None = None) -> dict:
    """Train one distilled student (a run config of method ``distill``) from the teacher's run in
    ``teacher_dir`` (default: the teacher variant's run folder of the same task and seed) and
    return its record.

    Raises ``TeacherError`` when the teacher's record is missing or belongs to another run;
    any later problem (no checkpoint, other data or model settings) ends in a ``failed`` record."""
    out_dir = Path(out_dir)
    teacher_dir = Path(teacher_dir) if teacher_dir is not None else teacher_key(run).dir
    entry, checkpoint = teacher_entry(run, teacher_dir, out_dir)
    return train_run(run, data, out_dir, bar, trainer_cls=DistillTrainer,
                     trainer_kwargs={"checkpoint": checkpoint, "teacher_id": f"teacher {entry['run_id']} "
                                     f"(status {entry['status']})"},
                     extra={"teacher": entry})
