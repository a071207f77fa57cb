"""Peers of ``sparse``: HF transformers' ``BigBirdBlockSparseAttention`` as shipped, and its block-sparse
mechanism alone (without the dense N x N probability matrix transformers 5 reassembles every forward)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from attnbench.harness.compare.adapters import mask_of, pad_to
from attnbench.harness.compare.registry import Params, Peer, Shape, register_peer


class HFBigBird(nn.Module):
    """``BigBirdBlockSparseAttention`` (ITC: first and last block global, 3 sliding, r random blocks)."""

    def __init__(self, dim: int, heads: int, block: int, random_blocks: int, n: int):
        from transformers import BigBirdConfig
        from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention

        super().__init__()
        cfg = BigBirdConfig(hidden_size=dim, num_attention_heads=heads, attention_type="block_sparse",
                            block_size=block, num_random_blocks=random_blocks, attention_probs_dropout_prob=0.0,
                            max_position_embeddings=max(4096, n), num_hidden_layers=1)
        self.attn = BigBirdBlockSparseAttention(cfg, seed=0)
        self.out = nn.Linear(dim, dim)
        self.block, self.random_blocks = block, random_blocks

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        from transformers.models.big_bird.modeling_big_bird import BigBirdModel

        n = x.shape[1]
        limit = (5 + 2 * self.random_blocks) * self.block
        if n <= limit:
            raise ValueError(f"HF BigBird block-sparse needs N > (5 + 2r) * block = {limit}; "
                             f"BigBirdModel switches to full attention at N = {n}")
        xp, maskp = pad_to(x, mask_of(x, key_padding_mask), self.block)
        blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(maskp.to(x.dtype),
                                                                                             self.block)
        out, _ = self.attn(xp, band_mask=band, from_mask=from_mask, to_mask=to_mask,
                           from_blocked_mask=blocked, to_blocked_mask=blocked)
        result: torch.Tensor = self.out(out[:, :n])
        return result


def _match_bigbird(s: Shape, d: Params) -> tuple[Params, Params]:
    b, r = int(d["block_size"]), int(d["random_blocks"])
    return ({"block_size": b, "window_blocks": 1, "global_blocks": (0, -1), "random_blocks": r, "strided_every": 0},
            {"attention_type": "block_sparse", "block_size": b, "num_random_blocks": r,
             "layout": "ITC: global first and last block, 3 sliding blocks, r random blocks"})


register_peer(Peer(
    name="hf-bigbird", variant="sparse", title="HF transformers BigBirdBlockSparseAttention",
    requires=("transformers.models.big_bird.modeling_big_bird",), distributions=("transformers",),
    match=_match_bigbird,
    build=lambda s, p: HFBigBird(s.dim, s.heads, p["block_size"], p["num_random_blocks"], s.n),
    note="random blocks drawn on the host with NumPy each forward (training mode); + an output nn.Linear"))


class _SkipDenseProbs(torch.overrides.TorchFunctionMode):
    """Drops HF BigBird's reassembly of the dense (B, H, N, N) attention-probability matrix, which
    transformers 5 builds on every forward (and the layer's caller discards): the ``torch.zeros``
    of that shape returns an empty stand-in, and the writes into it (slice assignments, views,
    scatters) are skipped. Everything that computes the output runs unchanged."""

    WRITES = {"__setitem__", "__getitem__", "view", "scatter_"}

    def __init__(self, dense_shape: tuple[int, ...]):
        super().__init__()
        self.dense_shape = dense_shape
        self.stand_in: torch.Tensor | None = None
        self.skipped = 0

    def __torch_function__(self, func: Callable[..., Any], types: Sequence[type], args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if func is torch.zeros and tuple(args) == self.dense_shape:
            self.stand_in = torch.empty(0, dtype=kwargs.get("dtype"), device=kwargs.get("device"))
            self.skipped += 1
            return self.stand_in
        if self.stand_in is not None and name in self.WRITES and args and args[0] is self.stand_in:
            return self.stand_in
        return func(*args, **kwargs)


class HFBigBirdCore(HFBigBird):
    """HF BigBird's block-sparse mechanism alone: as ``HFBigBird``, without the dense N x N
    attention-probability matrix that transformers 5 reassembles on every forward."""

    skipped_dense: int | None = None  # how many dense matrices the last forward skipped

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[1] + (-x.shape[1]) % self.block
        mode = _SkipDenseProbs((x.shape[0], self.attn.num_attention_heads, n, n))
        with mode:
            out = super().forward(x, key_padding_mask)
        self.skipped_dense = mode.skipped
        return out


register_peer(Peer(
    name="hf-bigbird-core", variant="sparse", title="HF transformers BigBirdBlockSparseAttention, mechanism alone",
    requires=("transformers.models.big_bird.modeling_big_bird",), distributions=("transformers",),
    match=_match_bigbird,
    build=lambda s, p: HFBigBirdCore(s.dim, s.heads, p["block_size"], p["num_random_blocks"], s.n),
    note="as hf-bigbird, with its dense N x N attention-probability reassembly skipped (returned, never used)"))
