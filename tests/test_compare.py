"""``attnbench compare``: the measurement in subprocesses, failures and skips, and the peer adapters.

Peers are an optional extra: tests that use a real peer package skip when it is not installed.
The numerical tests copy our weights into a peer that supports an exactly equivalent configuration
and check that both compute the same function (float64).
"""
from __future__ import annotations

import json
import math
import os
import sys
import textwrap

import pytest
import torch

from attnbench.harness.compare import command as compare
from attnbench.harness.compare import peers, probe
from attnbench.harness.compare.command import main
from attnbench.harness.compare.peers import PEERS, Shape
from attnbench.variants import build_attention

#: the longest input these tests build layers for (the variants here do not use it)
MAX_LEN = 4096

DIM, HEADS = 32, 4


def _run(tmp_path, *args, capsys=None):
    out = tmp_path / "compare.json"
    assert main(["--device", "cpu", "--threads", "1", "--out", str(out), *args]) == 0
    return json.loads(out.read_text()), (capsys.readouterr().out if capsys else None)


def _row(table: str, *needles: str) -> list[str]:
    rows = [r for r in table.splitlines() if r.startswith("|") and all(x in r for x in needles)]
    assert len(rows) == 1, f"expected one row with {needles} in:\n{table}"
    return [c.strip() for c in rows[0].strip("|").split("|")]


# --- the run: subprocesses, table, JSON ------------------------------------------------------------

def test_tiny_full_vs_torch_mha_in_subprocesses(tmp_path, capsys):
    report, stdout = _run(tmp_path, "--n", "64", "--repeats", "2", "--warmup", "1",
                          "--variants", "full", "--peers", "torch-mha", capsys=capsys)
    # machine info
    info = report["machine"]["cpu"]
    assert info["torch"] == torch.__version__ and info["cpu_model"] and info["torch_threads"] == 1
    assert "peer_packages" in info
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
from attnbench.harness.compare.peers import Peer, register_peer

def _build(shape, settings):
    raise RuntimeError("deliberately broken peer: " + settings["why"])

register_peer(Peer(name="broken", variant="full", title="a peer that raises", requires=(),
                   distributions=(), match=lambda s, d: ({}, {"why": "no kernel"}), build=_build))
'''


def test_failing_peer_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_peer_mod.py").write_text(textwrap.dedent(BROKEN_PEER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))  # this process, and the workers through PYTHONPATH
    monkeypatch.setenv("PYTHONPATH", ":".join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    monkeypatch.setitem(peers.PEERS, "broken", None)  # the registration is undone afterwards
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
    cases, skipped = compare.plan(["full", "no_such_variant"], ["torch-mha"], lambda n: Shape(n), [64])
    assert [c["variant"] for c in cases] == ["full"]
    assert skipped[0]["variant"] == "no_such_variant" and "not registered" in skipped[0]["reason"]


def test_no_peers_measures_each_distinct_configuration_once():
    cases, skipped = compare.plan(["window", "full"], None, lambda n: Shape(n), [64, 128], no_peers=True)
    keys = [(c["variant"], c["n"], json.dumps(c["ours_params"], sort_keys=True)) for c in cases]
    assert len(keys) == len(set(keys)) and all(c["peer"] is None for c in cases)
    assert {(c["variant"], c["n"]) for c in cases} >= {("window", 64), ("full", 128)}


def test_set_replaces_our_default_on_both_sides():
    settings = compare.parse_settings(["window.window=256", "window.global_tokens=[0]", "lsh.n_hashes=1"])
    assert settings == {"window": {"window": 256, "global_tokens": [0]}, "lsh": {"n_hashes": 1}}
    # no_peers: planned without the peer packages (CI has none installed)
    cases, _ = compare.plan(["window"], None, lambda n: Shape(n), [64], no_peers=True, settings=settings)
    assert cases and all(c["ours_params"]["window"] == 256 for c in cases)
    ours, theirs = PEERS["hf-longformer"].match(Shape(64), {**peers._defaults("window"), **settings["window"]})
    assert ours["window"] == 256 and theirs["attention_window"] == 512  # HF's total width: 2 x 256
    for bad, why in (("window=256", "VARIANT.PARAM=VALUE"), ("nope.window=1", "unknown variant"),
                     ("window.width=1", "has no parameter 'width'")):
        with pytest.raises(compare.UsageError, match=why):
            compare.parse_settings([bad])


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
    side = {"ok": True, "peak_bytes": 100, "peak_all_bytes": 150}
    compare.with_live_memory(side, {"ok": True, "peak_bytes": 80, "peak_all_bytes": 85})
    assert (side["peak_bytes"], side["peak_all_bytes"]) == (80, 85)
    assert (side["peak_bytes_default_malloc"], side["peak_all_bytes_default_malloc"]) == (100, 150)
    assert "mmap threshold fixed" in side["memory_method"]
    side = {"ok": True, "peak_bytes": 100, "peak_all_bytes": 150}
    compare.with_live_memory(side, {"ok": False, "error": "timed out"})
    assert side["peak_bytes"] == 100 and "live-memory run failed: timed out" in side["memory_method"]


def test_worker_timeout_is_recorded(tmp_path):
    spec = {"impl": "ours", "variant": "full", "peer": None, "params": {}, "n": 16, "batch": 1, "heads": 2,
            "head_dim": 8, "threads": 1, "device": "cpu", "warmup": 1, "repeats": 1, "seed": 0}
    result = probe.run_worker(spec, timeout_s=0.05, workdir=tmp_path)
    assert not result["ok"] and "timed out" in result["error"]


def test_ratios_and_goal():
    case = {"ours": {"ok": True, "median_s": 1.0, "peak_bytes": 100, "peak_all_bytes": 100},
            "peer_result": {"ok": True, "median_s": 2.0, "peak_bytes": 50, "peak_all_bytes": 200}, "peer": "x"}
    compare.finish_case(case)
    assert case["time_ratio"] == 0.5 and case["speedup"] == 2.0
    assert case["memory_ratio"] == 2.0 and case["memory_all_ratio"] == 0.5
    assert case["goal_met"] is False
    case = {"ours": {"ok": True, "median_s": 1.0, "peak_bytes": 40, "peak_all_bytes": 300},
            "peer_result": {"ok": True, "median_s": 2.0, "peak_bytes": 50, "peak_all_bytes": 200}, "peer": "x"}
    compare.finish_case(case)
    assert case["goal_met"] is False  # leaner in one step but not across the loop: not met


def test_rounds_pool_the_timed_steps_and_take_the_median_peak():
    runs = [{"ok": True, "times_s": [1.0, 3.0], "median_s": 2.0, "peak_bytes": 10, "peak_all_bytes": 15,
             "process_wall_s": 1.0},
            {"ok": True, "times_s": [2.0, 4.0], "median_s": 3.0, "peak_bytes": 30, "peak_all_bytes": 40,
             "process_wall_s": 1.0},
            {"ok": True, "times_s": [5.0], "median_s": 5.0, "peak_bytes": 20, "peak_all_bytes": 90,
             "process_wall_s": 1.0}]
    out = compare.pool_rounds(runs)
    assert out["times_s"] == [1.0, 3.0, 2.0, 4.0, 5.0] and out["median_s"] == 3.0
    assert (out["min_s"], out["max_s"], out["peak_bytes"], out["peak_all_bytes"]) == (1.0, 5.0, 20, 40)
    assert len(out["rounds"]) == 3
    failed = {"ok": False, "error": "boom"}
    assert compare.pool_rounds([runs[0], failed]) is failed


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


# --- the peer adapters ----------------------------------------------------------------------------

def _x(n, b=2, real=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, DIM, generator=g, dtype=torch.float64)
    mask = torch.ones(b, n, dtype=torch.bool)
    if real is not None:
        mask[1, real:] = False
    return x, mask


def _ours(variant, params):
    torch.manual_seed(0)
    return build_attention(variant, DIM, HEADS, params, max_len=MAX_LEN).double().eval()


def _copy(linear, weight, bias=None):
    with torch.no_grad():
        linear.weight.copy_(weight)
        if linear.bias is not None:
            linear.bias.copy_(bias)


def _qkv(ours):
    w, b = ours.qkv.weight, ours.qkv.bias
    return [(w[i * DIM:(i + 1) * DIM], b[i * DIM:(i + 1) * DIM]) for i in range(3)]


def _same(ours, peer, x, mask, atol=1e-6):
    with torch.no_grad():
        a, b = ours(x, mask), peer(x, mask)
    real = mask[..., None]
    assert a.shape == b.shape
    assert torch.allclose(a * real, b * real, atol=atol, rtol=0), (a - b).abs().max()


def test_full_equals_torch_mha_with_copied_weights():
    ours = _ours("full", {})
    peer = peers.TorchMHA(DIM, HEADS).double().eval()
    with torch.no_grad():
        peer.mha.in_proj_weight.copy_(ours.qkv.weight)
        peer.mha.in_proj_bias.copy_(ours.qkv.bias)
    _copy(peer.mha.out_proj, ours.out.weight, ours.out.bias)
    _same(ours, peer, *_x(40, real=27), atol=1e-12)


@pytest.mark.parametrize("real", [None, 27])
def test_full_equals_the_plain_sdpa_layer_with_copied_weights(real):
    ours = _ours("full", {})
    peer = peers.PlainSDPA(DIM, HEADS).double().eval()
    _copy(peer.qkv, ours.qkv.weight, ours.qkv.bias)
    _copy(peer.out, ours.out.weight, ours.out.bias)
    _same(ours, peer, *_x(40, real=real), atol=1e-12)


@pytest.mark.parametrize("window,global_tokens", [(4, (0,)), (8, (0, -1)), (6, ())])
def test_window_equals_hf_longformer(window, global_tokens):
    pytest.importorskip("transformers")
    params, settings = PEERS["hf-longformer"].match(Shape(50), {"window": window, "global_tokens": global_tokens})
    ours = _ours("window", params)
    peer = peers.HFLongformer(DIM, HEADS, settings["one_sided_window"], tuple(settings["global_tokens"]))
    peer = peer.double().eval()
    q, k, v = _qkv(ours)
    a = peer.attn  # HF's separate global projections get the same weights: ours has one set
    for lin, wb in ((a.query, q), (a.key, k), (a.value, v), (a.query_global, q), (a.key_global, k),
                    (a.value_global, v)):
        _copy(lin, *wb)
    _copy(peer.out, ours.out.weight, ours.out.bias)
    # N = 50 is not a multiple of 2w: the adapter pads like LongformerModel; HF's softmax runs in float32
    _same(ours, peer, *_x(50, real=37), atol=1e-6)


@pytest.mark.parametrize("window", [4, 8])
def test_window_equals_local_attention_exact_window(window):
    pytest.importorskip("local_attention")
    params, settings = PEERS["local-attention"].match(Shape(48), {"window": window, "global_tokens": (0,)})
    assert params["global_tokens"] == ()
    ours = _ours("window", params)
    peer = peers.LucidrainsLocal(DIM, HEADS, settings["window_size"]).double().eval()
    _copy(peer.qkv, ours.qkv.weight, ours.qkv.bias)
    _copy(peer.out, ours.out.weight, ours.out.bias)
    _same(ours, peer, *_x(44, real=31), atol=1e-12)
    _same(ours, peer, *_x(44, real=44), atol=1e-12)  # every token real, N not a multiple of the window


def _fast_transformers_weights(ours, proj):
    (q, k, v) = _qkv(ours)
    for lin, wb in zip(proj, (q, k, v, (ours.out.weight, ours.out.bias)), strict=True):
        _copy(lin, *wb)


def test_linear_elu_equals_fast_transformers_formulation():
    params, settings = PEERS["fast-transformers"].match(Shape(40), {})
    ours = _ours("linear", params)
    peer = peers.FastTransformersLinear(DIM, HEADS, settings["eps"]).double().eval()
    _fast_transformers_weights(ours, (peer.query_projection, peer.key_projection, peer.value_projection,
                                      peer.out_projection))
    _same(ours, peer, *_x(40, real=23), atol=1e-12)


def test_linear_elu_equals_fast_transformers_package():
    pytest.importorskip("fast_transformers.attention")
    params, settings = PEERS["fast-transformers"].match(Shape(40), {})
    ours = _ours("linear", params)
    peer, label = peers._build_fast_transformers(Shape(40, 2, HEADS, DIM // HEADS), settings)
    assert "re-implemented" not in label
    peer = peer.double().eval()
    layer = peer.layer
    _fast_transformers_weights(ours, (layer.query_projection, layer.key_projection, layer.value_projection,
                                      layer.out_projection))
    _same(ours, peer, *_x(40, real=23), atol=1e-12)


def test_fast_transformers_falls_back_to_the_labelled_formulation(monkeypatch):
    monkeypatch.setitem(sys.modules, "fast_transformers", None)
    monkeypatch.setitem(sys.modules, "fast_transformers.attention", None)
    peer, label = peers._build_fast_transformers(Shape(32, 1, HEADS, DIM // HEADS), {"eps": 1e-6})
    assert isinstance(peer, peers.FastTransformersLinear) and label == peers.FAST_TRANSFORMERS_REIMPLEMENTED


def test_linear_favor_equals_performer_with_copied_features(monkeypatch):
    """Same projection matrix and weights. The two differ only in where the FAVOR+ eps (1e-4) meets
    the stabiliser (performer subtracts max(w.x), ours max(w.x - |x|^2/2)) and in our normaliser eps,
    so with both eps at 0 the stabilisers cancel and the outputs agree."""
    pp = pytest.importorskip("performer_pytorch.performer_pytorch")
    import functools

    import attnbench.variants.linear

    monkeypatch.setattr(attnbench.variants.linear, "FAVOR_EPS", 0.0)
    monkeypatch.setattr(pp, "softmax_kernel", functools.partial(pp.softmax_kernel, eps=0.0))
    params, settings = PEERS["performer-pytorch"].match(Shape(40, 2, HEADS, DIM // HEADS), {"n_features": 0})
    assert params["n_features"] == settings["nb_features"] == int(8 * math.log(8))
    ours = _ours("linear", {**params, "eps": 0.0})
    peer = peers.PerformerFavor(DIM, HEADS, settings["nb_features"]).double().eval()
    with torch.no_grad():
        peer.attn.fast_attention.projection_matrix.copy_(ours.projection)
    a = peer.attn
    for lin, wb in zip((a.to_q, a.to_k, a.to_v, a.to_out), (*_qkv(ours), (ours.out.weight, ours.out.bias)),
                    strict=True):
        _copy(lin, *wb)
    _same(ours, peer, *_x(40), atol=1e-10)  # no padding: performer leaves padded keys in the normaliser


def test_lsh_equals_reformer_pytorch_full_qk_path():
    """At N <= bucket_size reformer-pytorch runs full shared-QK attention (unit keys, d^-1/2, self-mask);
    ours with one chunk holding every token is the same function."""
    pytest.importorskip("reformer_pytorch")
    ours = _ours("lsh", {"chunk_size": 64, "n_buckets": 2, "n_hashes": 1, "chunks_before": 0})
    peer = peers.LucidrainsReformerLSH(DIM, HEADS, bucket_size=64, n_hashes=1).double().eval()
    a = peer.attn
    _copy(a.toqk, ours.qk.weight)
    _copy(a.tov, ours.v.weight)
    _copy(a.to_out, ours.out.weight, ours.out.bias)
    x, mask = _x(40)
    with torch.no_grad():
        assert torch.allclose(ours(x, mask), a(x), atol=1e-12, rtol=0)


# --- the later variants' peers (harness/compare/zoo_peers.py) -------------------------------------

def _no_qkv_bias(ours):
    """Their q/k/v projections have no bias: ours with a zero bias computes the same projections."""
    with torch.no_grad():
        ours.qkv.bias.zero_()
    return ours


def test_zoo_peers_are_registered_with_our_settings():
    shape = Shape(4096)
    want = {"linformer": ("linformer", "linformer-pytorch"), "nystrom": ("nystrom-attention",),
            "sinkhorn": ("sinkhorn-transformer",), "local": ("local-attention-blocks",)}
    for variant, names in want.items():
        assert {p.name for p in PEERS.values() if p.variant == variant} == set(names)
        for name in names:
            d = peers._defaults(variant)
            ours, theirs = PEERS[name].match(shape, d)
            if variant == "linformer":
                assert ours["k"] == theirs.get("k", theirs.get("dim_k")) == min(d["k"], shape.n)
                assert not ours["share_kv"] and not ours["per_head"]
            elif variant == "nystrom":
                assert (ours["landmarks"], ours["pinv_iterations"]) == (theirs["num_landmarks"],
                                                                       theirs["pinv_iterations"])
                assert theirs["residual"] == (ours["conv_kernel"] > 0)
            elif variant == "sinkhorn":
                assert (ours["block_size"], ours["sinkhorn_iterations"], ours["temperature"]) == \
                    (theirs["bucket_size"], theirs["sinkhorn_iter"], theirs["temperature"])
                assert theirs["non_permutative"] is False  # Sinkhorn sorting, not its top-k default
            else:
                assert ours["block_size"] == theirs["window_size"]
                assert theirs["look_backward"] == theirs["look_forward"] == 0
    # k is reduced to N on both sides, as ours reduces it to max_len
    assert PEERS["linformer"].match(Shape(100), {"k": 256})[1]["k"] == 100
    # the synthesizer has no public package: reported as skipped, not compared
    cases, skipped = compare.plan(["synthesizer"], None, lambda n: Shape(n), [64])
    assert cases == [] and "no public peer" in skipped[0]["reason"]


def test_linformer_equals_lucidrains_linformer_with_copied_weights():
    """Random E and F (not only the identity): lucidrains' proj_k, proj_v are (seq_len, k) = E^T, F^T."""
    pytest.importorskip("linformer")
    from attnbench.harness.compare import zoo_peers

    ours = _no_qkv_bias(_ours("linformer", {"k": 12}))
    peer = zoo_peers.LucidrainsLinformer(DIM, HEADS, MAX_LEN, 12).double().eval()
    a = peer.attn
    for lin, (w, _) in zip((a.to_q, a.to_k, a.to_v), _qkv(ours), strict=True):
        _copy(lin, w)
    _copy(a.to_out, ours.out.weight, ours.out.bias)
    with torch.no_grad():
        a.proj_k.copy_(ours.proj_e.T)
        a.proj_v.copy_(ours.proj_f.T)
    _same(ours, peer, *_x(40, real=27), atol=1e-12)  # padded rows zeroed by the adapter = our masking


@pytest.mark.parametrize("per_head,share_kv", [(False, False), (False, True), (True, False)])
def test_linformer_equals_linformer_pytorch_with_copied_weights(per_head, share_kv):
    """Its E, F are nn.Linear(N, k) with a bias: with the bias zero, the same function (padding masked too)."""
    pytest.importorskip("linformer_pytorch.linformer_pytorch")
    from attnbench.harness.compare import zoo_peers

    n = 40
    params, settings = PEERS["linformer-pytorch"].match(Shape(n), {"k": 12, "per_head": per_head,
                                                                   "share_kv": share_kv})
    assert (params["per_head"], params["share_kv"]) == (per_head, share_kv)
    ours = _no_qkv_bias(_ours("linformer", params))
    peer = zoo_peers.LinformerPytorch(DIM, HEADS, n, settings["dim_k"], settings["parameter_sharing"])
    peer = peer.double().eval()
    a, d = peer.attn, DIM // HEADS
    (wq, _), (wk, _), (wv, _) = _qkv(ours)
    e_all, f_all = ours.proj_e[..., :n], (ours.proj_e if ours.proj_f is None else ours.proj_f)[..., :n]
    for h in range(HEADS):
        rows = slice(h * d, (h + 1) * d)
        for lin, w in ((a.to_q[h], wq), (a.to_k[h], wk), (a.to_v[h], wv)):
            _copy(lin, w[rows])
        e, f = (e_all[h], f_all[h]) if per_head else (e_all, f_all)
        _copy(a.heads[h].E, e, torch.zeros(e.shape[0]))
        _copy(a.heads[h].F, f, torch.zeros(f.shape[0]))
    _copy(a.w_o, ours.out.weight, ours.out.bias)
    _same(ours, peer, *_x(n, real=27), atol=1e-12)


@pytest.mark.parametrize("n,landmarks,conv_kernel", [(48, 8, 3), (16, 16, 0)])
def test_nystrom_equals_nystrom_attention_once_the_pinv_converged(n, landmarks, conv_kernel):
    """No padding, N a multiple of m: the same landmarks and kernels. The pseudo-inverse iterations start
    from different Z0 (theirs: one norm over the batch and heads), so the outputs agree once both have
    converged (30 iterations); landmarks = N is the limit where both are full softmax attention."""
    pytest.importorskip("nystrom_attention")
    from attnbench.harness.compare import zoo_peers

    params, settings = PEERS["nystrom-attention"].match(Shape(n), {"landmarks": landmarks, "pinv_iterations": 30,
                                                                   "conv_kernel": conv_kernel})
    ours = _no_qkv_bias(_ours("nystrom", params))
    peer = zoo_peers.LucidrainsNystrom(DIM, HEADS, settings["num_landmarks"], settings["pinv_iterations"],
                                       conv_kernel).double().eval()
    _copy(peer.attn.to_qkv, ours.qkv.weight)
    _copy(peer.attn.to_out[0], ours.out.weight, ours.out.bias)
    if conv_kernel:
        with torch.no_grad():
            peer.attn.res_conv.weight.copy_(ours.conv.weight)
    _same(ours, peer, *_x(n), atol=1e-9)


@pytest.mark.parametrize("n,block,real", [(44, 8, 31), (48, 8, None), (20, 50, 13)])
def test_local_equals_local_attention_without_look_around(n, block, real):
    pytest.importorskip("local_attention")
    from attnbench.harness.compare import zoo_peers

    params, settings = PEERS["local-attention-blocks"].match(Shape(n), {"block_size": block})
    ours = _ours("local", params)
    peer = zoo_peers.LucidrainsLocalBlocks(DIM, HEADS, settings["window_size"]).double().eval()
    _copy(peer.qkv, ours.qkv.weight, ours.qkv.bias)
    _copy(peer.out, ours.out.weight, ours.out.bias)
    _same(ours, peer, *_x(n, real=real), atol=1e-12)


def test_sinkhorn_transformer_one_bucket_uses_the_sorted_keys_as_values():
    """What the peer's note says: with one bucket its permutation is [[1]] and one softmax over the
    sorted and own keys (the same keys twice) weighs values [sorted keys; own values] (0.11.4 sets
    b_v_r = b_k_r), so it computes 1/2 (softmax(Q K^T) K + softmax(Q K^T) V) where ours (the mean of
    its two halves) is full attention softmax(Q K^T) V."""
    pytest.importorskip("sinkhorn_transformer")
    from attnbench.harness.compare import zoo_peers

    n = 16
    peer = zoo_peers.LucidrainsSinkhorn(DIM, HEADS, n, n, 8, 0.75).double().eval()
    x, _ = _x(n)
    with torch.no_grad():
        q = peer.attn.to_q(x).view(2, n, HEADS, -1).transpose(1, 2)
        k, v = (t.view(2, n, HEADS, -1).transpose(1, 2) for t in peer.attn.to_kv(x).chunk(2, dim=-1))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS), dim=-1)
        o = 0.5 * (attn @ k + attn @ v)
        want = peer.attn.to_out(o.transpose(1, 2).reshape(2, n, DIM))
        assert torch.allclose(peer(x, None), want, atol=1e-10, rtol=0)


def test_bigbird_mechanism_alone_computes_what_hf_ships_without_the_dense_matrix():
    """hf-bigbird-core skips only HF's N x N attention-probability reassembly: same weights and
    seed, the same output and gradients as hf-bigbird, and the dense tensor was never built."""
    pytest.importorskip("transformers.models.big_bird.modeling_big_bird")
    shape = Shape(256, 2, HEADS, DIM // HEADS)
    _, settings = PEERS["hf-bigbird"].match(shape, {**peers._defaults("sparse"), "block_size": 16,
                                                    "random_blocks": 1})
    results = []
    for name in ("hf-bigbird", "hf-bigbird-core"):
        torch.manual_seed(0)
        layer = PEERS[name].build(shape, settings).train()
        x = torch.randn(2, 256, DIM, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y = layer(x, None)
        y.square().sum().backward()
        results.append((y, x.grad, getattr(layer, "skipped_dense", None)))
    (y1, g1, _), (y2, g2, skipped) = results
    assert torch.equal(y1, y2) and torch.equal(g1, g2)
    assert skipped == 1


# every peer that is installed builds at a small size and runs forward+backward with padding
SMALL = {"hf-bigbird": ({"block_size": 16, "random_blocks": 1}, 256),
         "hf-bigbird-core": ({"block_size": 16, "random_blocks": 1}, 256),
         "linformer": ({"k": 16}, 72), "linformer-pytorch": ({"k": 16}, 72),
         "nystrom-attention": ({"landmarks": 8, "conv_kernel": 3}, 76),
         "sinkhorn-transformer": ({"block_size": 8}, 76), "local-attention-blocks": ({"block_size": 8}, 76)}


@pytest.mark.parametrize("name", list(PEERS))
def test_installed_peer_adapter_runs_forward_backward(name):
    peer = PEERS[name]
    missing = peers.missing_modules(peer)
    if missing:
        pytest.skip("not installed: " + "; ".join(missing))
    over, n = SMALL.get(name, ({}, 72))
    shape = Shape(n, 2, HEADS, DIM // HEADS)
    ours_params, settings = peer.match(shape, {**peers._defaults(peer.variant), **over})
    built = peer.build(shape, settings)
    layer = (built[0] if isinstance(built, tuple) else built).train()
    ours = build_attention(peer.variant, DIM, HEADS, ours_params, max_len=n).train()
    x, mask = _x(n, real=n - 9)
    x = x.float().requires_grad_(True)
    for module in (layer, ours):
        y = module(x, mask)
        assert y.shape == x.shape and torch.isfinite(y[mask]).all()
        y.sum().backward()
        assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
