"""``attnbench compare``: our attention variants against public PyTorch implementations, side by side.

For each variant, every *peer* (the best public implementation of the same mechanism) is built
with the same model dim, heads, head dim, mechanism settings (window, blocks, chunks, buckets,
hashes, features), batch, sequence length N and dtype (float32), and fed the same inputs. Each
implementation is timed as a whole layer, projections included, forward + backward:

    y = layer(x, key_padding_mask); y.backward(grad_out)      # x, grad_out: (B, N, D), seeded

Peers that only implement the attention core get the same input/output projections as ours
(``nn.Linear``), so both sides do the same projection work. Peers are optional
(``pip install .[peers]``); a peer whose package is missing is reported as skipped.

Every implementation and N is measured in a fresh process (``attnbench.harness.compare.probe``: time = median
of the timed steps after warm-up; peak memory = the first step's peak above the memory before
it). The peers are the modules of ``attnbench.harness.compare.peers`` (``--list`` prints them). A case that
fails (peer error, out of memory, timeout) is recorded with its error text and the run goes on. Output: a
Markdown table on stdout and a JSON file (machine info and every case). With ``--device cuda`` or ``auto`` it
first leases one GPU of a workstation (``attnbench.harness.measure.gpu_lease``, as ``bench`` and ``train`` do)
and runs on CUDA's current device, the leased one.

The pieces: ``settings`` (the command line, read into ``CompareSettings``), ``cases`` (the plan, and each
case's ratios), ``results`` (one side measured), ``record`` (the JSON), ``table`` (the Markdown),
``listing`` (``--list``); this module runs the cases.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attnbench.harness.compare.cases import CaseResult, PlannedCase, finish_case, plan
from attnbench.harness.compare.listing import note_lines, peer_lines
from attnbench.harness.compare.probe import run_worker
from attnbench.harness.compare.record import CompareReport, write_report
from attnbench.harness.compare.registry import PEERS, Params, ordered_variants
from attnbench.harness.compare.results import SideResult, pool_rounds, with_live_memory
from attnbench.harness.compare.settings import CompareSettings, build_parser, settings_from_args
from attnbench.harness.compare.table import markdown_table
from attnbench.harness.core.errors import UsageError
from attnbench.harness.measure.gpu_lease import acquire
from attnbench.harness.measure.matmul_peak import probe_in_fresh_process
from attnbench.harness.results.environment import capture, distribution_version
from attnbench.harness.results.provenance import variant_origins

#: the memory run of a CPU case (``probe.LIVE_MEMORY_ENV``): two warm-up steps, one more, untimed
LIVE_RUN = {"live_memory": True, "warmup": 2, "repeats": 1}

Log = Callable[..., None]
#: reads a config (``--config``): its variants and their parameters, each registered (``main``)
ConfigReader = Callable[[str], dict[str, Params]]


def _progress(msg: str, end: str = "\n") -> None:
    print(msg, end=end, file=sys.stderr, flush=True)


def import_peer_modules(modules: tuple[str, ...] | list[str]) -> None:
    """Import each ``--peer-module``: its peers register themselves."""
    for mod in modules:
        importlib.import_module(mod)


def run_comparison(settings: CompareSettings, gpu_lease: dict[str, Any] | None = None,
                   quiet: bool = False) -> CompareReport:
    """Plan and run every case of ``settings``; returns the report, also written to ``settings.out``.
    ``gpu_lease``: the lease taken for this run (``lease_gpu``), recorded in the settings."""
    devices = _devices(settings.device)
    threads = settings.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    variants = list(settings.variants) if settings.variants else ordered_variants()
    import_peer_modules(settings.peer_modules)
    unknown = sorted(set(settings.peers or ()) - set(PEERS))
    if unknown:
        raise UsageError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    workdir = Path(tempfile.mkdtemp(prefix="attnbench-compare-"))  # the workers' result files
    cases, skipped = plan(variants, settings.peers, settings.shape, settings.n, settings.no_peers,
                          settings.overrides, alone=settings.config is not None)
    targets = {dev: _torch_device(dev) for dev in devices}  # "cuda" -> this process's (leased) GPU
    packages = {d: distribution_version(d) for d in PEERS.distributions()}
    machine = {dev: {**capture(torch.device(target)), "torch_threads": threads,
                     "gpu": torch.cuda.get_device_name(torch.cuda.current_device()) if torch.cuda.is_available()
                     else None,
                     "peer_packages": packages} for dev, target in targets.items()}
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    log: Log = (lambda msg, end="\n": None) if quiet else _progress
    log("matmul probe (the machine's rate every case reads against) ...")
    matmul_peak = {dev: probe_in_fresh_process(target, threads, ["float32"], workdir)["float32"]
                   for dev, target in targets.items()}
    report = CompareReport(created=created, settings=settings, threads=threads, devices=devices,
                           torch_devices=targets, gpu_lease=gpu_lease, machine=machine, matmul_peak=matmul_peak,
                           skipped=skipped, variant_origins=variant_origins(variants))
    for s in skipped:
        log(f"skip {s.variant}" + (f" vs {s.peer}" if s.peer else "") + f": {s.reason}")
    try:
        _run_cases(report, cases, workdir, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = dataclasses.replace(report, table=markdown_table(report))
    write_report(report, settings.out)
    return report


def _worker_spec(report: CompareReport, case: PlannedCase, target: str) -> dict[str, Any]:
    """What every worker of ``case`` on ``target`` is given (``probe.measure_in_process``'s spec)."""
    s = report.settings
    return {"variant": case.variant, "n": case.n, "batch": s.batch, "heads": s.heads, "head_dim": s.head_dim,
            "threads": report.threads, "device": target, "warmup": s.warmup, "repeats": s.repeats,
            "seed": s.seed, "peer_modules": list(s.peer_modules)}


def _run_cases(report: CompareReport, cases: list[PlannedCase], workdir: Path, log: Log) -> None:
    """Every case on every device, each appended to the report (and the file written) as it finishes."""
    s = report.settings
    measured: dict[tuple[str, str, int, str], SideResult] = {}  # ours with the same settings is measured once

    def run(spec: dict[str, Any]) -> SideResult:
        return SideResult.from_worker(run_worker(spec, s.timeout, workdir))

    for dev, target in report.torch_devices.items():
        for case in cases:
            base = _worker_spec(report, case, target)
            ours_spec = {"impl": "ours", "peer": case.peer, "params": case.ours_params}
            peer_spec = {"impl": "peer", "peer": case.peer, "params": case.peer_settings}
            what = f"{case.variant}" + (f" vs {case.peer}" if case.peer else "") + f" N={case.n} {dev}"
            key = (dev, *case.ours_key)
            shared = key in measured
            ours_runs, peer_runs = [], []
            for r in range(s.rounds):  # ours and the peer alternate, each round in fresh processes
                profile_dir = s.profile if r == s.rounds - 1 and s.profile else None
                log(f"{what}" + (f" round {r + 1}/{s.rounds}" if s.rounds > 1 else "") + ": ours ...", end="")
                if not shared:
                    ours_runs.append(run({**base, **ours_spec, "profile_dir": profile_dir}))
                if case.peer:
                    log(" peer ...", end="")
                    peer_runs.append(run({**base, **peer_spec, "profile_dir": profile_dir}))
                log("")
            live = dev == "cpu"  # on CUDA the allocator's own statistics are exact already
            if shared:
                ours = dataclasses.replace(measured[key], shared=True)
            else:
                ours = pool_rounds(ours_runs)
                if live:
                    log(f"{what}: live memory, ours ...")
                    ours = with_live_memory(ours, run({**base, **LIVE_RUN, **ours_spec}))
                measured[key] = ours
            peer = None
            if case.peer:
                peer = pool_rounds(peer_runs)
                if live:
                    log(f"{what}: live memory, peer ...")
                    peer = with_live_memory(peer, run({**base, **LIVE_RUN, **peer_spec}))
            result = finish_case(CaseResult(case, dev, ours, peer), report.matmul_peak[dev].get("gflops"))
            log(f"{what}: {result.status}")
            report.cases.append(result)
            write_report(report, s.out)  # a partial file survives an interrupted run


def _devices(choice: str) -> list[str]:
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise UsageError("--device cuda: no CUDA device is available")
    if choice == "auto":
        return ["cpu", "cuda"] if cuda else ["cpu"]
    return [choice]


def _torch_device(dev: str) -> str:
    """The torch device of "cpu" or "cuda": CUDA's current device, which after a GPU lease is the leased
    one (``CUDA_VISIBLE_DEVICES`` then lists it alone), never a hard-coded index."""
    return "cpu" if dev == "cpu" else f"cuda:{torch.cuda.current_device()}"


def lease_gpu(device: str) -> dict[str, Any] | None:
    """Lease one GPU of a workstation for this run (``--device cuda`` or ``auto``), before anything touches
    ``torch.cuda``: the lease sets ``CUDA_VISIBLE_DEVICES``, which CUDA reads once. None: no lease taken
    (a CPU run, SLURM, or no GPU); the workers inherit the lease's ``CUDA_VISIBLE_DEVICES``."""
    lease = acquire(device)
    if lease:
        _progress(f"gpu lease: device {lease['index']} (CUDA_VISIBLE_DEVICES={lease['cuda_visible_devices']})")
    return lease


def main(argv: list[str] | None = None, read_config: ConfigReader | None = None) -> int:
    """``attnbench compare``'s command line. ``read_config``: what ``--config`` is read with (the ``attnbench``
    command line gives it: validating a config and registering its ``from:`` variants is a layer above this
    one); it returns the config's variants and their parameters, registered for the workers too."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.list:
        import_peer_modules(args.peer_module or ())
        print("\n".join(peer_lines(PEERS.values())))
        print("\nWhat differs from ours:\n" + "\n".join(note_lines(PEERS.values())))
        return 0
    config_variants = None
    if args.config:
        if read_config is None:
            raise UsageError("--config is read by the attnbench command line: run `attnbench compare --config ...`")
        config_variants = read_config(args.config)
    settings = settings_from_args(args, config_variants)
    report = run_comparison(settings, lease_gpu(settings.device))
    print()
    print(report.table)
    print(f"\nwrote {settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
