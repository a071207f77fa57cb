"""Block-sparse attention (Sparse Transformer / BigBird family).

The sequence is cut into blocks; each query block attends to a layout of key blocks:
- local: its own block and ``window_blocks`` neighbours on each side;
- strided (Child et al. 2019, block version): key blocks j with (i - j) % strided_every == 0;
- random (BigBird): ``random_blocks`` further key blocks, drawn afresh each training
  step and fixed (seeded) in eval mode;
- global (BigBird): ``global_blocks`` whose tokens attend to and are attended by every
  token (negative indices count from the end of the real tokens).
The chosen key blocks are gathered: memory O(N * blocks_per_row * block). With
``strided_every`` set, blocks_per_row grows as N / strided_every (Child et al. pick it
near sqrt(N), giving O(N sqrt N)). The layout is part of the config and of the record.

BigBird as LRA's code ran it (google-research/long-range-arena, lra_benchmarks/models/bigbird/) is
this layout under six parameters, each off by default (for config/lra.yaml's ``sparse`` row):
- ``layout_length: lra_padded``: the layout lies on the sequence as LRA's ``BigBirdAttention.apply``
  pads it (bigbird_attention.py:484-489): ``max_len`` tokens plus ``block_size - max_len % block_size``
  more (1 to a whole block), the same for every element of every batch. Its ``jnp.pad`` of the boolean
  padding mask with ``-1e9`` makes those appended tokens real, and its bias-free projections of their
  zero inputs give them zero keys and values: here they are keys of zero key and value, so every query
  whose layout holds them (every query, when the last block is global) gives them weight exp(0 - max).
  Negative ``global_blocks`` count from this sequence's end (LRA's globals are its first and last
  block: ``global_blocks: [0, -1]``), random blocks are drawn among all its blocks (LRA's draw does not
  look at the padding), with ``get_block_rand_mask``'s candidates (:24-66: with a span, the last two
  query rows before the last block draw from the span's first ``last - 4`` and ``last - 3`` blocks);
- ``random_draw: fixed_per_layer``: the layer's eval-mode draw is used in training too (LRA seeds numpy
  with the layer index once per layer, bigbird.py:207, bigbird_attention.py:366);
- ``random_per_head``: a draw per head (LRA: one ``get_block_rand_mask`` per head, :368-376); the heads
  then run as batch elements of their own;
- ``random_span``: random key blocks only within the first ``random_span`` tokens (LRA: 1024,
  ``last_idx=min(seq_length, 1024)``, :375);
- ``attention_dropout: false``: no dropout on the attention weights (LRA's
  ``sparse_dot_product_attention`` has none, :317-404);
- ``zero_masked_queries``: queries the padding mask marks get a zero attention output (LRA multiplies
  the context by the query mask, :312), so that only their residual reaches the next layer (it matters
  to a mean over every position, ``model.pooling: mean_all``; real tokens never see them).
The draw reproduces the distribution of LRA's (its candidate blocks, one uniform subset of them per
query block and head, fixed per layer), not numpy's numbers: the layer does not know its index (the
interface has none), and the fixed layout is seeded by the layer seed, so it changes with a run's seed
where LRA's is the same in every run.

Two kernels compute it (the ``kernel`` parameter, ``flex_blocks``): the key-block table gathered
into SDPA, and FlexAttention with the same block layout as its mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from attnbench.harness.core.registry import param
from attnbench.variants.base import VARIANTS, Attention
from attnbench.variants.lib import block_flash
from attnbench.variants.lib.blocks import (
    block_sparse_attention,
    dense_mask_from_blocks,
    flash_blocks,
    pad_to_multiple,
    position_onehot,
    real_lengths,
    resolve_positions,
)
from attnbench.variants.lib.flex_blocks import KERNEL_HELP, BlockKernelChoice, Kernel, flex_block_sparse_attention

#: where the layout ends (``SparseConfig.layout_length``)
LayoutLength = Literal["real", "lra_padded"]
#: when random blocks are drawn (``SparseConfig.random_draw``)
RandomDraw = Literal["per_step", "fixed_per_layer"]


@dataclass(frozen=True)
class SparseConfig:
    """Block-sparse layout."""

    block_size: int = param(64, "tokens per block", minimum=1)
    window_blocks: int = param(1, "neighbouring key blocks on each side of a query block's own (1: 3 blocks)",
                               minimum=0)
    global_blocks: tuple[int, ...] = param((0,), "global blocks (negative: from the end of the real tokens, or "
                                           "of LRA's padded sequence with layout_length lra_padded); [] for none")
    random_blocks: int = param(3, "random key blocks per query block (BigBird); 0 for none", minimum=0)
    strided_every: int = param(0, "also attend key blocks j with (i - j) % strided_every == 0 (0: off)", minimum=0)
    eval_seed: int = param(0, "seed of the random blocks in eval mode")
    kernel: Kernel = param("auto", KERNEL_HELP)
    layout_length: LayoutLength = param(
        "real", "real: the layout ends at each element's last real token; lra_padded: on max_len plus "
        "block_size - max_len % block_size tokens of zero key and value, as LRA's BigBird pads every input "
        "(bigbird_attention.py:484-489), random candidates as its get_block_rand_mask (:24-66)", added_later=True)
    random_draw: RandomDraw = param(
        "per_step", "per_step: random blocks drawn afresh each training step (fixed in eval); fixed_per_layer: "
        "the eval draw in training too, as LRA's BigBird (np.random.seed(layer index), bigbird.py:207)",
        added_later=True)
    random_per_head: bool = param(
        False, "a draw of random blocks per head, as LRA's BigBird (one get_block_rand_mask per head, "
        "bigbird_attention.py:368-376); false: one for all heads", added_later=True)
    random_span: int = param(
        0, "random key blocks only within the first random_span tokens (0: anywhere); LRA's BigBird: 1024 "
        "(last_idx=min(seq_length, 1024), bigbird_attention.py:375)", minimum=0, added_later=True)
    attention_dropout: bool = param(
        True, "apply model.attn_dropout to the attention weights; false: none, as LRA's BigBird "
        "(sparse_dot_product_attention has no dropout, bigbird_attention.py:317-404)", added_later=True)
    zero_masked_queries: bool = param(
        False, "queries the padding mask marks (padding, masked pixels) get a zero attention output, as LRA's "
        "BigBird (context_layer * seq_m_pad, bigbird_attention.py:312); false: they attend the real keys",
        added_later=True)


#: what a head adds to the seed of the random blocks, with ``random_per_head`` (odd: heads never collide)
_HEAD_SEED_STEP = 0x2545F491


def lra_random_candidates(n_blocks: int, block: int, span: int) -> torch.Tensor:
    """(nB, nB) bool: row i holds the key blocks among which LRA's ``get_block_rand_mask``
    (bigbird_attention.py:24-66) draws query block i's random blocks, on a padded sequence of ``n_blocks``
    blocks of ``block`` tokens; ``span``: its ``last_idx`` cap, min(sequence, span) tokens (0: none, -1 there).

    Its rule, slice for slice (``a`` are the blocks 1..nB-2, ``last`` the last block of the span): row 1
    draws from a[2:last], row 2 from a[3:last], row nB-3 from a[:last-4], row nB-2 from a[:last-3] (with a
    span short of the end, these two stop 3-4 blocks short of it), any other row i from the blocks outside
    i-1..i+1 up to ``last``; rows 0 and nB-1 (its global blocks) draw none. Where a row has fewer
    candidates than random blocks, LRA's assignment would fail; here the row takes them all."""
    nb = n_blocks
    a = range(1, nb - 1)  # sliced as LRA slices its array: a range's slices are the list's, in O(1)
    last = nb - 1
    last_idx = min(nb * block, span) if span else -1
    if last_idx > 2 * block:
        last = last_idx // block - 1
    bounds = [[0, 0, 0, 0] for _ in range(nb)]  # per row: two ranges of blocks [lo, hi)
    for i in range(1, nb - 1):
        start, end = i - 2, i
        if i == 1:
            parts = [a[2:last]]
        elif i == 2:
            parts = [a[3:last]]
        elif i == nb - 3:
            parts = [a[:last - 4]]
        elif i == nb - 2:
            parts = [a[:last - 3]]
        elif start > last:
            parts = [a[:last]]
        elif end + 1 == last:
            parts = [a[:start]]
        else:
            parts = [a[:start], a[end + 1:last]]
        for j, part in enumerate(parts):
            if len(part):
                bounds[i][2 * j:2 * j + 2] = [part.start, part.stop]
    ranges = torch.tensor(bounds, dtype=torch.long).view(nb, 2, 2, 1)  # (nB, range, lo/hi, 1)
    cols = torch.arange(nb)
    return ((cols >= ranges[:, :, 0]) & (cols < ranges[:, :, 1])).any(1)


def _hash_priority(seed: int | torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """A pseudo-random int64 per (row, col), independent of the tensor shapes (splitmix64 mix),
    so a row's random blocks do not change when padding adds blocks."""
    x = rows * 0x9E3779B1 + cols * 0x85EBCA77 + seed * 0x27D4EB2F + 0x165667B1
    x = x ^ (x >> 30)
    x = x * -4658895280553007687  # 0xBF58476D1CE4E5B9 as int64
    x = x ^ (x >> 27)
    x = x * -7723592293110705685  # 0x94D049BB133111EB
    return x ^ (x >> 31)


@VARIANTS.register("sparse", SparseConfig)
class SparseAttention(BlockKernelChoice, Attention):
    """Block-sparse attention: local, strided, random and global blocks (BigBird / Sparse Transformer)."""

    complexity = "O(N*k*b) time and memory (k key blocks of b tokens per query block)"
    linear_memory = True
    small_params = {"block_size": 4, "window_blocks": 1, "global_blocks": (0,), "random_blocks": 1, "strided_every": 3}
    paper_values = {"layout_length": "real", "random_draw": "per_step", "random_per_head": False, "random_span": 0,
                    "attention_dropout": True, "zero_masked_queries": False}

    cfg: SparseConfig
    #: the layer's seed of its eval-mode random blocks, a 0-dim buffer (``_layer_seed``: its value)
    layer_seed: torch.Tensor
    #: the configured global blocks, (G,) long (a non-persistent buffer)
    global_block_positions: torch.Tensor
    #: with ``layout_length: lra_padded`` and random blocks, LRA's random candidates on its padded sequence
    #: (``lra_random_candidates``, (nB, nB) bool, a non-persistent buffer); None otherwise
    lra_candidates: torch.Tensor | None

    @classmethod
    def published_as(cls, params: dict[str, Any]) -> str | None:
        """BigBird with random blocks; Sparse Transformer with strided blocks and none random."""
        if params.get("random_blocks", SparseConfig.random_blocks):
            return "BigBird"
        return "Sparse Trans." if params.get("strided_every", SparseConfig.strided_every) else None

    def __init__(self, dim: int, heads: int, cfg: SparseConfig, max_len: int, dropout: float = 0.0):
        super().__init__(dim, heads, cfg, max_len, dropout)
        # differs per layer, saved with the weights: eval layouts survive a checkpoint round trip
        self.register_buffer("layer_seed", torch.tensor(self.draw_layer_seed()))
        # its value as a Python int, read again after each load_state_dict: reading the buffer in
        # the forward would be a host sync on CUDA
        self._layer_seed = int(self.layer_seed)
        self.register_load_state_dict_post_hook(_reread_layer_seed)  # type: ignore[no-untyped-call]  # untyped in torch
        # the configured global blocks on the layer's device (no host copy per forward); not
        # persistent: derived from the config, so checkpoints keep their keys
        self.register_buffer("global_block_positions", torch.tensor(cfg.global_blocks, dtype=torch.long),
                             persistent=False)
        if not cfg.attention_dropout:
            self.dropout = 0.0
        #: the length the layout lies on with ``layout_length: lra_padded`` (LRA's padded max_len), else 0
        self.lra_length = (max_len // cfg.block_size + 1) * cfg.block_size if cfg.layout_length == "lra_padded" else 0
        candidates = None
        if self.lra_length and cfg.random_blocks:
            candidates = lra_random_candidates(self.lra_length // cfg.block_size, cfg.block_size, cfg.random_span)
        self.register_buffer("lra_candidates", candidates, persistent=False)

    def block(self, n: int) -> int:
        if self.lra_length:  # LRA's blocks whatever the input's length
            return self.cfg.block_size
        return max(1, min(self.cfg.block_size, n))

    def table_width(self, nb: int) -> int:
        """Key blocks per query block, at most, in a sequence of ``nb`` blocks: a static bound, so the
        table's width needs no look at the data (a host sync on CUDA).

        Local blocks number at most min(nb, 2 * window_blocks + 1); strided ones at most
        ceil(nb / strided_every) of which one is the query block itself (already local), so at
        most nb // strided_every more; random ones at most random_blocks. Global blocks only remove.
        """
        local = min(nb, 2 * self.cfg.window_blocks + 1)
        strided = nb // self.cfg.strided_every if self.cfg.strided_every else 0
        return min(nb, local + strided + self.cfg.random_blocks)

    def block_pairs(self, n_padded: int, block: int, mask: torch.Tensor,
                    seed: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Which key blocks each query block attends, (B, nB, nB) bool, or (B, H, nB, nB) with
        ``random_per_head``, without the global blocks (scored beside, once), and the global blocks'
        indices and validity (B, G)."""
        cfg, dev = self.cfg, mask.device
        nb = n_padded // block
        if self.lra_length:  # every element's layout spans LRA's whole padded sequence
            n_real = torch.full((mask.shape[0],), nb, dtype=torch.long, device=dev)
        else:
            n_real = (real_lengths(mask) + block - 1) // block  # (B,) real blocks per element
        rows = torch.arange(nb, device=dev)[:, None]
        cols = torch.arange(nb, device=dev)[None, :]
        in_range = cols[None] < n_real[:, None, None]  # (B, nB, nB)
        gb_idx, gb_ok = resolve_positions(self.global_block_positions, n_real)
        is_global = position_onehot(gb_idx, gb_ok, nb).any(1)  # (B, nB)
        chosen = ((rows - cols).abs() <= cfg.window_blocks)[None] & in_range
        if cfg.strided_every:
            chosen |= (((rows - cols) % cfg.strided_every) == 0)[None] & in_range
        chosen &= ~is_global[:, None, :]  # global blocks are scored beside the table, once
        if cfg.random_blocks:
            free = in_range & ~chosen & ~is_global[:, None, :]
            if self.lra_candidates is not None:
                free &= self.lra_candidates
            elif cfg.random_span:
                free &= cols < cfg.random_span // block
            if cfg.random_per_head:  # (B, H, nB, nB): a draw per head
                heads = torch.arange(self.heads, device=dev)[:, None, None]
                prio = _hash_priority(seed + heads * _HEAD_SEED_STEP, rows, cols)
                free = free[:, None].expand(-1, self.heads, -1, -1)
            else:
                prio = _hash_priority(seed, rows, cols)
            prio = prio.expand_as(free).masked_fill(~free, torch.iinfo(torch.long).min)
            k = min(cfg.random_blocks, nb)
            top = prio.topk(k, dim=-1)
            picked = torch.zeros_like(free).scatter_(-1, top.indices, free.gather(-1, top.indices))
            if cfg.random_per_head:
                chosen = chosen[:, None] | picked
            else:
                chosen |= picked
        return chosen, gb_idx, gb_ok

    def block_table(self, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, nB, nB) chosen pairs -> key-block table (B, nB, K) and its validity, K = ``table_width``:
        each row's chosen blocks in ascending order, then unchosen ones marked invalid."""
        width = self.table_width(chosen.shape[-1])
        order = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True)[..., :width]
        valid = torch.arange(width, device=chosen.device) < chosen.sum(-1, keepdim=True)
        return order, valid

    @staticmethod
    def global_tokens(gb_idx: torch.Tensor, gb_ok: torch.Tensor, block: int,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global blocks (B, G) -> global token positions and validity (B, G * block): real tokens only."""
        n_padded = mask.shape[1]
        offs = torch.arange(block, device=mask.device)
        g_idx = (gb_idx[..., None] * block + offs).flatten(1).clamp(max=n_padded - 1)
        g_ok = gb_ok[..., None].expand(-1, -1, block).flatten(1) & mask.gather(1, g_idx)
        return g_idx, g_ok

    def layout(self, n_padded: int, block: int, mask: torch.Tensor,
               seed: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Key-block table (B, nB, K), its validity, and the global token positions and validity."""
        chosen, gb_idx, gb_ok = self.block_pairs(n_padded, block, mask, seed)
        return self.block_table(chosen) + self.global_tokens(gb_idx, gb_ok, block, mask)

    def _seed(self, device: torch.device | None = None) -> int | torch.Tensor:
        """The seed of the random blocks: in training a fresh draw from torch's global generator, kept as a
        0-dim tensor on ``device`` (read by no one on the host: no sync on CUDA, nothing that breaks a
        torch.compile graph); in eval mode, and in training with ``random_draw: fixed_per_layer``, the
        layer's fixed seed, a Python int."""
        if self.training and self.cfg.random_blocks and self.cfg.random_draw == "per_step":
            return torch.randint(0, 2**31 - 1, (), device=device)
        return self.fixed_seed(self.cfg.eval_seed, self._layer_seed)

    def _prepare(self, n: int, key_padding_mask: torch.Tensor | None, batch: int, device: torch.device,
                 ) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The padded key mask, the block, the chosen block pairs (``block_pairs``) and the global tokens'
        positions and validity (B, G). With ``layout_length: lra_padded`` the key mask covers LRA's padded
        sequence: the input's, then padding up to ``max_len``, then LRA's appended tokens, real."""
        mask = key_padding_mask if key_padding_mask is not None else \
            torch.ones(batch, n, dtype=torch.bool, device=device)
        block = self.block(n)
        if self.lra_length:
            if n > self.max_len:
                raise ValueError(f"layout_length lra_padded: an input of {n} tokens, longer than max_len "
                                 f"{self.max_len}")
            mask = F.pad(F.pad(mask, (0, self.max_len - n), value=False), (0, self.lra_length - self.max_len),
                         value=True)
        else:
            mask = pad_to_multiple(mask, 1, block, value=False)
        chosen, gb_idx, gb_ok = self.block_pairs(mask.shape[1], block, mask, self._seed(mask.device))
        return (mask, block, chosen) + self.global_tokens(gb_idx, gb_ok, block, mask)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        n = q.shape[2]
        kernel, why = self.kernel_and_why_for(q, k, v)
        mask, block, chosen, g_idx, g_ok = self._prepare(n, key_padding_mask, q.shape[0], q.device)
        if self.lra_length:  # LRA's padded sequence: its appended tokens' keys and values are zero
            q, k, v = (F.pad(t, (0, 0, 0, mask.shape[1] - n)) for t in (q, k, v))
        else:
            q, k, v = (pad_to_multiple(t, 2, block) for t in (q, k, v))
        bsz, heads = q.shape[:2]
        per_head = chosen.dim() == 4
        if per_head:  # a layout per head: each head is a batch element of its own
            q, k, v = (t.reshape(bsz * heads, 1, *t.shape[2:]) for t in (q, k, v))
            mask, g_idx, g_ok = (t.repeat_interleave(heads, 0) for t in (mask, g_idx, g_ok))
            chosen = chosen.flatten(0, 1)
        if kernel == "flex":
            out = flex_block_sparse_attention(q, k, v, block=block, key_mask=mask, block_pairs=chosen,
                                              global_idx=g_idx, global_valid=g_ok)
        elif block_flash.worthwhile(q, self.dropout if self.training else 0.0):
            out = self.flash_attend(q, k, v, mask, block, chosen, g_idx, g_ok, why)
        else:
            key_blocks, valid = self.block_table(chosen)
            out = block_sparse_attention(q, k, v, block=block, key_blocks=key_blocks, block_valid=valid,
                                         key_mask=mask, global_idx=g_idx, global_valid=g_ok,
                                         dropout=self.dropout, training=self.training, choice=why)
        if self.cfg.zero_masked_queries and key_padding_mask is not None:
            out = torch.where(mask[:, None, :, None], out, 0.0)
        if per_head:
            out = out.reshape(bsz, heads, *out.shape[2:])
        return out[:, :, :n]

    def flash_attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, block: int,
                     chosen: torch.Tensor, g_idx: torch.Tensor, g_ok: torch.Tensor, choice: str = "") -> torch.Tensor:
        """The CPU flash path (``blocks.flash_blocks``): the window blocks as a sliding band of
        ``window_blocks`` (the chosen ones exactly: blocks past the real tokens hold only padded
        keys, global blocks only global ones, both masked there), the strided and random blocks as
        a table of their own, whose width is a static bound (strided + random)."""
        nb = chosen.shape[-1]
        reach = min(self.cfg.window_blocks, nb - 1)
        idx = torch.arange(nb, device=chosen.device)
        extra = chosen & ((idx[:, None] - idx[None, :]).abs() > reach)
        strided = nb // self.cfg.strided_every if self.cfg.strided_every else 0
        width = min(nb, strided + self.cfg.random_blocks)
        table: torch.Tensor | None = None
        valid: torch.Tensor | None = None
        if width:
            table = torch.argsort((~extra).to(torch.int8), dim=-1, stable=True)[..., :width]
            valid = torch.arange(width, device=chosen.device) < extra.sum(-1, keepdim=True)
        return flash_blocks(q, k, v, block=block, key_mask=mask, reach=reach, extra_blocks=table, extra_valid=valid,
                            global_idx=g_idx, global_valid=g_ok, choice=choice)

    def dense_mask(self, n: int, key_padding_mask: torch.Tensor) -> torch.Tensor:
        """(B, N, N) token-level mask of the current layout (eval mode: the fixed one); (B, H, N, N) with
        ``random_per_head``. With ``layout_length: lra_padded`` the keys LRA appends lie past N, not shown."""
        mask, block, chosen, g_idx, g_ok = self._prepare(n, key_padding_mask, key_padding_mask.shape[0],
                                                         key_padding_mask.device)
        if chosen.dim() == 4:
            bsz, heads = chosen.shape[:2]
            g_idx, g_ok = (t.repeat_interleave(heads, 0) for t in (g_idx, g_ok))
            key_blocks, valid = self.block_table(chosen.flatten(0, 1))
            dense = dense_mask_from_blocks(mask.shape[1], block, key_blocks, valid, None, g_idx, g_ok)
            dense = dense.view(bsz, heads, *dense.shape[1:])
        else:
            key_blocks, valid = self.block_table(chosen)
            dense = dense_mask_from_blocks(mask.shape[1], block, key_blocks, valid, None, g_idx, g_ok)
        return dense[..., :n, :n]

    def blocks_per_row(self, seq_len: int) -> int:
        return self.table_width(self.padded_length(seq_len) // self.block(seq_len))

    def padded_length(self, seq_len: int) -> int:
        """The length the layout lies on for ``seq_len`` tokens: whole blocks, or with ``layout_length:
        lra_padded`` LRA's padding of them (``seq_len // block + 1`` blocks). A layer pads every input to
        its ``max_len``: the count is exact for the inputs of that length that the model gives it."""
        block = self.block(seq_len)
        if self.lra_length:
            return (seq_len // block + 1) * block
        return math.ceil(seq_len / block) * block

    def flops(self, batch: int, seq_len: int) -> int:
        block = self.block(seq_len)
        n = self.padded_length(seq_len)
        g = len(self.cfg.global_blocks) * block
        keys = self.blocks_per_row(seq_len) * block
        attn = 2 * 2 * batch * self.heads * n * (keys + g) * self.head_dim
        attn += 2 * 2 * batch * self.heads * g * n * self.head_dim
        return attn + self.projection_flops(batch, seq_len)


def _reread_layer_seed(module: SparseAttention, incompatible_keys: object) -> None:
    """load_state_dict post-hook: the layer seed's Python copy follows the loaded buffer."""
    module._layer_seed = int(module.layer_seed)
