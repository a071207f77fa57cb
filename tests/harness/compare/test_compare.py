"""``attnbench compare``: the measurement in subprocesses, failures and skips, the peer registry and
``--list``. The peer adapters themselves: tests/harness/compare/test_compare_peers.py."""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pkgutil
import sys
import textwrap

import pytest
import torch

from attnbench.harness.cli import main as cli_main
from attnbench.harness.compare import command as compare
from attnbench.harness.compare import probe
from attnbench.harness.compare.cases import CaseResult, PlannedCase, finish_case, plan
from attnbench.harness.compare.command import main
from attnbench.harness.compare.registry import (
    PEERS,
    VARIANT_ORDER,
    Peer,
    Shape,
    ordered_variants,
    register_peer,
    variant_defaults,
)
from attnbench.harness.compare.results import SideResult, pool_rounds, with_live_memory
from attnbench.harness.compare.settings import build_parser, parse_settings
from attnbench.harness.core.errors import UsageError
from attnbench.harness.results.environment import distribution_version
from attnbench.variants import VARIANTS, build_attention


def _run(tmp_path, *args, capsys=None):
    out = tmp_path / "compare.json"
    assert main(["--device", "cpu", "--threads", "1", "--out", str(out), *args]) == 0
    return json.loads(out.read_text()), (capsys.readouterr().out if capsys else None)


def _row(table: str, *needles: str) -> list[str]:
    rows = [r for r in table.splitlines() if r.startswith("|") and all(x in r for x in needles)]
    assert len(rows) == 1, f"expected one row with {needles} in:\n{table}"
    return [c.strip() for c in rows[0].strip("|").split("|")]


# --- the run: subprocesses, table, JSON ------------------------------------------------------------

@pytest.mark.slow
def test_tiny_full_vs_torch_mha_in_subprocesses(tmp_path, capsys):
    report, stdout = _run(tmp_path, "--n", "64", "--repeats", "2", "--warmup", "1",
                          "--variants", "full", "--peers", "torch-mha", capsys=capsys)
    # machine info
    info = report["machine"]["cpu"]
    assert info["torch"] == torch.__version__ and info["cpu_model"] and info["torch_threads"] == 1
    assert tuple(info["peer_packages"]) == PEERS.distributions()
    assert report["settings"]["n"] == [64] and report["settings"]["repeats"] == 2
    # one case, both sides measured in their own processes
    (case,) = report["cases"]
    assert case["variant"] == "full" and case["peer"] == "torch-mha" and case["status"] == "ok"
    for side in (case["ours"], case["peer_result"]):
        assert side["ok"], side
        assert len(side["times_s"]) == 2 and all(t > 0 for t in side["times_s"])
        assert side["min_s"] <= side["median_s"] <= side["max_s"]
        assert 0 < side["peak_bytes"] <= side["peak_all_bytes"] and side["threads"] == 1
        assert side["process_wall_s"] > 0
    assert case["ours"]["label"] == "attnbench full"
    assert "MultiheadAttention" in case["peer_result"]["label"]
    assert case["time_ratio"] == pytest.approx(case["ours"]["median_s"] / case["peer_result"]["median_s"])
    assert case["speedup"] == pytest.approx(1 / case["time_ratio"])
    assert case["memory_ratio"] == pytest.approx(case["ours"]["peak_bytes"] / case["peer_result"]["peak_bytes"])
    assert case["memory_all_ratio"] == pytest.approx(case["ours"]["peak_all_bytes"]
                                                     / case["peer_result"]["peak_all_bytes"])
    # the printed Markdown table has the row, with positive times and memory
    cells = _row(stdout, "| full |", "MultiheadAttention")
    assert cells[3] == "64" and cells[4] == "cpu"
    for col in (5, 6):  # "median (min-max)"
        assert float(cells[col].split()[0]) > 0
    assert float(cells[7]) > 0
    for col in (8, 9, 10):  # "first step / all steps"
        first, every = (float(v) for v in cells[col].split(" / "))
        assert first > 0 and every > 0
    assert float(cells[8].split(" / ")[0]) == pytest.approx(case["ours"]["peak_bytes"] / 2 ** 20, abs=0.05)
    # the machine's matmul rate, and each side's share of it from our layer's FLOPs
    peak = report["matmul_peak"]["cpu"]
    assert peak["gflops"] > 0 and peak["threads"] == 1 and peak["dtype"] == "float32"
    flops = case["ours"]["flops_fwd"]
    assert flops == build_attention("full", 256, 4, {}, max_len=64).flops(1, 64)
    for side in (case["ours"], case["peer_result"]):
        assert side["gflops"] == pytest.approx(3 * flops / side["median_s"] / 1e9)
        assert side["peak_share"] == pytest.approx(side["gflops"] / peak["gflops"])
    assert cells[11] == f"{100 * case['ours']['peak_share']:.0f}% / {100 * case['peer_result']['peak_share']:.0f}%"
    assert report["table"] in stdout


BROKEN_PEER_MODULE = '''
from attnbench.harness.compare.registry import Peer, register_peer

def _build(shape, settings):
    raise RuntimeError("deliberately broken peer: " + settings["why"])

register_peer(Peer(name="broken", variant="full", title="a peer that raises", requires=(),
                   distributions=(), match=lambda s, d: ({}, {"why": "no kernel"}), build=_build))
'''


@pytest.mark.slow
def test_failing_peer_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch, capsys, request):
    (tmp_path / "broken_peer_mod.py").write_text(textwrap.dedent(BROKEN_PEER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))  # this process, and the workers through PYTHONPATH
    monkeypatch.setenv("PYTHONPATH", ":".join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    request.addfinalizer(lambda: PEERS.unregister("broken"))  # the registration is undone afterwards
    monkeypatch.delitem(sys.modules, "broken_peer_mod", raising=False)
    report, stdout = _run(tmp_path, "--n", "32", "--repeats", "1", "--warmup", "1", "--variants", "full",
                          "--peers", "broken,torch-mha", "--peer-module", "broken_peer_mod", capsys=capsys)
    sys.modules.pop("broken_peer_mod", None)
    broken, mha = report["cases"]
    assert broken["peer"] == "broken" and not broken["peer_result"]["ok"]
    assert "deliberately broken peer: no kernel" in broken["peer_result"]["error"]
    assert broken["status"].startswith("failed (peer): RuntimeError")
    assert broken["ours"]["ok"] and broken["time_ratio"] is None
    # the next case still ran, and reused the measurement of ours (same settings)
    assert mha["peer"] == "torch-mha" and mha["status"] == "ok" and mha["peer_result"]["ok"]
    assert mha["ours"]["shared"] and mha["ours"]["median_s"] == broken["ours"]["median_s"]
    assert "deliberately broken peer" in _row(stdout, "a peer that raises")[-1]


@pytest.mark.slow
def test_peer_not_installed_is_skipped(tmp_path, monkeypatch, capsys):
    # a missing package: importing it raises ImportError
    for mod in ("transformers", "local_attention"):
        monkeypatch.setitem(sys.modules, mod, None)
    report, stdout = _run(tmp_path, "--n", "64", "--variants", "window", capsys=capsys)
    assert report["cases"] == []
    skipped = {s["peer"]: s for s in report["skipped"]}
    assert set(skipped) == {"hf-longformer", "local-attention"}
    assert all("not installed" in s["reason"] for s in skipped.values())
    assert "skipped: not installed" in _row(stdout, "LongformerSelfAttention")[-1]


def test_unregistered_variant_is_skipped_with_a_note(tmp_path):
    cases, skipped = plan(["full", "no_such_variant"], ["torch-mha"], lambda n: Shape(n), [64])
    assert [c.variant for c in cases] == ["full"]
    assert skipped[0].variant == "no_such_variant" and "not registered" in skipped[0].reason


def test_no_peers_measures_each_distinct_configuration_once():
    cases, skipped = plan(["window", "full"], None, lambda n: Shape(n), [64, 128], no_peers=True)
    keys = [(c.variant, c.n, json.dumps(c.ours_params, sort_keys=True)) for c in cases]
    assert len(keys) == len(set(keys)) and all(c.peer is None for c in cases)
    assert {(c.variant, c.n) for c in cases} >= {("window", 64), ("full", 128)}


def test_set_replaces_our_default_on_both_sides():
    settings = parse_settings(["window.window=256", "window.global_tokens=[0]", "lsh.n_hashes=1"])
    assert settings == {"window": {"window": 256, "global_tokens": [0]}, "lsh": {"n_hashes": 1}}
    # no_peers: planned without the peer packages (CI has none installed)
    cases, _ = plan(["window"], None, lambda n: Shape(n), [64], no_peers=True, settings=settings)
    assert cases and all(c.ours_params["window"] == 256 for c in cases)
    ours, theirs = PEERS["hf-longformer"].match(Shape(64), {**variant_defaults("window"), **settings["window"]})
    assert ours["window"] == 256 and theirs["attention_window"] == 512  # HF's total width: 2 x 256
    for bad, why in (("window=256", "VARIANT.PARAM=VALUE"), ("nope.window=1", "unknown variant"),
                     ("window.width=1", "has no parameter 'width'")):
        with pytest.raises(UsageError, match=why):
            parse_settings([bad])


@pytest.mark.slow
def test_live_memory_runs_repeat_where_the_default_allocator_need_not(tmp_path):
    """A live-memory run has glibc's mmap threshold fixed: its worker says so, and two fresh
    processes give the same peak (the default's peaks may differ by 10-20 %)."""
    spec = {"impl": "ours", "variant": "linear", "peer": None, "params": {}, "n": 2048, "batch": 1, "heads": 4,
            "head_dim": 64, "threads": 1, "device": "cpu", "warmup": 2, "repeats": 1, "seed": 0}
    live = [probe.run_worker({**spec, "live_memory": True}, 300, tmp_path) for _ in range(2)]
    assert all(r["ok"] and r["malloc_mmap_threshold"] == "131072" for r in live)
    a, b = (r["peak_bytes"] for r in live)
    assert abs(a - b) <= 0.01 * max(a, b) + 2**20, (a, b)
    assert probe.run_worker(spec, 300, tmp_path)["malloc_mmap_threshold"] is None


def test_live_memory_replaces_the_memory_figures_and_keeps_the_default_beside():
    timing = SideResult.from_worker({"ok": True, "peak_bytes": 100, "peak_all_bytes": 150})
    side = with_live_memory(timing, SideResult.from_worker({"ok": True, "peak_bytes": 80, "peak_all_bytes": 85}))
    assert (side.peak_bytes, side.peak_all_bytes) == (80, 85)
    assert (side.peak_bytes_default_malloc, side.peak_all_bytes_default_malloc) == (100, 150)
    assert "mmap threshold fixed" in side.memory_method
    assert side.to_json() == {"ok": True, "peak_bytes": 80, "peak_all_bytes": 85, "peak_bytes_default_malloc": 100,
                              "peak_all_bytes_default_malloc": 150, "memory_method": side.memory_method}
    side = with_live_memory(timing, SideResult.from_worker({"ok": False, "error": "timed out"}))
    assert side.peak_bytes == 100 and "live-memory run failed: timed out" in side.memory_method


def test_worker_timeout_is_recorded(tmp_path):
    spec = {"impl": "ours", "variant": "full", "peer": None, "params": {}, "n": 16, "batch": 1, "heads": 2,
            "head_dim": 8, "threads": 1, "device": "cpu", "warmup": 1, "repeats": 1, "seed": 0}
    result = probe.run_worker(spec, timeout_s=0.05, workdir=tmp_path)
    assert not result["ok"] and "timed out" in result["error"]


def _case(ours: dict, peer: dict) -> CaseResult:
    return CaseResult(PlannedCase("full", "x", 64, {}, {}), "cpu", SideResult.from_worker(ours),
                      SideResult.from_worker(peer))


def test_ratios_and_goal():
    case = finish_case(_case({"ok": True, "median_s": 1.0, "peak_bytes": 100, "peak_all_bytes": 100},
                             {"ok": True, "median_s": 2.0, "peak_bytes": 50, "peak_all_bytes": 200}))
    assert case.time_ratio == 0.5 and case.speedup == 2.0
    assert case.memory_ratio == 2.0 and case.memory_all_ratio == 0.5
    assert case.goal_met is False
    case = finish_case(_case({"ok": True, "median_s": 1.0, "peak_bytes": 40, "peak_all_bytes": 300},
                             {"ok": True, "median_s": 2.0, "peak_bytes": 50, "peak_all_bytes": 200}))
    assert case.goal_met is False  # leaner in one step but not across the loop: not met


def test_rounds_pool_the_timed_steps_and_take_the_median_peak():
    runs = [{"ok": True, "times_s": [1.0, 3.0], "median_s": 2.0, "peak_bytes": 10, "peak_all_bytes": 15,
             "process_wall_s": 1.0},
            {"ok": True, "times_s": [2.0, 4.0], "median_s": 3.0, "peak_bytes": 30, "peak_all_bytes": 40,
             "process_wall_s": 1.0},
            {"ok": True, "times_s": [5.0], "median_s": 5.0, "peak_bytes": 20, "peak_all_bytes": 90,
             "process_wall_s": 1.0}]
    runs = [SideResult.from_worker(r) for r in runs]
    out = pool_rounds(runs).to_json()
    assert out["times_s"] == [1.0, 3.0, 2.0, 4.0, 5.0] and out["median_s"] == 3.0
    assert (out["min_s"], out["max_s"], out["peak_bytes"], out["peak_all_bytes"]) == (1.0, 5.0, 20, 40)
    assert len(out["rounds"]) == 3
    failed = SideResult.from_worker({"ok": False, "error": "boom"})
    assert pool_rounds([runs[0], failed]) is failed


# --- on CUDA: a GPU lease first, then the leased (current) device ---------------------------------

@pytest.fixture
def fake_cuda(monkeypatch, tmp_path):
    """torch.cuda faked present (its first query records CUDA_VISIBLE_DEVICES), the workers stubbed
    (they record the device they are given), a workstation of 2 GPUs (ATTNBENCH_GPUS)."""
    from attnbench.harness.measure import gpu_lease

    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "ATTNBENCH_GPU_LEASE_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ATTNBENCH_GPUS", "2")
    monkeypatch.setenv("ATTNBENCH_LOCK_DIR", str(tmp_path / "locks"))
    seen = {"visible": [], "devices": [], "current": 0}

    def is_available():
        seen["visible"].append(os.environ.get("CUDA_VISIBLE_DEVICES"))
        return True

    def worker(spec, timeout_s, workdir):
        seen["devices"].append(spec["device"])
        return {"ok": True, "label": "stub", "times_s": [0.1], "median_s": 0.1, "min_s": 0.1, "max_s": 0.1,
                "peak_bytes": 1, "peak_all_bytes": 1, "process_wall_s": 0.1}

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: seen["current"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: f"fake GPU {index}")
    monkeypatch.setattr(compare, "capture", lambda device: {"device": str(device)})
    monkeypatch.setattr(compare, "run_worker", worker)
    monkeypatch.setattr(compare, "probe_in_fresh_process", lambda device, threads, dtypes, workdir: {
        d: {"gflops": 1000.0, "device": device} for d in dtypes})
    yield seen
    gpu_lease.release()


def test_compare_on_cuda_leases_a_gpu_before_touching_cuda_and_runs_on_it(tmp_path, fake_cuda):
    report, _ = _run_cuda(tmp_path)
    assert fake_cuda["visible"][0] == "0"  # the lease set CUDA_VISIBLE_DEVICES before torch was asked
    assert report["settings"]["gpu_lease"]["cuda_visible_devices"] == "0"
    assert report["settings"]["torch_devices"] == {"cuda": "cuda:0"}
    assert fake_cuda["devices"] == ["cuda:0"] and report["machine"]["cuda"]["gpu"] == "fake GPU 0"


def test_compare_uses_the_current_device_not_a_fixed_index(tmp_path, monkeypatch, fake_cuda):
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # SLURM pins the device: no lease
    fake_cuda["current"] = 1
    report, _ = _run_cuda(tmp_path)
    assert report["settings"]["gpu_lease"] is None
    assert fake_cuda["devices"] == ["cuda:1"] and report["machine"]["cuda"]["device"] == "cuda:1"


def _run_cuda(tmp_path):
    out = tmp_path / "compare.json"
    assert main(["--device", "cuda", "--threads", "1", "--no-peers", "--variants", "full", "--n", "16",
                 "--repeats", "1", "--out", str(out)]) == 0
    return json.loads(out.read_text()), None



# --- the peer registry and --list ----------------------------------------------------------------

MADE_UP_PEER_MODULE = '''
from attnbench.harness.compare.registry import Peer, register_peer

register_peer(Peer(name="made-up", variant="full", title="a peer of a package nobody installed",
                   requires=("no_such_module_xyz",), distributions=("no-such-distribution-xyz",),
                   match=lambda s, d: ({}, {}), build=lambda s, p: None))
'''


def _extra_peer(name: str, **fields) -> Peer:
    return Peer(**{"name": name, "variant": "full", "title": f"test peer {name}", "requires": (),
                   "distributions": (), "match": lambda s, d: ({}, {}), "build": lambda s, p: None, **fields})


def test_list_names_every_peer_and_whether_its_packages_are_installed(tmp_path, monkeypatch, capsys, request):
    (tmp_path / "made_up_peer_mod.py").write_text(textwrap.dedent(MADE_UP_PEER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "made_up_peer_mod", raising=False)
    request.addfinalizer(lambda: (PEERS.unregister("made-up"), sys.modules.pop("made_up_peer_mod", None)))
    assert cli_main(["compare", "--list", "--peer-module", "made_up_peer_mod"]) == 0  # through `attnbench`
    table, notes = capsys.readouterr().out.split("\n\nWhat differs from ours:\n")
    header, *lines = table.splitlines()
    assert header.split()[:3] == ["variant", "peer", "packages"]
    rows = {line.split()[1]: line for line in lines}
    assert list(rows) == list(PEERS) and "made-up" in rows  # one line each, in the registry's order
    for name, line in rows.items():
        peer = PEERS[name]
        assert line.split()[0] == peer.variant and peer.title in line
        for dist in peer.distributions:
            version = distribution_version(dist)
            assert (f"{dist} {version}" if version else f"{dist} (missing)") in line
    assert "no-such-distribution-xyz (missing)" in rows["made-up"]
    assert f"torch {torch.__version__}" in rows["torch-mha"] and "missing" not in rows["torch-mha"]
    noted = {line.split(":")[0]: line for line in notes.splitlines()}
    assert set(noted) == {name for name, peer in PEERS.items() if peer.note.strip()} and "made-up" not in noted
    assert " ".join(PEERS["nystrom-attention"].note.split()) in noted["nystrom-attention"]


def test_every_module_of_the_peers_package_is_found_without_being_listed():
    """The registry imports each module of ``compare/peers/`` by itself (pkgutil): every module there
    registers the peers of the variant it is named after, and nothing else names the modules."""
    from attnbench.harness.compare import peers as package

    modules = {m.name for m in pkgutil.iter_modules(package.__path__)}
    origin = {p.name: p.build.__module__ for p in PEERS.values()}
    assert {o.rpartition(".")[2] for o in origin.values()} == modules
    assert all(o == f"{package.__name__}.{PEERS[name].variant}" for name, o in origin.items())


def test_a_module_dropped_into_a_peer_package_registers_itself(tmp_path, monkeypatch, request):
    pkg = tmp_path / "dropped_peers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from attnbench.harness.compare.registry import PeerRegistry\n"
                                     "REGISTRY = PeerRegistry(__name__)\n")
    (pkg / "mine.py").write_text("from attnbench.harness.compare.registry import Peer\n"
                                 "from dropped_peers import REGISTRY\n"
                                 "REGISTRY.register(Peer(name='mine', variant='full', title='mine', requires=(), "
                                 "distributions=('mine-dist',), match=lambda s, d: ({}, {}), "
                                 "build=lambda s, p: None))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    request.addfinalizer(lambda: [sys.modules.pop(m, None) for m in ("dropped_peers", "dropped_peers.mine")])
    registry = importlib.import_module("dropped_peers").REGISTRY
    assert list(registry) == ["mine"] and registry.distributions() == ("mine-dist", "einops")


def test_a_second_peer_under_a_taken_name_is_an_error():
    mha = PEERS["torch-mha"]
    assert register_peer(mha) is mha  # the same peer again: nothing changes
    with pytest.raises(ValueError, match="'torch-mha' is registered twice"):
        register_peer(_extra_peer("torch-mha"))
    with pytest.raises(ValueError, match="registered twice"):
        register_peer(dataclasses.replace(mha, title="another"))
    assert PEERS["torch-mha"] is mha


def test_what_lists_peers_derives_from_the_registry(tmp_path, request):
    before = PEERS.distributions()
    assert set(before) == {d for p in PEERS.values() for d in p.distributions} - {"torch"} | {"einops"}
    register_peer(_extra_peer("extra-full", distributions=("extra-dist",)))
    request.addfinalizer(lambda: PEERS.unregister("extra-full"))
    assert PEERS.distributions() == (*before[:-1], "extra-dist", "einops")  # the JSON's peer_packages
    assert [p.name for p in PEERS.of_variant("full")] == ["torch-mha", "torch-sdpa", "extra-full"]
    cases, _ = plan(["full"], None, lambda n: Shape(n), [64])
    assert [c.peer for c in cases] == ["torch-mha", "torch-sdpa", "extra-full"]
    assert cases[-1].peer_versions == {"extra-dist": None}
    assert "extra-full" in " ".join(build_parser().format_help().split())
    # the variants in VARIANT_ORDER, the peers in their variants' order
    registered = [v for v in VARIANT_ORDER if v in VARIANTS.names()]
    assert ordered_variants()[:len(registered)] == registered
    ranks = [VARIANT_ORDER.index(PEERS[name].variant) for name in PEERS]
    assert ranks == sorted(ranks)
