"""A split's examples where the training device reads them fast, and batches drawn from it
without the host waiting for the device.

Token tensors that fit a budget (a quarter of the free GPU memory, at most 2 GiB) are copied
to the GPU once and indexed there; larger ones (Path-X's, say) stay in host memory and each
batch is gathered there, pinned and copied asynchronously. Whether a batch holds any padding
is known from a per-example flag kept in host memory (NumPy), so the model can skip masking
for batches without padding and nothing reads a device tensor to find out.
"""
from __future__ import annotations

import numpy as np
import torch

BUDGET_CAP_BYTES = 2 * 2 ** 30
BUDGET_FRACTION_OF_FREE = 0.25


#: examples compared with the padding id at a time (a comparison makes a bool copy of what it reads)
FLAG_CHUNK = 4096


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


class DeviceSplit:
    """One split: tokens and labels placed for ``device``, and its per-example padding flags."""

    def __init__(self, split: dict, pad_id: int, device: torch.device, budget_bytes: int | None = None):
        tokens, labels = split["tokens"], split["labels"]
        self.device, self.n = device, labels.shape[0]
        self.has_padding = padding_flags(tokens, pad_id)
        budget = device_budget_bytes(device) if budget_bytes is None else budget_bytes
        self.resident = device.type == "cpu" or tokens.numel() * tokens.element_size() <= budget
        self.tokens = tokens.to(device) if self.resident else tokens
        self.labels = labels.to(device)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(tokens, labels, padded) of the examples ``idx`` (a CPU index tensor) on the device."""
        padded = bool(self.has_padding[idx.numpy()].any())
        if self.device.type == "cpu":
            return self.tokens[idx], self.labels[idx], padded
        dev_idx = idx.to(self.device, non_blocking=True)
        if self.resident:
            tokens = self.tokens.index_select(0, dev_idx)
        else:  # gathered in host memory, pinned, and copied while the GPU works
            tokens = self.tokens[idx].pin_memory().to(self.device, non_blocking=True)
        return tokens, self.labels.index_select(0, dev_idx), padded

    def slice(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Examples ``start:stop`` in order (evaluation)."""
        return self.batch(torch.arange(start, min(stop, self.n)))
