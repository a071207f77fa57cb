"""Scaling shape, as a ratio: peak memory of one forward+backward at 2N over N.

Each case runs in a fresh process (attnbench.harness.compare.probe) with glibc's mmap threshold
fixed (a live-memory run, repeatable): the peak resident memory of the first fwd+bwd step above the
memory before it, after one small priming step has paid torch's one-time set-up. Variants that
declare ``linear_memory`` must stay near 2; full attention forced onto SDPA's math kernel (which
materialises the N x N scores) is the contrast near 4.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from attnbench.harness.compare.probe import run_worker
from attnbench.variants import VARIANTS

LINEAR = [e.name for e in VARIANTS if e.cls.linear_memory]
N, CONTRAST_N = 4096, 2048
BASE = {"impl": "ours", "peer": None, "batch": 1, "heads": 4, "head_dim": 64, "threads": 1,
        "device": "cpu", "warmup": 1, "repeats": 1, "seed": 0, "prime_n": 256, "live_memory": True}
CASES = {(v, n): {"variant": v, "params": {}, "n": n} for v in LINEAR for n in (N, 2 * N)}
CASES |= {("full-math", n): {"variant": "full", "params": {}, "n": n, "sdpa_backend": "math"}
          for n in (CONTRAST_N, 2 * CONTRAST_N)}


@pytest.fixture(scope="module")
def peaks(tmp_path_factory):
    work = tmp_path_factory.mktemp("probe")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(run_worker, {**BASE, **spec}, 600, work) for key, spec in CASES.items()}
        results = {key: f.result() for key, f in futures.items()}
    for key, r in results.items():
        assert r["ok"], f"{key}: {r.get('error')}"
    return {key: r["peak_bytes"] for key, r in results.items()}


def ratio(peaks, name, n):
    return peaks[(name, 2 * n)] / peaks[(name, n)]


@pytest.mark.slow
def test_the_contrast_grows_quadratically(peaks):
    assert ratio(peaks, "full-math", CONTRAST_N) > 3.0


@pytest.mark.slow
@pytest.mark.parametrize("variant", LINEAR)
def test_linear_memory_variants_double_at_most(peaks, variant):
    r = ratio(peaks, variant, N)
    assert 1.2 < r < 2.6, f"{variant}: peak memory at {2 * N} is {r:.2f}x that at {N}"
    assert r < ratio(peaks, "full-math", CONTRAST_N) - 0.8


def test_the_variants_that_promise_linear_memory_are_checked():
    assert {"window", "sparse", "linear"} <= set(LINEAR)
