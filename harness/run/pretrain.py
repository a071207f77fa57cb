"""Self-pretraining (method ``spt``, the config's ``spt:`` section): before a run is trained on its labels, its
model is pretrained on the task's own training inputs with a masked-token objective (Amos, Berant & Gupta,
"Never Train from Scratch", ICLR 2024), then fine-tuned from those weights (``harness.run.self_pretrained``).
This module is the pretraining run.

- **What it reads.** ``pretraining_view`` keeps the training split's inputs only: a seeded ``spt.holdout``
  share of them is held out to measure masked-token accuracy as pretraining goes (its "validation"), the rest
  are trained on. The task's labels, validation and test splits are not in the view at all, so nothing
  downstream can read them; the view's labels are zeros, there for the loop's batches and never used.
- **The model.** The run's encoder (``model_for_run``'s, so any registered variant, an out-of-tree one too)
  with one more token id, [MASK] (= the task's vocabulary size), its classifier head removed, and a
  prediction head (Linear, GELU, LayerNorm, Linear to the vocabulary) over every position of the final
  LayerNorm's output (``EncoderClassifier.hidden``). A pair's two documents (Retrieval) are two sequences.
- **The objective** (``harness.run.masking``): a share ``mask_rate`` of each sequence's real tokens is chosen
  (single tokens or spans), corrupted BERT's way, and predicted; the loss is the mean cross-entropy over the
  chosen tokens. Its evaluation draws the same positions every time (a generator seeded with the run's seed),
  so the curve's masked-token accuracy is comparable along a run.
- **The loop** is ``harness.run.trainer``'s (``PretrainTrainer`` overrides the model, the loss, the evaluation
  and the test, which it has none of), run through ``train_run``: every outcome is a record, a killed run
  resumes from its checkpoint (``train.checkpoint_every``), and time, tokens and peak memory are measured as
  for any run. The record (``results/pretrain/TASK/VARIANT/seedS/record.json``, method ``pretrain``) adds
  ``pretraining``: the objective, the examples used and the tokens seen. Its ``best.pt`` (the weights of the
  best held-out masked-token accuracy) is what the fine-tuning run starts from.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from attnbench.harness.core.registry import param
from attnbench.harness.run.masking import choose, chosen_loss_sum, corrupt, masked_token_loss
from attnbench.harness.run.model import EncoderClassifier, ModelConfig
from attnbench.harness.run.train import train_run
from attnbench.harness.run.trainer import Trainer
from attnbench.tasks.base import TASKS, DataError, PreparedData
from attnbench.variants import Attention

# ---------------------------------------------------------------- the config section

#: ``param``'s schema key making a mapping overrides of the train settings (``config.schema`` fills it in)
TRAIN_OVERRIDES: dict[str, Any] = {"x-overrides": "train"}


@dataclass(frozen=True)
class SptConfig:
    """Self-pretraining: variants pretrained on their task's training inputs, then fine-tuned (Amos et al. 2024)."""

    variants: tuple[str, ...] = param(
        (), "attention variants of `variants:` that also run self-pretrained: per task and seed a pretraining run "
            "(results/pretrain/), then a fine-tuning run named spt[<variant>] with the same model and training "
            "settings as the variant's run from scratch (empty: no self-pretraining)")
    mask_rate: float | None = param(
        None, "share of each input's real tokens chosen for prediction; unset: the task's rate from Amos et al. "
              "2024 (ListOps 0.10, Text, Retrieval and text classification 0.15, Image and Pathfinder 0.50)",
        exclusiveMinimum=0.0, maximum=1.0)
    masking: Literal["token", "span"] = param("token", "token: each token chosen on its own; span: spans of "
                                              "span_length tokens, as many tokens in all")
    span_length: int = param(3, "tokens per span (masking: span)", minimum=1)
    mask_token: float = param(0.8, "share of the chosen tokens replaced by the [MASK] token (BERT: 0.8)",
                              minimum=0.0, maximum=1.0)
    random_token: float = param(0.1, "share of the chosen tokens replaced by a random token, the rest left as they "
                                "are (BERT: 0.1); mask_token + random_token <= 1", minimum=0.0, maximum=1.0)
    holdout: float = param(0.05, "share of the training inputs held out to measure masked-token accuracy during "
                           "pretraining (its curve's val_acc, and the checkpoint kept); never the task's validation "
                           "split", exclusiveMinimum=0.0, exclusiveMaximum=1.0)
    train: dict[str, Any] = param(
        {}, "training settings of the pretraining runs over the run's own (its task's and variant's `train:`): "
            "steps, lr, batch_size, ... (default: the same as the run from scratch)", **TRAIN_OVERRIDES)
    finetune: dict[str, Any] = param(
        {}, "training settings of the fine-tuning runs over the run's own (default: the same as the run from "
            "scratch, so the two protocols differ only in the starting weights)", **TRAIN_OVERRIDES)


#: the ``spt:`` settings that define the objective (a pretraining run's ``method`` holds them, resolved)
OBJECTIVE_KEYS = ("mask_rate", "masking", "span_length", "mask_token", "random_token", "holdout")


def objective(spt: dict, task_kind: str) -> dict[str, Any]:
    """A pretraining run's objective settings: ``spt:``'s, with the task's own masking rate where it is unset."""
    settings = {k: spt[k] for k in OBJECTIVE_KEYS}
    if settings["mask_rate"] is None:
        settings["mask_rate"] = TASKS.get(task_kind).cls.spt_mask_rate
    return settings


# ---------------------------------------------------------------- what pretraining reads

class PretrainingDataError(DataError):
    """The training split is too small to hold out pretraining's held-out share and train on the rest."""


def pretraining_view(data: PreparedData, holdout: float, seed: int) -> PreparedData:
    """The task's training inputs and nothing else: split (seeded by ``seed``) into ``train`` and a held-out
    ``val`` share of ``holdout``, each with zero labels (never read). Labels, validation and test are not in
    it. ``num_classes`` is the number of ids the prediction head has (the vocabulary)."""
    tokens = data.splits["train"]["tokens"]
    n = tokens.shape[0]
    held = max(1, round(n * holdout))
    if n - held < 1:
        raise PretrainingDataError(f"the training split has {n} example(s): too few to hold out {holdout:g} of "
                                   "them for pretraining's masked-token accuracy and train on the rest")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))

    def part(index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"tokens": tokens[index], "labels": torch.zeros(index.numel(), dtype=torch.long)}

    return dataclasses.replace(data, splits={"train": part(order[held:]), "val": part(order[:held])},
                               num_classes=data.vocab_size, label_names=[],
                               source=f"{data.source} (training inputs only, for self-pretraining)")


def token_baselines(view: PreparedData) -> dict[str, Any]:
    """A pretraining record's baselines: chance among the vocabulary's ids, and the most frequent real token
    of the training inputs (what always answering it scores is not a test accuracy: there is no test)."""
    tokens = view.splits["train"]["tokens"].reshape(-1).long()
    counts = torch.bincount(tokens[tokens != view.pad_id], minlength=view.vocab_size)
    return {"chance": 1.0 / max(1, view.vocab_size - 1), "majority_class": int(counts.argmax()),
            "majority_test_acc": None}


# ---------------------------------------------------------------- the model

class MaskedTokenModel(nn.Module):
    """An encoder (``EncoderClassifier`` without its head; vocabulary + [MASK]) and a per-token prediction
    head: tokens (B, N) -> logits over the task's vocabulary (B, N, vocab_size)."""

    def __init__(self, encoder: EncoderClassifier, vocab_size: int):
        super().__init__()
        encoder.head = nn.Sequential()  # none (an identity): the classifier head is the fine-tuning run's, fresh
        self.encoder = encoder
        dim = encoder.cfg.dim
        self.predict = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim), nn.Linear(dim, vocab_size))

    @classmethod
    def for_run(cls, run: dict[str, Any], data: PreparedData) -> MaskedTokenModel:
        """The pretraining model of a resolved run config (freshly initialised: the caller seeds)."""
        zero_token = TASKS.get(run["task"]["name"]).cls.zero_token
        encoder = EncoderClassifier(ModelConfig(**run["model"]), run["variant"]["name"], run["variant"]["params"],
                                    vocab_size=data.vocab_size + 1, seq_len=data.seq_len, num_classes=1,
                                    pad_id=data.pad_id, zero_token=zero_token)
        return cls(encoder, data.vocab_size)

    @property
    def mask_id(self) -> int:
        """The [MASK] token's id: the one after the task's vocabulary."""
        return self.encoder.embed.num_embeddings - 1

    def forward(self, tokens: torch.Tensor, padded: bool = True) -> torch.Tensor:
        x, _ = self.encoder.hidden(tokens, padded)
        if self.encoder.cls is not None:
            x = x[:, 1:]  # the [CLS] position predicts nothing
        return self.predict(x)

    def attention_layers(self) -> list[Attention]:
        return self.encoder.attention_layers()


# ---------------------------------------------------------------- the trainer

class PretrainTrainer(Trainer):
    """The training loop of ``harness.run.trainer`` on the masked-token objective: the loss and the held-out
    evaluation read the inputs only (a batch's labels, zeros, are ignored)."""

    step_work = "masking, forward, backward, clip, AdamW"

    def build_model(self) -> MaskedTokenModel:  # type: ignore[override]  # a model of tokens, not of classes
        self.masked_model = MaskedTokenModel.for_run(self.run, self.data)  # self.model, typed as what it is
        return self.masked_model

    def draw(self, x: torch.Tensor, padded: bool,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(original tokens, chosen positions, corrupted tokens), each (sequences, N): a pair's documents are
        two sequences."""
        method = self.run["method"]
        tokens = x.reshape(-1, x.shape[-1])
        real = self.masked_model.encoder.real_tokens(tokens, padded)
        candidates = torch.ones_like(tokens, dtype=torch.bool) if real is None else real
        span = method["span_length"] if method["masking"] == "span" else 1
        chosen = choose(candidates, method["mask_rate"], span, generator)
        inputs = corrupt(tokens, chosen, self.masked_model.mask_id, self.data.vocab_size, method["mask_token"],
                         method["random_token"], pad_id=self.data.pad_id, generator=generator)
        return tokens, chosen, inputs

    def loss(self, x: torch.Tensor, y: torch.Tensor, padded: bool = True) -> torch.Tensor:
        tokens, chosen, inputs = self.draw(x, padded)
        return masked_token_loss(self.model(inputs, padded), tokens, chosen)

    @torch.no_grad()
    def evaluate(self, split_name: str, confusion: torch.Tensor | None = None) -> tuple[float, float]:
        """(masked-token accuracy, mean masked-token loss) on a split of the view (the held-out training
        inputs), with the same positions and corruption at every evaluation."""
        self.model.eval()
        split, bs = self.splits[split_name], self.cfg.eval_batch_size
        generator = torch.Generator(device=self.device).manual_seed(int(self.run["seed"]))
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        chosen_n = torch.zeros((), dtype=torch.long, device=self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i in range(0, split.n, bs):
            x, _, padded = split.slice(i, i + bs)
            tokens, chosen, inputs = self.draw(x, padded, generator)
            logits = self.eval_forward(inputs, padded)
            self.eval_tokens += x.numel()
            loss_sum += chosen_loss_sum(logits, tokens, chosen)
            correct += ((logits.argmax(-1) == tokens) & chosen).sum()
            chosen_n += chosen.sum()
        self.model.train()
        n = max(1, int(chosen_n.item()))
        return correct.item() / n, loss_sum.item() / n

    def test(self, status: str) -> float | None:
        """Pretraining has no test: the task's test split is not in its data."""
        return None


# ---------------------------------------------------------------- one pretraining run

def pretraining_entry(record: dict[str, Any], view: PreparedData) -> dict[str, Any]:
    """The record's ``pretraining``: the objective, the examples it read and the tokens it went through."""
    training = record["training"]
    per_example = view.seq_len * (2 if view.paired else 1)
    return {
        "objective": "masked tokens",
        **{k: v for k, v in record["config"]["method"].items() if k != "name"},
        "train_examples": int(view.splits["train"]["tokens"].shape[0]),
        "heldout_examples": int(view.splits["val"]["tokens"].shape[0]),
        "tokens_seen": int(training["steps_done"] * training["effective_batch"] * per_example),
        "best_masked_acc": record["accuracy"]["best_val"],
        "reads": "the training split's inputs only (no labels, no validation or test split)",
    }


def pretrain_run(run: dict[str, Any], data: PreparedData, out_dir: Path, bar: bool | None = None) -> dict[str, Any]:
    """Pretrain one (task, variant, seed) (a run config of method ``pretrain``) on ``data``'s training inputs and
    return its record (written to ``out_dir`` with its curve and ``best.pt``)."""
    method = run["method"]
    view = pretraining_view(data, method["holdout"], int(run["seed"]))
    return train_run(run, view, out_dir, bar, trainer_cls=PretrainTrainer, extra={"baselines": token_baselines(view)},
                     completes=lambda record: {"pretraining": pretraining_entry(record, view)})
