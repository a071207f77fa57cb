"""The interface every attention variant implements, and the variant registry."""
from __future__ import annotations

from typing import Any, ClassVar, cast

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
    same) and the model passes None itself for batches it knows have no padding. Under torch.compile
    the mask is kept too: a branch on its values would break the graph (the result is the same).
    """
    if key_padding_mask is None or key_padding_mask.device.type != "cpu" or torch.compiler.is_compiling():
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
    small_params: ClassVar[dict[str, Any]] = {}
    #: the published model this variant implements: a row of LRA's Table 1, or of a later paper's LRA
    #: table (Nystromformer: harness/report/lra_published.py); None: none does
    lra_model: ClassVar[str | None] = None

    #: parameters that make the mechanism LRA's released code's form rather than its paper's (``lra_code_form``),
    #: with the value of each that is the paper's
    paper_values: ClassVar[dict[str, Any]] = {}

    @classmethod
    def published_as(cls, params: dict[str, Any]) -> str | None:
        """LRA Table 1's name for this variant under ``params`` (a variant whose identity
        depends on a parameter, such as linear's feature map, overrides this)."""
        return cls.lra_model

    @classmethod
    def lra_code_form(cls, params: dict[str, Any]) -> bool:
        """Whether ``params`` (a run's, as its record holds them) compute the mechanism as LRA's released code
        does rather than as its paper defines it: one of ``paper_values`` set to another value."""
        return any(name in params and params[name] != paper for name, paper in cls.paper_values.items())

    def __init__(self, dim: int, heads: int, cfg: Any, max_len: int, dropout: float = 0.0) -> None:
        """``cfg``: the variant's config dataclass, filled from its parameters (``VARIANTS.make_config``).
        Typed ``Any`` here, since every variant has its own; a variant narrows ``cfg`` to its dataclass
        with a class-level annotation (``cfg: LinearConfig``)."""
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
        qkv: torch.Tensor = self.qkv(x)
        q, k, v = qkv.view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        o = self.attend(q, k, v, key_padding_mask)
        return cast(torch.Tensor, self.out(o.transpose(1, 2).reshape(b, n, d)))

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

    def materialized_bytes(self, batch: int, seq_len: int, *, training: bool = False, padded: bool = True,
                           dtype: torch.dtype = torch.float32, device: str = "cuda") -> int:
        """Analytic peak memory of the layer's quadratic tensors: a planning estimate (at least this much).

        The bytes of the tensors larger than O(N x d) (those that grow as N^2: N x N logits, weights,
        dropout masks) that are alive at once at the high point of one forward of this layer on ``batch``
        sequences of ``seq_len`` tokens, as the code allocates them: temporaries that a Python name or
        autograd still holds count, parameters and buffers do not (a learned N x N matrix is a parameter;
        a copy or product of it made in the forward does count).

        - ``training`` False: evaluation, under ``torch.no_grad`` (nothing is saved for a backward);
          True: a training forward, dropout on and autograd saving tensors as it goes, so the tensors the
          layer keeps for its backward (``saved_bytes``) are part of this peak;
        - ``padded``: the batch has padding (the model passes a key padding mask; on a GPU it passes one for
          every batch that may hold padding, and LRA's tasks pad or mask black pixels), which may cost a
          masked copy of the logits;
        - ``dtype``: the dtype the layer runs in (its parameters', or the autocast dtype), which a variant
          maps to the dtype it computes its quadratic tensors in (most keep them in float32 under
          bf16/fp16 autocast);
        - ``device``: ``"cuda"`` or ``"cpu"``, where they differ (a CUDA dropout keeps a 1-byte mask, a CPU
          dropout a noise tensor of the input's dtype).

        Left out: O(N x d) and O(N x w) tensors (projections, block or window scores, landmarks), the
        workspace inside a fused kernel, the caching allocator's rounding, and the backward pass's own
        gradients of the same N x N shapes (a backward holds a few at a time, about as many as the forward's
        temporaries). 0 (the default) for every mechanism that never holds more than O(N x d) or O(N x w)
        per layer, full attention on fused SDPA kernels included (the CPU's math fallback, taken with
        attention dropout, is not counted: this is for planning GPU runs)."""
        return 0

    def saved_bytes(self, batch: int, seq_len: int, *, padded: bool = True, dtype: torch.dtype = torch.float32,
                    device: str = "cuda") -> int:
        """Of ``materialized_bytes(..., training=True)``, the quadratic tensors that autograd keeps from the end
        of this layer's training forward until its backward (softmax weights, dropout masks...): what every
        layer of a model adds to a training step's peak. Same arguments; 0 by default."""
        return 0

    def stack_bytes(self, layers: int, batch: int, seq_len: int, *, training: bool, padded: bool = True,
                    dtype: torch.dtype = torch.float32, device: str = "cuda") -> int:
        """The quadratic tensors of ``layers`` such layers, one after another, at their high point (at least):
        in training the last layer's forward peak while the ``layers - 1`` before it keep their saved tensors;
        in evaluation one layer's peak (a layer keeps nothing once it has run)."""
        peak = self.materialized_bytes(batch, seq_len, training=training, padded=padded, dtype=dtype, device=device)
        if not training or layers < 1:
            return peak if layers >= 1 else 0
        return (layers - 1) * self.saved_bytes(batch, seq_len, padded=padded, dtype=dtype, device=device) + peak


#: every attention variant: the files of this package, installed packages' ``attnbench.variants``
#: entry points, and the variants a config names with ``from: package.module:Class``
VARIANTS = Registry("variant", "attnbench.variants", entry_points="attnbench.variants",
                    env="ATTNBENCH_VARIANTS", base=Attention)
