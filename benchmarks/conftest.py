"""pytest-benchmark glue for the efficiency sweep.

The cases come from a sweep file (``--attnbench-sweep``) that ``attnbench bench`` writes from
the pipeline config (a plan without cases is expanded here, for this machine's device); without
one, the default config's cases for every variant are used (a long run: pass ``-k`` to pick some).
Every case's result row, failures included, is added to pytest-benchmark's JSON under
``"attnbench"``; machine facts go into its ``machine_info``, with the machine's matmul rate per dtype
(``matmul_peak``: measured once per sweep in a fresh process, before the first case) that each row's
``peak_share`` reads against.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnbench.harness.bench.settings import BenchConfig, Case
from attnbench.harness.bench.sweep import SweepEnv

ROWS = pytest.StashKey[list]()
SWEEP = pytest.StashKey[dict]()
MATMUL_PEAKS = pytest.StashKey[dict]()


def pytest_addoption(parser):
    parser.addoption("--attnbench-sweep", help="sweep file written by `attnbench bench` (settings and cases)")
    parser.addoption("--attnbench-rows", help="also write every case's row (and the machine facts) here as JSON, "
                     "in the layout of pytest-benchmark's file: written even when no case could be timed, when "
                     "pytest-benchmark saves nothing")


def _load_sweep(config) -> dict:
    """The sweep to run: the file given (a plan without cases is expanded here, for this machine's
    device), else every variant's cases of the default config."""
    import os

    from attnbench.harness.bench.files import expand_sweep, sweep_file

    cores = len(os.sched_getaffinity(0))  # every core this process may use
    path = config.getoption("--attnbench-sweep")
    if path:
        sweep = json.loads(Path(path).read_text())
        return sweep if "cases" in sweep and sweep["device"] != "auto" else expand_sweep(sweep, cores)
    from attnbench.harness.bench.settings import bench_variants
    from attnbench.harness.config import load_config

    cfg = load_config()
    sweeps = [sweep_file(cfg, v, cores, Path("results/bench/.work")) for v in bench_variants(cfg)]
    return {**sweeps[0], "cases": [c for s in sweeps for c in s["cases"]]}


def pytest_configure(config):
    # a case that fails (OOM, timeout, unavailable) is a result without timings, not a misuse of the fixture
    config.addinivalue_line("filterwarnings", "ignore:Benchmark fixture was not used")
    config.stash[SWEEP] = _load_sweep(config)
    config.stash[ROWS] = []


def pytest_generate_tests(metafunc):
    """(round, case) pairs, round-major: every case once, then every case again (``bench.rounds``)."""
    if "case" in metafunc.fixturenames:
        sweep = metafunc.config.stash[SWEEP]
        cases = [Case(**c) for c in sweep["cases"]]
        rounds = int(sweep["settings"].get("rounds", 1))
        pairs = [(r, c) for r in range(rounds) for c in cases]
        ids = [c.id if rounds == 1 else f"round{r}-{c.id}" for r, c in pairs]
        metafunc.parametrize(("round_index", "case"), pairs, ids=ids)


@pytest.fixture(scope="session")
def probes() -> dict:
    """Each case's fresh-process probe (memory, FLOPs, status), from its first round."""
    return {}


@pytest.fixture(scope="session")
def sweep_env(pytestconfig) -> SweepEnv:
    from attnbench.harness.core.registry import build_dataclass

    sweep = pytestconfig.stash[SWEEP]
    return SweepEnv(build_dataclass(BenchConfig, sweep["settings"], "bench"), sweep["device"],
                    int(sweep["threads"]), Path(sweep["workdir"]))


@pytest.fixture(scope="session")
def matmul_peaks(pytestconfig, sweep_env) -> dict:
    """The machine's matmul rate per dtype of the sweep's cases (``probe_matmul``), measured once."""
    from attnbench.harness.bench.sweep import probe_matmul

    peaks = probe_matmul(sweep_env, {c["dtype"] for c in pytestconfig.stash[SWEEP]["cases"]})
    pytestconfig.stash[MATMUL_PEAKS] = peaks
    return peaks


@pytest.fixture
def rows(pytestconfig) -> list:
    return pytestconfig.stash[ROWS]


def pytest_benchmark_update_machine_info(config, machine_info):
    from attnbench.harness.results.environment import bench_machine

    machine_info["attnbench"] = bench_machine(config.stash[SWEEP]["device"], int(config.stash[SWEEP]["threads"]))
    machine_info["attnbench"]["matmul_peak"] = config.stash.get(MATMUL_PEAKS, {})


def _attnbench_section(config) -> dict:
    return {"schema_version": 1, "sweep": config.stash[SWEEP], "rows": config.stash[ROWS]}


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["attnbench"] = _attnbench_section(config)


def pytest_sessionfinish(session, exitstatus):
    """The rows of every case, failures included, whether or not pytest-benchmark timed any: a
    sweep whose every case is oom or unavailable is a result too."""
    path = session.config.getoption("--attnbench-rows")
    if not path:
        return
    from attnbench.harness.results.environment import bench_machine

    sweep = session.config.stash[SWEEP]
    machine = {**bench_machine(sweep["device"], int(sweep["threads"])),
               "matmul_peak": session.config.stash.get(MATMUL_PEAKS, {})}
    data = {"machine_info": {"attnbench": machine}, "benchmarks": [],
            "attnbench": _attnbench_section(session.config)}
    Path(path).write_text(json.dumps(data, default=str))
