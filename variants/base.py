"""The interface every attention variant implements, and the variant registry."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from attnbench.harness.core.registry import Registry

#: names of the query/key/value projections among a layer's children (``Attention.input_projections``)
INPUT_PROJECTIONS = ("qkv", "qk", "q", "k", "v")


def padding_mask_or_none(key_padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The mask, or None when it masks nothing and that is known without a device sync.

    A variant skips its masking work (and full attention keeps SDPA's mask-free kernels) when
    given None. On the CPU an all-True mask is checked and dropped here; on a GPU checking it
    would stall the host until the device caught up, so the mask is kept (the result is the
    same) and the model passes None itself for batches it knows have no padding.
    """
    if key_padding_mask is None or key_padding_mask.device.type != "cpu":
        return key_padding_mask
    return None if bool(key_padding_mask.all()) else key_padding_mask


class Attention(nn.Module):
    """A whole multi-head self-attention layer (projections included).

    ``forward(x: (B, N, D), key_padding_mask: (B, N) bool, True = real token) -> (B, N, D)``.

    The default ``forward`` projects to per-head queries, keys and values of shape
    (B, H, N, D/H), calls ``attend`` and projects back. A variant that projects
    differently (shared QK, projections along the length) overrides ``forward``.

    It is built knowing ``max_len``, the longest sequence it will be given (the model passes its
    sequence length, the [CLS] token included; the efficiency sweep builds one layer per length).
    A mechanism that projects or learns along the length (Linformer's E and F, a learned
    N x N synthesizer, learned relative positions) sizes its parameters from it and may refuse
    longer inputs; a variant that does not need it ignores it. Shorter inputs (a batch padded
    to less than ``max_len``) must work.

    Capability flags (class attributes) let the harness and tests treat variants
    uniformly instead of branching on names.

    Conventions every variant keeps (the registry-wide tests check them):
    - padding: appended padding (``key_padding_mask`` False at the end) leaves the real
      tokens' outputs unchanged; padded keys get no weight;
    - randomness (hash rotations, random features, random blocks) is drawn from torch's
      global generator in training mode, and is fixed (seeded per layer) in eval mode, so
      evaluation is deterministic;
    - float32 and float64 inputs both work; accumulation is at least float32.
    """

    supports_padding_mask: ClassVar[bool] = True
    #: how time and memory grow with sequence length N, for the report
    complexity: ClassVar[str] = "O(N^2)"
    #: True when the output equals full softmax attention (up to rounding)
    exact: ClassVar[bool] = False
    #: True when the peak memory of forward+backward grows linearly with N (tested as a ratio)
    linear_memory: ClassVar[bool] = False
    #: hyper-parameters under which a test at N = 16..64 tokens exercises the real mechanism
    #: (several blocks, chunks or buckets) rather than a degenerate one-block case
    small_params: ClassVar[dict] = {}
    #: the published model this variant implements: a row of LRA's Table 1, or of a later paper's LRA
    #: table (Nystromformer: harness/report/lra_published.py); None: none does
    lra_model: ClassVar[str | None] = None

    @classmethod
    def published_as(cls, params: dict) -> str | None:
        """LRA Table 1's name for this variant under ``params`` (a variant whose identity
        depends on a parameter, such as linear's feature map, overrides this)."""
        return cls.lra_model

    def __init__(self, dim: int, heads: int, cfg, max_len: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model dim {dim} is not divisible by heads {heads}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.max_len = int(max_len)
        self.cfg = cfg
        self.dropout = dropout
        self.build_projections()

    def input_projections(self) -> list[nn.Module]:
        """The query/key/value projections: the ``nn.Linear`` children named qkv, qk, q, k or v (the
        model drops their biases where ``model.qkv_bias`` is false, as LRA's layers have none)."""
        return [m for name, m in self.named_children() if name in INPUT_PROJECTIONS and isinstance(m, nn.Linear)]

    def build_projections(self) -> None:
        """The layer's projections: fused query/key/value and output. A variant that projects
        differently (shared QK) overrides this together with ``forward``."""
        self.qkv = nn.Linear(self.dim, 3 * self.dim)
        self.out = nn.Linear(self.dim, self.dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        o = self.attend(q, k, v, key_padding_mask)
        return self.out(o.transpose(1, 2).reshape(b, n, d))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, H, N, Dh) x3 + (B, N) bool mask -> (B, H, N, Dh)."""
        raise NotImplementedError

    @staticmethod
    def draw_layer_seed() -> int:
        """A number that tells this layer's fixed (eval-mode) randomness from other layers'. The
        interface has no layer index, so it is drawn from torch's global generator at
        construction: layers differ, and a model built under the same seed gets the same."""
        return int(torch.randint(0, 2 ** 31 - 1, ()))

    @staticmethod
    def fixed_seed(eval_seed: int, layer_seed: int) -> int:
        """The seed of a layer's fixed randomness: the config's ``eval_seed`` mixed with its layer seed."""
        return (eval_seed * 1_000_003 + int(layer_seed)) % 2 ** 63

    def projection_flops(self, batch: int, seq_len: int) -> int:
        """Multiply-adds x2 of the input and output projections."""
        return 2 * batch * seq_len * (3 * self.dim * self.dim + self.dim * self.dim)

    def flops(self, batch: int, seq_len: int) -> int:
        """Analytic forward FLOPs of the layer for one (batch, seq_len) shape."""
        raise NotImplementedError


#: every attention variant: the files of this package, installed packages' ``attnbench.variants``
#: entry points, and the variants a config names with ``from: package.module:Class``
VARIANTS = Registry("variant", "attnbench.variants", entry_points="attnbench.variants",
                    env="ATTNBENCH_VARIANTS", base=Attention)
