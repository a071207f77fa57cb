"""The report of an ``attnbench compare`` run (``CompareReport``): the JSON it writes, case by case as the
run goes (a partial file survives an interrupted run), and the Markdown table at the end."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from attnbench.harness.compare.cases import CaseResult, Skip
from attnbench.harness.compare.settings import CompareSettings, describe
from attnbench.harness.core.io import atomic_write_json


@dataclasses.dataclass(frozen=True)
class CompareReport:
    """Everything a run records: its settings and the facts they resolved to (threads, devices, the GPU
    lease), each device's machine facts and matmul rate, the skipped variants and peers, where the variants
    from outside this repository came from, the cases measured so far (``cases`` grows as the run goes)
    and, once done, the Markdown table."""

    created: str
    settings: CompareSettings
    threads: int
    devices: list[str]
    torch_devices: dict[str, str]  # "cpu"/"cuda" -> the torch device the workers use
    gpu_lease: dict[str, Any] | None
    machine: dict[str, dict[str, Any]]
    matmul_peak: dict[str, dict[str, Any]]  # device -> the matmul probe's result
    skipped: list[Skip]
    #: variant -> where a variant from outside this repository came from (``results.provenance.variant_origin``)
    variant_origins: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    cases: list[CaseResult] = dataclasses.field(default_factory=list)
    table: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"kind": "attnbench compare", "created": self.created,
               "settings": describe(self.settings, self.threads, self.devices, self.torch_devices, self.gpu_lease),
               "machine": self.machine, "skipped": [s.to_json() for s in self.skipped],
               "cases": [c.to_json() for c in self.cases], "matmul_peak": self.matmul_peak,
               "variant_origins": self.variant_origins}
        if self.table is not None:
            out["table"] = self.table
        return out


def write_report(report: CompareReport, path: Path) -> None:
    atomic_write_json(path, report.to_json())
