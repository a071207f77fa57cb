"""A run that starts from another run's weights, its upstream run (a distilled student from its teacher,
``harness.run.distill``; a self-pretrained run from its pretraining, ``harness.run.self_pretrained``): reading
that run's record and checkpoint, with errors that name the file and how to make it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from attnbench.harness.results.records import RECORD_NAME, RecordError, RunKey, read_record


def upstream_record(folder: Path, want: RunKey, error: type[Exception], what: str, hint: str,
                    expected: str) -> tuple[dict[str, Any], Path | None]:
    """The record in ``folder`` of the run ``want`` and its best checkpoint (None: it has none). ``error`` is
    raised, naming the file, when the record is missing, cannot be read or is another run's (``expected``
    says whose it should be); ``what`` names the run in messages ("teacher"), ``hint`` how to make it."""
    record_path = Path(folder) / RECORD_NAME
    if not record_path.exists():
        raise error(f"{what} record {record_path} not found; {hint}")
    try:
        record = read_record(record_path)
    except RecordError as exc:
        raise error(f"{exc}\n{hint}") from exc
    if RunKey.of_record(record) != want:
        raise error(f"{record_path} is the record of {record['run_id']}, not of {expected}; {hint}")
    best = record["training"]["checkpoint"]
    return record, (Path(folder) / best if best else None)


def relative(path: Path, out_dir: Path) -> str:
    """``path`` relative to the run folder ``out_dir`` (as a record names the files of another run)."""
    return os.path.relpath(Path(path).absolute(), Path(out_dir).absolute())


def load_checkpoint(path: Path, error: type[Exception], what: str, again: str) -> dict[str, Any]:
    """A run's saved checkpoint (``{"model", "step", "run"}``, on the CPU); one that is missing, truncated or no
    torch file is ``error``, naming it and what to do (``again``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # missing, truncated, not a torch file
        raise error(f"{what} checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); {again}") from None
