"""Shared helpers for the unit tests: a tiny pipeline config and torch global-state hygiene."""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

# a test variant that needs max_len, added as one file (tests/length_projected.py): registered here,
# so the registry-wide tests cover it in every test module
importlib.import_module("length_projected")

REPO = Path(__file__).resolve().parent.parent


def load_script(name: str):
    """A script of scripts/ as a module (it is no package), with scripts/ on sys.path as when Python runs one
    (the scripts import their sibling modules)."""
    if str(REPO / "scripts") not in sys.path:
        sys.path.append(str(REPO / "scripts"))
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# Small enough that preparing the data and training take well under a second.
TINY_CONFIG = {
    "seeds": [0],
    "variants": {"full": {}},
    "tasks": {"listops": {"data": {"n_train": 200, "n_val": 50, "n_test": 50,
                                   "min_length": 0, "max_length": 24, "max_depth": 3}}},
    "model": {"layers": 1, "dim": 16, "heads": 2, "mlp_dim": 32},
    "train": {"steps": 10, "eval_every": 5, "batch_size": 16, "eval_batch_size": 64, "warmup_steps": 2},
}


@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    """Nothing downloads: offline mode on, and the Hugging Face caches empty folders in tmp_path."""
    import datasets
    import huggingface_hub.constants as hub_constants

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # `datasets` and `huggingface_hub` read these at import time, which may have happened in an earlier test
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def tiny_config(**override) -> dict:
    """A fresh copy of ``TINY_CONFIG`` with sections deep-merged from ``override``."""
    from attnbench.harness.config.extends import merged

    return merged(TINY_CONFIG, override)


def tiny_run(seed: int = 0, **override) -> dict:
    """The resolved run config of the tiny listops/full run."""
    from attnbench.harness.config import resolve_run, validate_config

    return resolve_run(validate_config(tiny_config(**override)), "listops", "full", seed)


def assert_padding_invariant(layer, x, junk_seed: int, pads=(1, 9), lengths=None) -> None:
    """What the conformance checks assert with a variant's test parameters, for a layer built with
    others: appended padding (junk values) leaves the real outputs unchanged, and in a ragged batch
    each element's real outputs equal running it alone (float64, to 1e-10)."""
    from attnbench.harness.conformance.checks import lengths_mask, randn

    batch, n, dim = x.shape
    lengths = lengths or (n, 4, 11)
    with torch.no_grad():
        ref = layer(x)
        for pad in pads:
            xp = torch.cat([x, randn(batch, pad, dim, seed=junk_seed) * 100], dim=1)
            out = layer(xp, lengths_mask([n] * batch, n + pad))
            torch.testing.assert_close(out[:, :n], ref, rtol=0, atol=1e-10)
        out = layer(x, lengths_mask(lengths, n))
        for b, length in enumerate(lengths):
            torch.testing.assert_close(out[b:b + 1, :length], layer(x[b:b + 1, :length]), rtol=0, atol=1e-10)


def largest_saved_tensor(attend, q, k, v, mask) -> int:
    """The element count of the largest tensor ``attend(q, k, v, mask)`` keeps for its backward pass:
    how the memory of a variant's attention grows, measured without timing or RSS."""
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t.numel()) or t, lambda t: t):
        attend(q.requires_grad_(), k, v, mask)
    return max(seen)


@contextlib.contextmanager
def torch_state_restored():
    """``train_run`` sets torch's thread count and deterministic mode process-wide."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(autouse=True)
def _restore_torch_state():
    with torch_state_restored():
        yield


@pytest.fixture(autouse=True)
def _restore_variant_registry(monkeypatch):
    """What a test registers from outside the package (its own `ownattn` module, a config's `from:`
    entries) and what validation exports for child processes (ATTNBENCH_VARIANTS) end with the test:
    a later test's validation would otherwise export a module only that test could import, and the
    jobs it starts would fail to load it."""
    from attnbench.variants import VARIANTS

    VARIANTS.names()  # loaded: the snapshot holds every built-in variant
    entries, sources = dict(VARIANTS._entries), dict(VARIANTS._sources)
    monkeypatch.setenv("ATTNBENCH_VARIANTS", os.environ.get("ATTNBENCH_VARIANTS", ""))
    yield
    VARIANTS._entries.clear()
    VARIANTS._entries.update(entries)
    VARIANTS._sources.clear()
    VARIANTS._sources.update(sources)


@pytest.fixture(scope="session")
def tiny_listops_data(tmp_path_factory):
    """PreparedData of the tiny listops config (generated once per session)."""
    from attnbench.tasks.base import build_task

    run = tiny_run()
    return build_task("listops", run["task"]["data"]).prepare(tmp_path_factory.mktemp("tiny_listops"))


def stop_process(proc, timeout: float = 30) -> None:
    """Kill a helper subprocess started with piped stdout and stderr (if it still runs), wait for it and
    close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=timeout)
    proc.stdout.close()
    proc.stderr.close()
