"""The efficiency sweep: which cases a config expands to, what one case measures (FLOPs against
torch's counter, memory in a fresh process), failures recorded as results (forced OOM and
timeouts), and a tiny sweep through pytest-benchmark into the tidy table."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from attnbench.harness.bench.case import Stepper, analytic_flops, counted_flops
from attnbench.harness.bench.files import aggregate_bench, run_sweep, sweep_file
from attnbench.harness.bench.settings import BenchConfig, bench_variants, variant_cases
from attnbench.harness.bench.sweep import SweepEnv, probe_case
from attnbench.harness.config import ConfigError, validate_config
from attnbench.harness.core.registry import build_dataclass
from conftest import tiny_config

SMALL = {"window": {"window": 8, "block_size": 8}, "sparse": {"block_size": 8, "random_blocks": 1},
         "lsh": {"chunk_size": 8, "n_buckets": 8}}


def bench_config(**bench) -> dict:
    return validate_config(tiny_config(variants={"full": {}, "window": {}}, distill={"students": {"full": {}}},
                                       bench=bench))


def test_cases_cover_every_combination_of_the_settings():
    cfg = bench_config(lengths=[256, 128], batch_sizes=[1, 2], modes=["forward", "forward_backward"],
                       scopes=["layer", "block"], dtypes=["float32"], backends={"full": ["default", "math"]},
                       variant_params={"window": {"window": 16}})
    assert bench_variants(cfg) == ["full", "window"]  # the variants: a distilled student's layers are its variant's
    full, window = variant_cases(cfg, "full"), variant_cases(cfg, "window")
    assert len(full) == 2 * 2 * 2 * 1 * 2 * 2 and len(window) == 2 * 2 * 1 * 2 * 2
    assert {c.impl for c in full} == {"full", "full [math]"}
    assert [c.n for c in window[:2]] == [128, 256]  # lengths in order
    assert {c.params["window"] for c in window} == {16}  # bench.variant_params over the defaults
    assert all(c.params["global_tokens"] == [0] for c in window)  # the rest: the variant's defaults
    assert len({c.id for c in full + window}) == len(full + window)


def test_cuda_device_uses_the_gpu_lengths_and_dtypes():
    cfg = bench_config(cuda_lengths=[1024, 2048], cuda_dtypes=["bfloat16"])
    cfg["device"] = "cuda"
    cases = variant_cases(cfg, "window")
    assert {c.n for c in cases} == {1024, 2048} and {c.dtype for c in cases} == {"bfloat16"}


@pytest.mark.parametrize("bench, message", [
    ({"variants": ["distilled"]}, "unknown variant 'distilled' under 'bench.variants'"),
    ({"backends": {"full": ["fast"]}}, "'bench.backends.full' is ['fast']; allowed: default, math"),
    ({"backends": {"ful": ["math"]}}, "unknown variant 'ful' under 'bench.backends'"),
    ({"variant_params": {"window": {"width": 3}}}, "'bench.variant_params.window'"),
    ({"lengths": []}, "'bench.lengths' is []"),
    ({"modes": ["backward"]}, "'bench.modes.0' is 'backward'; allowed: forward, forward_backward"),
])
def test_bad_bench_settings_are_named(bench, message):
    with pytest.raises(ConfigError, match=None) as err:
        bench_config(**bench)
    assert message in str(err.value)


def stepper(variant: str, scope: str, mode: str, n: int = 64, params=None):
    from attnbench.harness.bench.settings import Case
    from attnbench.variants import VARIANTS

    cfg = VARIANTS.make_config(variant, params or {})
    import dataclasses

    p = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    case = Case(variant, p, "default", scope, mode, "float32", 2, n)
    return Stepper(case, heads=2, head_dim=16, mlp_dim=64, device=torch.device("cpu"), seed=0)


@pytest.mark.parametrize("variant", ["linear", "lsh"])
@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
def test_analytic_flops_match_torchs_counter_where_it_sees_every_matmul(variant, mode, monkeypatch):
    """linear and lsh are plain matmuls and einsums: the counter sees all of their work but the
    elementwise part (feature maps, combining hash rounds), a few % at this small head size; the
    analytic count takes a backward pass as twice the forward. lsh's chunks run through the CPU
    flash kernel, which the counter cannot see into (as full attention's): its explicit path, the
    same function (tests/variants/test_lsh_flash_path.py), is counted instead."""
    from attnbench.variants.lib import flash_cpu

    monkeypatch.setattr(flash_cpu, "usable", lambda *a: False)
    s = stepper(variant, "layer", mode, params=SMALL.get(variant))
    counted, kernels = counted_flops(s)
    assert 0.94 * analytic_flops(s) <= counted <= analytic_flops(s)
    assert kernels == "none"


def test_full_attention_flops_under_the_math_kernel_match_exactly_and_flash_is_invisible_to_the_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for mode in ("forward", "forward_backward"):
        s = stepper("full", "block", mode)
        with sdpa_kernel([SDPBackend.MATH]):
            counted, kernels = counted_flops(s)
        assert counted == analytic_flops(s) and kernels == "math"  # projections, QK^T, PV, the block's MLP
        counted, kernels = counted_flops(s)  # torch's own choice on CPU: the flash kernel, counted as 0
        assert kernels == "flash" and counted < analytic_flops(s)


def test_a_step_runs_forward_only_or_forward_and_backward():
    fwd, train = stepper("window", "block", "forward", params=SMALL["window"]), \
        stepper("window", "block", "forward_backward", params=SMALL["window"])
    fwd()
    assert not fwd.module.training and all(p.grad is None for p in fwd.module.parameters())
    train()
    assert train.module.training and all(p.grad is not None for p in train.module.parameters())


def env_for(tmp_path, **settings) -> SweepEnv:
    return SweepEnv(build_dataclass(BenchConfig, {"warmup": 1, "repeats": 2, **settings}, "bench"), "cpu", 1,
                    tmp_path / "work")


def case_of(variant, n, backend="default", mode="forward_backward", scope="layer"):
    from attnbench.harness.bench.settings import Case

    return Case(variant, {}, backend, scope, mode, "float32", 1, n)


@pytest.mark.slow
def test_memory_cap_and_time_cap_make_oom_and_timeout_results(tmp_path):
    # full attention on SDPA's math kernel at N=4096: four 4096 x 4096 x 4-head score tensors, over 1 GiB
    capped = probe_case(case_of("full", 4096, "math"), env_for(tmp_path, memory_cap_mb=700))
    assert capped["status"] == "oom" and "over the cap of 700 MiB" in capped["message"]
    slow = probe_case(case_of("linear", 256), env_for(tmp_path, time_cap_s=1e-6))
    assert slow["status"] == "timeout" and "bench.time_cap_s" in slow["message"]
    assert slow["peak_bytes"] > 0  # measured before the cap was applied


@pytest.mark.slow
def test_a_tiny_sweep_writes_pytest_benchmark_json_and_the_tidy_table(tmp_path):
    cfg = validate_config(tiny_config(variants={"full": {}, "window": {}}, bench={
        "lengths": [32, 64], "modes": ["forward_backward"], "scopes": ["layer"], "warmup": 1, "repeats": 2, "rounds": 2,
        "backends": {"full": ["default", "xformers"]}, "variant_params": {"window": SMALL["window"]}}))
    sweep = sweep_file(cfg, "full", 1, tmp_path / "work")
    big = dict(sweep["cases"][0], n=4096, backend="math")  # forced out of memory by the cap below
    sweep["cases"].append(big)
    # above a small case's worker (230 MiB resident with torch's CPU build, 700-740 MiB with a CUDA build of torch
    # on a CPU), below SDPA's math kernel at 4K tokens (over 1 GiB of N x N scores, probabilities and gradients)
    sweep["settings"]["memory_cap_mb"] = 1000
    out = tmp_path / "bench" / "full.json"
    assert run_sweep(sweep, out) == 0
    data = json.loads(out.read_text())
    assert data["machine_info"]["attnbench"]["torch"] == torch.__version__
    assert data["machine_info"]["attnbench"]["torch_threads"] == 1
    statuses = {(r["impl"], r["n"]): r["status"] for r in data["attnbench"]["rows"]}
    assert statuses == {("full", 32): "ok", ("full", 64): "ok", ("full [xformers]", 32): "unavailable",
                        ("full [xformers]", 64): "unavailable", ("full [math]", 4096): "oom"}
    timed = [(b["extra_info"]["round"], b["extra_info"]["case_id"]) for b in data["benchmarks"]]  # pytest-benchmark's
    assert sorted(timed) == [(r, f"full-layer-forward_backward-float32-b1-n{n}") for r in (0, 1) for n in (32, 64)]
    assert all(b["stats"]["rounds"] == 2 for b in data["benchmarks"])
    order = [(r["round"], r["n"]) for r in data["attnbench"]["rows"] if r["impl"] == "full"]
    assert order == [(0, 32), (0, 64), (1, 32), (1, 64)]  # interleaved: every case, then every case again

    window = tmp_path / "bench" / "window.json"
    window_sweep = sweep_file(cfg, "window", 1, tmp_path / "work")
    window_sweep["cases"] = window_sweep["cases"][1:]  # one length is enough here
    assert run_sweep(window_sweep, window) == 0
    df = aggregate_bench([out, window], tmp_path / "bench.csv")
    assert pd.read_csv(tmp_path / "bench.csv").shape == df.shape and (tmp_path / "bench.parquet").exists()
    ok = df[df["status"] == "ok"]
    assert sorted(ok["impl"].unique()) == ["full", "window"] and len(ok) == 3
    assert (ok["flops_counted"] > 0).all() and (ok["sdpa_kernels"] == "flash").all()
    # a case this small may need no memory beyond what its priming step left free: a peak of 0 is a measurement
    assert (ok["median_s"] > 0).all() and ok["peak_mb"].notna().all() and (ok["peak_mb"] >= 0).all()
    assert ok["tokens_per_s"].notna().all()
    assert (ok["tokens_per_s"] == ok["batch"] * ok["n"] / ok["median_s"]).all()
    assert (ok["sweep_rounds"] == 2).all() and (ok["rounds"] == 4).all()  # 2 timed steps in each of 2 rounds
    for _, r in ok.iterrows():  # two rounds: the median of their medians is their mean
        assert r["median_s"] == pytest.approx(sum(json.loads(r["round_medians_s"])) / 2)
    bad = df[df["status"] != "ok"]
    assert bad["median_s"].isna().all() and bad["peak_mb"].isna().all() and bad["message"].str.len().gt(0).all()
    assert json.loads(ok[ok["impl"] == "window"]["params"].iloc[0])["window"] == 8


def test_rounds_combine_into_one_row_per_case_and_a_failed_round_wins():
    from attnbench.harness.bench.files import merge_rounds_per_case

    def row(case, rnd, median, status="ok"):
        return {"case_id": case, "round": rnd, "status": status, "message": "" if status == "ok" else "boom",
                "batch": 2, "n": 100, "flops_analytic": 1e9, "median_s": median, "min_s": median * 0.9,
                "max_s": median * 1.2, "rounds": 5, "iqr_s": 0.01, "times_s": [median] * 5}

    rows = [row("a", 0, 1.0), row("b", 0, 2.0), row("a", 1, 3.0), row("b", 1, 2.0, "oom"), row("a", 2, 2.0)]
    a, b = merge_rounds_per_case(rows)
    assert (a["case_id"], a["median_s"], a["round_medians_s"], a["sweep_rounds"]) == ("a", 2.0, [1.0, 3.0, 2.0], 3)
    assert (a["min_s"], a["max_s"], a["rounds"], a["tokens_per_s"]) == (0.9, pytest.approx(3.6), 15, 100.0)
    assert a["gflops_per_s"] == pytest.approx(0.5) and len(a["times_s"]) == 15
    assert (b["case_id"], b["status"], b["message"], b["sweep_rounds"]) == ("b", "oom", "boom", 2)


@pytest.mark.parametrize(("settings", "impl", "status"), [
    ({"backends": {"full": ["xformers"]}}, "full [xformers]", "unavailable"),  # no xformers kernel on a CPU
    ({"memory_cap_mb": 100, "backends": {"full": ["default"]}}, "full", "oom"),  # a worker alone is > 100 MiB
])
@pytest.mark.slow
def test_a_sweep_whose_every_case_fails_is_still_a_result(tmp_path, settings, impl, status):
    """Every case unavailable or oom: pytest-benchmark saves nothing, yet the sweep's JSON is written
    with those rows, the table holds them and the report renders them."""
    from attnbench.harness.report.render import render_report

    cfg = validate_config(tiny_config(bench={"lengths": [32, 64], "modes": ["forward"], "scopes": ["layer"],
                                             "warmup": 0, "repeats": 1, **settings}))
    out = tmp_path / "bench" / "full.json"
    assert run_sweep(sweep_file(cfg, "full", 1, tmp_path / "work"), out) == 0
    data = json.loads(out.read_text())
    assert data["benchmarks"] == [] and data["machine_info"]["attnbench"]["torch"] == torch.__version__
    df = aggregate_bench([out], tmp_path / "bench.csv")
    assert list(zip(df["impl"], df["n"], df["status"], strict=True)) == [(impl, 32, status), (impl, 64, status)]
    index = render_report(None, tmp_path / "report", tmp_path / "bench.csv")
    assert status in (tmp_path / "report" / "summary.md").read_text().lower() and index.exists()
