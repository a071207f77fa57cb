"""Fine-tuning a self-pretrained model (method ``spt``): the run from labels of a (task, variant, seed), started
from the weights its pretraining run (``harness.run.pretrain``) ended with instead of a fresh initialisation.

- The model is the one the run config describes (the variant's run from scratch has the same); every tensor
  of the pretrained encoder is copied into it by name (embeddings, positions, [CLS], blocks, final LayerNorm),
  the token embeddings without the [MASK] row (a fine-tuning input never holds it). The classifier head keeps
  its fresh initialisation, and so does any tensor the checkpoint lacks or holds with another shape (none but
  the head's for a model pretrained with the run's settings, which is checked).
- The pretraining run is read from its record and ``best.pt`` (``PretrainError``, naming them, when it is
  missing, another run's (another task, variant or seed), or has no checkpoint); it must have pretrained the
  same task data, variant and model settings. The fine-tuning run's record gains ``pretrain``: that run's
  identity, status and cost (training time, wall time, tokens seen, peak memory), so a report counts what
  self-pretraining cost.
- The loop and loss are ``Trainer``'s, unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from attnbench.harness.results.records import RECORD_NAME, RunKey, task_id
from attnbench.harness.run.model import EncoderClassifier
from attnbench.harness.run.train import train_run
from attnbench.harness.run.trainer import Trainer
from attnbench.harness.run.upstream import load_checkpoint, relative, upstream_record
from attnbench.tasks.base import DataError, PreparedData

#: the prefix of the encoder's tensors in a pretraining checkpoint (``MaskedTokenModel.encoder``)
ENCODER = "encoder."


class PretrainError(DataError):
    """The pretraining run a fine-tuning run starts from is missing or unusable: the message names the file
    and how to obtain it."""


def pretrain_key(run: dict[str, Any]) -> RunKey:
    """The pretraining run of a fine-tuning run: same task, variant and seed (a tuning trial's: of its seed)."""
    return RunKey(task_id(run["task"]), run["variant"]["name"], int(run["seed"]), "pretrain")


def encoder_state(pretrained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pretraining checkpoint's encoder tensors, named as in an ``EncoderClassifier``."""
    return {k[len(ENCODER):]: v for k, v in pretrained.items() if k.startswith(ENCODER)}


def init_from_pretrained(model: EncoderClassifier, pretrained: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Copy the pretrained encoder's tensors into ``model`` (in place) by name; the token embeddings' first rows
    (the pretrained table has one more, [MASK]). The head, and any tensor the checkpoint lacks or holds with
    another shape, keep their initialisation. Returns the model's state keys ``copied`` and ``kept``."""
    source = encoder_state(pretrained)
    state = model.state_dict()
    copied, kept = [], []
    for key, value in state.items():
        other = source.get(key)
        if key == "embed.weight" and other is not None and other.shape[1:] == value.shape[1:] \
                and other.shape[0] == value.shape[0] + 1:
            other = other[: value.shape[0]]
        if other is not None and other.shape == value.shape and not key.startswith("head."):
            state[key] = other.detach().to(dtype=value.dtype, device=value.device).clone()
            copied.append(key)
        else:
            kept.append(key)
    model.load_state_dict(state)
    return {"copied": copied, "kept": kept}


class SptTrainer(Trainer):
    """The training loop of ``harness.run.trainer`` with the model started from a pretraining checkpoint."""

    def __init__(self, run: dict[str, Any], data: PreparedData, device: torch.device, checkpoint: Path | None,
                 pretrain_id: str = "the pretraining run", splits: dict | None = None):
        if checkpoint is None:
            raise PretrainError(f"{pretrain_id} has no checkpoint to fine-tune from")
        ckpt = load_checkpoint(checkpoint, PretrainError, "pretraining", "pretrain again")
        check_same_model(ckpt["run"], run, checkpoint)
        self.pretrained = ckpt["model"]
        super().__init__(run, data, device, splits)

    def build_model(self) -> EncoderClassifier:
        model = super().build_model()  # the head's initialisation, drawn as in the run from scratch
        self.init = init_from_pretrained(model, self.pretrained)
        return model


def check_same_model(pretrain_run: dict[str, Any], run: dict[str, Any], checkpoint: Path) -> None:
    """A ``PretrainError`` unless ``pretrain_run`` pretrained what ``run`` fine-tunes: the same data, variant
    (with its parameters) and model settings."""
    pairs = {"data": (pretrain_run["task"]["data_key"], run["task"]["data_key"]),
             "variant": (pretrain_run["variant"], run["variant"]), "model": (pretrain_run["model"], run["model"])}
    differ = [name for name, (theirs, ours) in pairs.items() if theirs != ours]
    if differ:
        raise PretrainError(f"pretraining checkpoint {checkpoint} was pretrained with other {', '.join(differ)} "
                            f"settings than {RunKey.of(run).run_id} fine-tunes; pretrain again")


def pretrain_entry(run: dict[str, Any], pretrain_dir: Path, out_dir: Path) -> tuple[dict[str, Any], Path | None]:
    """The record's ``pretrain`` entry (paths relative to ``out_dir``) and the checkpoint to start from."""
    key = pretrain_key(run)
    hint = (f"pretrain first: attnbench train --method pretrain --task {key.task} --variant {key.variant} "
            f"--seed {key.seed} --out {pretrain_dir}")
    record, checkpoint = upstream_record(pretrain_dir, key, PretrainError, "pretraining", hint,
                                         f"the pretraining of {key.variant} on {key.task} with seed {key.seed}")
    training = record["training"]
    entry = {
        "run_id": record["run_id"],
        "status": record["status"],
        "config_hash": record["config_hash"],
        "record": relative(Path(pretrain_dir) / RECORD_NAME, out_dir),
        "checkpoint": relative(checkpoint, out_dir) if checkpoint else None,
        "steps_done": training["steps_done"],
        "train_s": training.get("train_s"),
        "wall_s": training["wall_s"],
        "train_flops": training.get("train_flops"),
        "tokens_seen": (record.get("pretraining") or {}).get("tokens_seen"),
        "best_masked_acc": record["accuracy"]["best_val"],
        "peak_memory_bytes": record["efficiency"]["peak_memory_bytes"],
    }
    return entry, checkpoint


def spt_run(run: dict[str, Any], data: PreparedData, out_dir: Path, pretrain_dir: Path | None = None,
            bar: bool | None = None) -> dict[str, Any]:
    """Fine-tune one self-pretrained run (a run config of method ``spt``) from the pretraining run in
    ``pretrain_dir`` (default: its folder under results/pretrain/) and return its record.

    Raises ``PretrainError`` when the pretraining record is missing or another run's; any later problem (no
    checkpoint, other data or model settings) ends in a ``failed`` record."""
    out_dir = Path(out_dir)
    pretrain_dir = Path(pretrain_dir) if pretrain_dir is not None else pretrain_key(run).dir
    entry, checkpoint = pretrain_entry(run, pretrain_dir, out_dir)
    return train_run(run, data, out_dir, bar, trainer_cls=SptTrainer,
                     trainer_kwargs={"checkpoint": checkpoint, "pretrain_id": f"pretraining run {entry['run_id']} "
                                     f"(status {entry['status']})"},
                     extra={"pretrain": entry})
