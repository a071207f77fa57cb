"""The encoder classifier: embeddings, positions, pre-LayerNorm blocks with a registered
attention variant, pooling (CLS, mean or the first position) and an MLP head; the options LRA's model
sets (embedding std, q/k/v biases, MLP dropout, Xavier init, tanh GELU) are keys of ModelConfig."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn

from attnbench.harness.core.registry import param
from attnbench.tasks.base import TASKS, PreparedData
from attnbench.variants import Attention, build_attention


@dataclass(frozen=True)
class ModelConfig:
    """Encoder classifier size and options (LRA's knobs made explicit)."""

    layers: int = param(2, "number of encoder blocks", minimum=1)
    dim: int = param(64, "model (embedding) width; must be divisible by heads", minimum=1)
    heads: int = param(4, "attention heads", minimum=1)
    mlp_dim: int = param(128, "hidden width of the blocks' MLP and of the classifier head", minimum=1)
    dropout: float = param(0.1, "dropout after attention and MLP, and on embeddings", minimum=0.0, maximum=1.0)
    attn_dropout: float = param(0.0, "dropout on attention probabilities; > 0 makes CPU SDPA fall back to its O(N^2) "
                                "math kernel", minimum=0.0, maximum=1.0)
    pooling: Literal["cls", "mean", "first", "mean_all"] = param(
        "cls", "cls: a learned [CLS] token is prepended and read out; mean: average over real tokens; first: "
        "position 0 of the input itself, no token added (LRA's 'CLS' pooling of its dual encoder); mean_all: "
        "average over every position, padding and masked pixels included (LRA's MEAN pooling, "
        "lra_benchmarks/models/layers/common_layers.py:182)")
    positions: Literal["learned", "sinusoidal"] = param("learned", "position embeddings: learned (N(0, 0.02) init) or "
                                                        "fixed sinusoids")
    interaction: Literal["concat", "nli"] = param("concat", "paired tasks (Retrieval) only: the dual head reads [u, v] "
                                                  "(LRA's released code) or [u, v, u*v, u-v] (LRA's paper, the "
                                                  "xformers and Nystromformer reproductions)")
    profile: Literal["attnbench", "lra"] = param(
        "attnbench", "the values of embedding_init_std, qkv_bias, mlp_dropout_after_activation, init, gelu and "
        "mask_zero_tokens wherever the same `model:` mapping does not set them: attnbench's defaults, or what LRA's "
        "code does (std 1.0, no q/k/v bias, dropout after the GELU, Xavier, tanh GELU, black pixels masked on the "
        "pixel tasks); a more specific mapping (a task's, a variant's on a task) still overrides")
    mask_zero_tokens: bool | None = param(None, "pixel tasks: a raw value 0 (a black pixel) is masked like padding, "
                                          "as LRA's models do: attended by no query, left out of mean pooling. "
                                          "Unset: as the profile says (attnbench: off; lra: on the tasks that "
                                          "have pixels)")
    embedding_init_std: float = param(0.02, "std of the token embeddings' normal initialisation (LRA: 1.0)",
                                      minimum=0.0)
    qkv_bias: bool = param(True, "biases on the attention's query/key/value projections (LRA: none)")
    mlp_dropout_after_activation: bool = param(False, "dropout also between the MLP's activation and its second "
                                               "layer, as LRA's MLP block (dropout after its output either way)")
    init: Literal["default", "xavier"] = param("default", "weights of every linear layer: torch's default, or Xavier "
                                               "uniform with zero biases (LRA's Dense layers)")
    gelu: Literal["exact", "tanh"] = param("exact", "the MLP's GELU: exact (erf) or tanh-approximated (LRA, Flax's "
                                           "default)")
    mask_padding: bool = param(True, "give the attention layers the padding mask (and masked pixels): false, as "
                               "LRA's Linear Trans., Performer, Reformer and Linformer kernels, which ignore it, "
                               "padding takes part in attention (set it per variant: "
                               "tasks.<task>.per_variant.<variant>.model); pooling is as `pooling` says either way",
                               added_later=True)


#: the keys a `model.profile` sets where its mapping does not (mask_zero_tokens: at resolution, per task)
PROFILES: dict[str, dict] = {
    "attnbench": {"embedding_init_std": 0.02, "qkv_bias": True, "mlp_dropout_after_activation": False,
                  "init": "default", "gelu": "exact"},
    "lra": {"embedding_init_std": 1.0, "qkv_bias": False, "mlp_dropout_after_activation": True, "init": "xavier",
            "gelu": "tanh"},
}


def expand_profile(model: dict) -> dict:
    """A `model:` mapping as written, with its profile's values for the keys it does not set itself."""
    profile = model.get("profile")
    return model if profile is None else {**PROFILES[profile], **model}


def resolve_zero_masking(cfg: ModelConfig, task: str) -> ModelConfig:
    """``mask_zero_tokens`` left unset, decided: on where the profile is LRA's and the task has pixels."""
    if cfg.mask_zero_tokens is not None:
        return cfg
    masked = cfg.profile == "lra" and TASKS.get(task).cls.zero_token is not None
    return dataclasses.replace(cfg, mask_zero_tokens=masked)


def sinusoidal_positions(n: int, dim: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10_000.0) / dim))
    table = torch.zeros(n, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table.float()


class Block(nn.Module):
    """A pre-LayerNorm encoder block for sequences of at most ``max_len`` tokens."""

    def __init__(self, cfg: ModelConfig, variant: str, variant_params: dict | None, max_len: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = build_attention(variant, cfg.dim, cfg.heads, variant_params, max_len=max_len,
                                    dropout=cfg.attn_dropout)
        if not cfg.qkv_bias:
            for projection in self.attn.input_projections():
                projection.register_parameter("bias", None)
        self.ln2 = nn.LayerNorm(cfg.dim)
        inner = [nn.Dropout(cfg.dropout)] if cfg.mlp_dropout_after_activation else []
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_dim), nn.GELU(approximate="tanh" if cfg.gelu == "tanh"
                                                                          else "none"),
                                 *inner, nn.Linear(cfg.mlp_dim, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        return x + self.drop(self.mlp(self.ln2(x)))


class EncoderClassifier(nn.Module):
    """tokens (B, N) int, ``pad_id`` marking padding -> logits (B, num_classes).

    Paired (two-tower) tasks give tokens (B, 2, N): both documents go through the same
    encoder (no cross-attention), and the head reads the two pooled vectors u, v as
    ``cfg.interaction`` says, through LRA's dual head (Dense, ReLU, Dense/2, ReLU, Dense)."""

    def __init__(self, cfg: ModelConfig, variant: str, variant_params: dict | None,
                 vocab_size: int, seq_len: int, num_classes: int, pad_id: int = 0, paired: bool = False,
                 zero_token: int | None = None):
        super().__init__()
        if cfg.mask_zero_tokens and zero_token is None:
            raise ValueError("model.mask_zero_tokens: this task has no raw zero value to mask (pixel tasks have)")
        self.cfg, self.pad_id, self.paired = cfg, pad_id, paired
        self.zero_token = zero_token if cfg.mask_zero_tokens else None
        n = seq_len + (cfg.pooling == "cls")
        self.embed = nn.Embedding(vocab_size, cfg.dim)
        nn.init.normal_(self.embed.weight, std=cfg.embedding_init_std)
        if cfg.positions == "learned":
            self.pos = nn.Parameter(torch.randn(1, n, cfg.dim) * 0.02)
        else:
            self.register_buffer("pos", sinusoidal_positions(n, cfg.dim)[None], persistent=False)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.pooling == "cls" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, variant, variant_params, max_len=n) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.dim)
        if paired:
            width = cfg.dim * (2 if cfg.interaction == "concat" else 4)
            half = max(1, cfg.mlp_dim // 2)
            self.head = nn.Sequential(nn.Linear(width, cfg.mlp_dim), nn.ReLU(), nn.Linear(cfg.mlp_dim, half),
                                      nn.ReLU(), nn.Linear(half, num_classes))
        else:
            self.head = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_dim), nn.ReLU(), nn.Linear(cfg.mlp_dim, num_classes))
        if cfg.init == "xavier":  # LRA's Dense layers: Xavier-uniform kernels, zero biases
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    @classmethod
    def for_data(cls, cfg: ModelConfig, variant: str, variant_params: dict[str, Any] | None, data: PreparedData,
                 zero_token: int | None = None) -> EncoderClassifier:
        """The model for a task's prepared data (its vocabulary, length, classes, pairing);
        ``zero_token``: the task's token of a raw 0 (``Task.zero_token``), for ``mask_zero_tokens``."""
        return cls(cfg, variant, variant_params, vocab_size=data.vocab_size, seq_len=data.seq_len,
                   num_classes=data.num_classes, pad_id=data.pad_id, paired=data.paired, zero_token=zero_token)

    def forward(self, tokens: torch.Tensor, padded: bool = True) -> torch.Tensor:
        """``padded=False`` promises that no token is ``pad_id``: no mask is built, so variants skip
        their masking work and full attention keeps SDPA's mask-free kernels (the trainer knows
        this per batch from host-side flags, without reading the device)."""
        if not self.paired:
            return self.head(self.encode(tokens, padded))
        if tokens.dim() != 3 or tokens.shape[1] != 2:
            raise ValueError(f"a paired task's tokens are (batch, 2, length); got {tuple(tokens.shape)}")
        b = tokens.shape[0]
        pooled = self.encode(tokens.transpose(0, 1).reshape(2 * b, tokens.shape[2]), padded)  # one pass, both towers
        u, v = pooled[:b], pooled[b:]
        feats = [u, v] if self.cfg.interaction == "concat" else [u, v, u * v, u - v]
        return self.head(torch.cat(feats, dim=-1))

    def encode(self, tokens: torch.Tensor, padded: bool = True) -> torch.Tensor:
        """tokens (B, N) -> pooled (B, dim)."""
        x, mask = self.hidden(tokens, padded)
        if self.cls is not None or self.cfg.pooling == "first":
            return x[:, 0]
        if mask is None or self.cfg.pooling == "mean_all":
            return x.mean(1)
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)

    def real_tokens(self, tokens: torch.Tensor, padded: bool = True) -> torch.Tensor | None:
        """(B, N) bool: the tokens the attention layers and pooling treat as real (not padding, nor a masked
        black pixel: ``mask_zero_tokens``); None when every token is (``padded=False`` and no pixel masking)."""
        mask = tokens != self.pad_id if padded else None
        if self.zero_token is not None:  # LRA: a black pixel is padding, whatever the batch's padding
            real = tokens != self.zero_token
            mask = real if mask is None else mask & real
        return mask

    def hidden(self, tokens: torch.Tensor, padded: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """tokens (B, N) -> the final LayerNorm's output at every position (B, N', dim), N' = N + 1 with a
        [CLS] token (then first), and the mask of real positions (B, N') (None: all real): what pooling reads,
        and what a per-token objective (self-pretraining's masked tokens) predicts from."""
        mask = self.real_tokens(tokens, padded)
        x = self.embed(tokens)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
            if mask is not None:
                mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        x = self.drop(x + self.pos[:, : x.shape[1]])
        attention_mask = mask if self.cfg.mask_padding else None
        for block in self.blocks:
            x = block(x, attention_mask)
        return self.ln(x), mask

    def attention_layers(self) -> list[Attention]:
        """The attention layer of each block, first to last."""
        return [cast(Block, b).attn for b in self.blocks]  # a ModuleList's items are typed nn.Module


def model_for_run(run: dict[str, Any], data: PreparedData) -> EncoderClassifier:
    """The model a resolved run config describes, for its task's prepared data (freshly initialised:
    the caller seeds)."""
    zero_token = TASKS.get(run["task"]["name"]).cls.zero_token
    return EncoderClassifier.for_data(ModelConfig(**run["model"]), run["variant"]["name"], run["variant"]["params"],
                                      data, zero_token=zero_token)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
