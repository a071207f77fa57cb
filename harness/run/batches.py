"""A split's examples where the training device reads them fast, and batches drawn from it
without the host waiting for the device.

Each split gets one of three placements (``choose_placement``):

- ``host`` (a CPU run): the tokens are used where the data loader left them; nothing is copied.
- ``device`` (CUDA, when the split fits a budget of a quarter of the free GPU memory, at most
  2 GiB): the tokens are copied to the device once, in the narrowest integer type that holds every
  id (int16 when the vocabulary has at most 2**15 ids, else int32: the prepared data are saved so,
  ``tasks.base.save_prepared``), indexed there and cast to long per batch (an embedding needs long
  or int ids). LRA ListOps' training split takes 366 MiB so, instead of 1.43 GiB as int64.
- ``streamed`` (larger splits: Retrieval's, Path-X's): the tokens stay in host memory; each batch is
  gathered there, pinned and copied asynchronously.

The labels of a ``device`` or ``streamed`` split are copied to the device. A training epoch's
permutation is staged on the device once (``stage``: pinned, then copied), and each step indexes
with a slice of it, so a step copies no index from pageable host memory. Whether a batch holds any
padding is known from a per-example flag kept in host memory (NumPy), so the model can skip masking
for batches without padding and nothing reads a device tensor to find out.

The placement is a parameter (``DeviceSplit(..., placement=...)``), so that the CUDA paths run on a
CPU too (tests); pinning needs an accelerator and is skipped there (``pin``). ``device_bytes``
says what a split copied to the device; the trainer places its splits before the run's memory
measurement starts (``harness.run.train.train_run``), so they are not in its peak.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # for the annotations only
    from attnbench.tasks.base import PreparedData

BUDGET_CAP_BYTES = 2 * 2 ** 30
BUDGET_FRACTION_OF_FREE = 0.25

#: where a split's tokens live: see the module's docstring
PLACEMENTS = ("host", "device", "streamed")

#: examples compared with the padding id at a time (a comparison makes a bool copy of what it reads)
FLAG_CHUNK = 4096

#: bytes of host tokens narrowed and copied to the device at a time (no full-size narrowed host copy)
COPY_CHUNK_BYTES = 64 * 2 ** 20


def padding_flags(tokens: torch.Tensor, pad_id: int) -> np.ndarray:
    """(n,) bool: whether each example (a pair's two documents together) holds a padding token.
    Computed a chunk of examples at a time, so Path-X's split needs no second copy of its size."""
    flat = tokens.reshape(tokens.shape[0], -1)
    return np.concatenate([(flat[i:i + FLAG_CHUNK] == pad_id).any(dim=1).numpy()
                           for i in range(0, flat.shape[0], FLAG_CHUNK)] or [np.zeros(0, dtype=bool)])


def device_budget_bytes(device: torch.device) -> int:
    """How many bytes of a split's tokens may live on ``device`` (0 on the CPU: they are there)."""
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(min(BUDGET_CAP_BYTES, BUDGET_FRACTION_OF_FREE * free))


def narrow_dtype(vocab_size: int) -> torch.dtype:
    """The narrowest of int16, int32 and int64 that holds every id below ``vocab_size``."""
    for dtype in (torch.int16, torch.int32):
        if vocab_size - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def choose_placement(device: torch.device, nbytes: int, budget_bytes: int) -> str:
    """The placement of a split whose tokens take ``nbytes`` in their narrow type: ``host`` on the CPU,
    else ``device`` when they fit ``budget_bytes``, else ``streamed``."""
    if device.type == "cpu":
        return "host"
    return "device" if nbytes <= budget_bytes else "streamed"


def can_pin(device: torch.device) -> bool:
    """Whether copies to ``device`` go through page-locked host memory (CUDA; pinning needs an accelerator)."""
    return device.type == "cuda"


def copy_narrow(tokens: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``tokens`` as ``dtype`` on ``device``: a new tensor, filled a chunk of examples at a time (the
    narrowing happens in host memory, so a chunk crosses to the device in its narrow size). An id the
    type cannot hold is an error, not a silently wrapped id."""
    out = torch.empty(tokens.shape, dtype=dtype, device=device)
    row_bytes = math.prod(tokens.shape[1:]) * tokens.element_size()
    rows = max(1, COPY_CHUNK_BYTES // max(1, row_bytes))
    top = torch.iinfo(dtype).max
    for i in range(0, tokens.shape[0], rows):
        chunk = tokens[i:i + rows]
        if chunk.numel() and int(chunk.max()) > top:
            raise ValueError(f"token id {int(chunk.max())} does not fit {dtype} (the vocabulary size is too small)")
        out[i:i + rows].copy_(chunk.to(dtype))
    return out


class DeviceSplit:
    """One split: tokens and labels placed for ``device``, and its per-example padding flags.

    ``placement``: ``host``, ``device`` or ``streamed`` (None: ``choose_placement`` decides from the
    device, the tokens' narrow size and ``budget_bytes``, default ``device_budget_bytes``);
    ``vocab_size``: the number of token ids (None: the largest id + 1), which sets the narrow type."""

    def __init__(self, split: dict, pad_id: int, device: torch.device, budget_bytes: int | None = None, *,
                 vocab_size: int | None = None, placement: str | None = None):
        tokens, labels = split["tokens"], split["labels"]
        self.device, self.n = device, labels.shape[0]
        self.has_padding = padding_flags(tokens, pad_id)
        ids = vocab_size if vocab_size is not None else (int(tokens.max()) + 1 if tokens.numel() else 1)
        dtype = narrow_dtype(ids)
        if placement is None:
            budget = device_budget_bytes(device) if budget_bytes is None else budget_bytes
            placement = choose_placement(device, tokens.numel() * dtype.itemsize, budget)
        if placement not in PLACEMENTS:
            raise ValueError(f"placement {placement!r}; allowed: {', '.join(PLACEMENTS)}")
        self.placement = placement
        self.resident = placement != "streamed"  # every token is where the model reads it
        self.pin = placement != "host" and can_pin(device)
        if placement == "host":
            self.tokens, self.labels = tokens, labels
        else:  # a copy even where `device` is the CPU (a forced placement), as on a GPU
            self.tokens = copy_narrow(tokens, dtype, device) if placement == "device" else tokens
            self.labels = labels.to(device, copy=True)
        #: bytes this split copied to the device (its tokens when placed there, its labels): 0 on the host path
        self.device_bytes = 0 if placement == "host" else (
            self.labels.numel() * self.labels.element_size()
            + (self.tokens.numel() * self.tokens.element_size() if placement == "device" else 0))

    def _upload(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device: pinned (where the device allows) and copied while the device works."""
        if self.pin:
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def stage(self, index: torch.Tensor) -> torch.Tensor:
        """A CPU index tensor (an epoch's permutation) where ``batch`` indexes with it: on the device,
        copied once from pinned memory (where the device allows); as it is on the host path."""
        return index if self.placement == "host" else self._upload(index)

    def batch(self, idx: torch.Tensor, staged: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(tokens as long, labels, padded) of the examples ``idx`` (a CPU index tensor) on the device;
        ``staged``: the same index already on the device (a slice of a ``stage``d permutation), else
        ``idx`` is staged here."""
        padded = bool(self.has_padding[idx.numpy()].any())
        if self.placement == "host":
            return self.tokens[idx].long(), self.labels[idx], padded
        dev_idx = self.stage(idx) if staged is None else staged
        if self.placement == "device":
            tokens = self.tokens.index_select(0, dev_idx)
        else:  # gathered in host memory, pinned, and copied while the device works
            tokens = self._upload(self.tokens[idx])
        return tokens.long(), self.labels.index_select(0, dev_idx), padded

    def slice(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Examples ``start:stop`` in order (evaluation): no index at all."""
        stop = min(stop, self.n)
        padded = bool(self.has_padding[start:stop].any())
        tokens = self.tokens[start:stop]
        if self.placement == "streamed":
            tokens = self._upload(tokens)
        return tokens.long(), self.labels[start:stop], padded


def place_splits(data: PreparedData, device: torch.device, placement: str | None = None) -> dict[str, DeviceSplit]:
    """Every split of ``data`` (a ``PreparedData``) placed for ``device`` (``placement``: forced on all)."""
    return {name: DeviceSplit(split, data.pad_id, device, vocab_size=data.vocab_size, placement=placement)
            for name, split in data.splits.items()}
