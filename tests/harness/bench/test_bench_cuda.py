"""The efficiency sweep's CUDA paths. The decisions are pure functions, and the torch.cuda calls are
checked with torch.cuda monkeypatched, so all of that runs on CPU; what needs a GPU (a worker capping
its allocations, torch's "no kernel" error, memory given back after a real out-of-memory, xformers'
FLOPs) is skipped without one."""
from __future__ import annotations

import json
import os
import weakref

import pytest
import torch

from attnbench.harness import cli
from attnbench.harness.bench import case as bench_case
from attnbench.harness.bench import files as bench_files
from attnbench.harness.bench import sweep as bench_sweep
from attnbench.harness.bench.case import (
    Stepper,
    analytic_flops,
    counted_flops,
    error_result,
    failure_status,
    flops_counted_method,
    unavailable,
    xformers_attention_flops,
)
from attnbench.harness.bench.files import expand_sweep, load_rows, sweep_param
from attnbench.harness.bench.settings import BenchConfig, Case
from attnbench.harness.bench.sweep import SweepEnv, probe_case, release_memory, run_case
from attnbench.harness.config import validate_config
from attnbench.harness.core.registry import build_dataclass
from attnbench.harness.measure import gpu_lease
from attnbench.harness.measure.memory import cap_cuda_memory, cuda_memory_cap, memory_fraction_args
from conftest import tiny_config

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GIB = 2 ** 30


def case_of(variant="full", backend="default", dtype="float32", mode="forward_backward", n=64, batch=1,
            scope="layer") -> Case:
    return Case(variant, {}, backend, scope, mode, dtype, batch, n)


def env_for(tmp_path, device="cpu", **settings) -> SweepEnv:
    return SweepEnv(build_dataclass(BenchConfig, {"warmup": 1, "repeats": 2, **settings}, "bench"), device, 1,
                    tmp_path / "work")


def auto_config(**bench) -> dict:
    return validate_config(tiny_config(device="auto", variants={"full": {}, "window": {}},
                                       distill={"students": {"full": {}}}, bench=bench))


# --- 1: the CUDA memory cap takes an indexed device ------------------------------------------------

def test_the_memory_fraction_goes_to_an_indexed_device():
    from torch.cuda._utils import _get_device_index

    with pytest.raises(ValueError, match="specified index"):  # the defect: what torch 2.13 says to "cuda"
        _get_device_index(torch.device("cuda"))
    fraction, index = memory_fraction_args(torch.device("cuda"), 3, 40 * GIB, 80 * GIB)
    assert (fraction, index) == (0.5, 3) and isinstance(fraction, float)
    assert _get_device_index(index) == 3  # what set_per_process_memory_fraction accepts
    assert memory_fraction_args(torch.device("cuda", 1), 3, 40 * GIB, 80 * GIB)[1] == 1  # an index given wins
    assert memory_fraction_args(torch.device("cuda"), 0, 90 * GIB, 80 * GIB)[0] == 1.0  # at most all of it


def test_the_worker_caps_the_current_device_through_torchs_own_function(monkeypatch):
    """torch.cuda.set_per_process_memory_fraction itself runs, down to its C call (faked)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (30 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda.memory, "_lazy_init", lambda: None)
    monkeypatch.setattr(torch._C, "_cuda_setMemoryFraction", lambda f, i: calls.append((f, i)), raising=False)
    assert cap_cuda_memory(torch.device("cuda"), None) == 30 * GIB  # 80% of 80 GiB, but only 30 GiB free
    assert calls == [(30 / 80, 2)]
    assert cap_cuda_memory(torch.device("cuda"), 10 * GIB) == 10 * GIB and calls[-1] == (10 / 80, 2)


# --- 4: device auto is resolved by the job, where it runs -------------------------------------------

def test_the_sweep_param_for_device_auto_does_not_depend_on_the_planning_machine(monkeypatch, tmp_path):
    cfg = auto_config(lengths=[128, 256], cuda_lengths=[1024, 2048], dtypes=["float32"],
                      cuda_dtypes=["float32", "bfloat16"], modes=["forward"], scopes=["layer"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    login_node = sweep_param(cfg, "window", tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert sweep_param(cfg, "window", tmp_path) == login_node
    plan = json.loads(login_node)
    assert plan["device"] == "auto" and "cases" not in plan and plan["params"]["window"] == 64

    on_gpu = expand_sweep(plan, cores=4)  # the job on a GPU node
    assert on_gpu["device"] == "cuda" and on_gpu["configured_device"] == "auto" and on_gpu["threads"] == 3
    assert {(c["n"], c["dtype"]) for c in on_gpu["cases"]} == {(n, d) for n in (1024, 2048)
                                                               for d in ("float32", "bfloat16")}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_cpu = expand_sweep(plan, cores=4)
    assert on_cpu["device"] == "cpu" and {(c["n"], c["dtype"]) for c in on_cpu["cases"]} == {
        (128, "float32"), (256, "float32")}
    assert all(Case(**c).params == plan["params"] for c in on_cpu["cases"])


@pytest.fixture
def clean_lease(monkeypatch, tmp_path):
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "ATTNBENCH_GPU_LEASE_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ATTNBENCH_GPUS", "2")
    monkeypatch.setenv("ATTNBENCH_LOCK_DIR", str(tmp_path / "locks"))
    yield
    gpu_lease.release()


def test_attnbench_bench_leases_then_resolves_and_expands_the_plan(monkeypatch, tmp_path, clean_lease, capsys):
    cfg = auto_config(cuda_lengths=[1024, 2048], cuda_dtypes=["bfloat16"], modes=["forward"], scopes=["layer"])
    seen, ran = [], []

    def is_available():  # what CUDA would see: the lease must be taken before
        seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
        return True

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(bench_files, "run_sweep", lambda sweep, out, extra: ran.append(sweep) or 0)
    param = sweep_param(cfg, "full", tmp_path / "work")
    assert cli.main(["bench", "--variant", "full", "--sweep-json", param, "--lengths", "2048", "--cores", "2",
                     "--out", str(tmp_path / "full.json")]) == 0
    (sweep,) = ran
    assert seen and seen[0] == "0"  # leased GPU 0 of ATTNBENCH_GPUS=2 before torch was asked
    assert sweep["device"] == "cuda" and sweep["configured_device"] == "auto" and sweep["threads"] == 1
    assert [(c["n"], c["dtype"], c["backend"]) for c in sweep["cases"]] == [(2048, "bfloat16", "default"),
                                                                             (2048, "bfloat16", "math")]
    assert cli.main(["bench", "--variant", "window", "--sweep-json", param]) == 2
    assert "does not match" in capsys.readouterr().err


# --- 5: out of memory while timing, and the next worker's cap ---------------------------------------

def test_the_cuda_cap_is_the_configured_or_80_percent_and_never_more_than_is_free():
    assert cuda_memory_cap(None, total=100, free=95) == 80
    assert cuda_memory_cap(None, total=100, free=50) == 50  # another process (or a leak) holds the rest
    assert cuda_memory_cap(30, total=100, free=95) == 30
    assert cuda_memory_cap(60, total=100, free=40) == 40


def test_a_cuda_workers_spec_leaves_the_cap_to_the_worker(tmp_path):
    """The parent no longer sizes a CUDA cap from the total (it touched torch.cuda for it, too)."""
    assert env_for(tmp_path, "cuda").worker_spec(case_of())["memory_cap_bytes"] is None
    assert env_for(tmp_path, "cuda", memory_cap_mb=512).worker_spec(case_of())["memory_cap_bytes"] == 512 * 2 ** 20
    assert env_for(tmp_path, "cpu").worker_spec(case_of())["memory_cap_bytes"] > 0  # the parent's RSS cap


def test_a_failed_worker_still_reports_its_cap(monkeypatch):
    monkeypatch.setitem(bench_case._WORKER, "memory_cap_bytes", 123)
    result = error_result("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", True)
    assert result == {"status": "oom", "message": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
                      "memory_cap_bytes": 123}


class _Benchmark:
    """pytest-benchmark's fixture, as far as time_case and run_case use it."""

    def __init__(self):
        self.extra_info = {}

    def pedantic(self, target, rounds, warmup_rounds, iterations):
        for _ in range(warmup_rounds + rounds):
            target()


def test_out_of_memory_while_timing_releases_the_stepper_before_the_next_case(monkeypatch, tmp_path):
    steppers, released = [], []

    class OomStepper:
        def __init__(self, *args, **kwargs):
            self.activations = torch.zeros(1024)
            steppers.append(weakref.ref(self))

        def __call__(self):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")

    def spy(device):
        released.append((device.type, steppers[-1]() is None))

    monkeypatch.setattr(bench_sweep, "Stepper", OomStepper)
    monkeypatch.setattr(bench_sweep, "release_memory", spy)
    case = case_of()
    probes = {case.id: {"status": "ok", "message": "", "memory_cap_bytes": 99}}  # the worker's part went fine
    row = run_case(case, env_for(tmp_path), _Benchmark(), probes=probes)
    assert row["status"] == "oom" and row["message"].startswith("while timing: CUDA out of memory")
    assert row["memory_cap_bytes"] == 99
    assert released and released[-1] == ("cpu", True)  # released once the stepper was gone


def test_release_memory_collects_and_empties_the_cuda_cache(monkeypatch):
    calls = []
    monkeypatch.setattr(bench_sweep.gc, "collect", lambda: calls.append("gc") or 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    release_memory(torch.device("cpu"))
    assert calls == ["gc"]
    release_memory(torch.device("cuda"))
    assert calls == ["gc", "gc", "empty_cache"]


def test_the_cap_and_the_flops_method_reach_the_table(tmp_path):
    row = {"case_id": "a", "impl": "full [xformers]", "variant": "full", "backend": "xformers", "scope": "layer",
           "mode": "forward", "dtype": "bfloat16", "batch": 1, "n": 1024, "status": "ok", "message": "",
           "median_s": 0.5, "min_s": 0.4, "max_s": 0.6, "rounds": 2, "times_s": [0.4, 0.6], "flops_analytic": 1e9,
           "flops_counted": 1e9, "flops_counted_method": flops_counted_method(case_of(backend="xformers")),
           "peak_bytes": 2 ** 20, "memory_cap_bytes": 3 * 2 ** 30, "params": {}}
    path = tmp_path / "full.json"
    path.write_text(json.dumps({"attnbench": {"rows": [row]}}))
    (loaded,) = load_rows(path)
    assert loaded["memory_cap_mb"] == 3 * 1024 and "added analytically" in loaded["flops_counted_method"]


# --- 6: backends that cannot run a case are unavailable, with the reason ----------------------------

CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("case, device, reason", [
    (case_of(backend="efficient"), CPU, "runs on CUDA only"),
    (case_of(backend="cudnn"), CPU, "runs on CUDA only"),
    (case_of(backend="flash"), CPU, None),  # torch's CPU flash kernel takes any float dtype and masks
    (case_of(backend="flash", variant="window"), CPU, None),
    (case_of(backend="flash"), GPU, "takes float16 or bfloat16, not float32"),
    (case_of(backend="cudnn", dtype="float64"), GPU, "takes float16 or bfloat16, not float64"),
    (case_of(backend="flash", dtype="bfloat16"), GPU, None),
    (case_of(backend="flash", dtype="float16", variant="window"), GPU, "takes no attention mask"),
    (case_of(backend="flash", dtype="bfloat16", variant="sparse"), GPU, "takes no attention mask"),
    (case_of(backend="efficient"), GPU, None),
    (case_of(backend="math", dtype="float64"), GPU, None),
    (case_of(dtype="bfloat16"), GPU, None),
    (case_of(backend="xformers", dtype="bfloat16", variant="window"), GPU, "full attention's kernel only"),
])
def test_cases_a_backend_cannot_run_are_known_before_running(case, device, reason):
    why = unavailable(case, device)
    assert why is None if reason is None else reason in why


@pytest.mark.parametrize("message, oom, status", [
    ("RuntimeError: No available kernel. Aborting execution.", False, "unavailable"),
    ("RuntimeError: No viable backend for scaled_dot_product_attention was found.", False, "unavailable"),
    ("OutOfMemoryError: CUDA out of memory.", True, "oom"),
    ("RuntimeError: shapes do not match", False, "failed"),
])
def test_torchs_no_kernel_error_makes_a_case_unavailable(message, oom, status):
    assert failure_status(message, oom) == status
    assert error_result(message, oom)["status"] == status


def test_no_kernel_in_the_worker_is_unavailable(monkeypatch, tmp_path):
    """SDPA's efficient kernel forced on CPU, past the static check: torch's own error, classified."""
    monkeypatch.setattr(bench_case, "unavailable", lambda case, device: None)
    spec = {"case": case_of(backend="efficient", n=16).to_dict(), "device": "cpu", "threads": 1, "heads": 2,
            "head_dim": 8, "mlp_dim": 16, "seed": 0, "prime_length": 8, "time_cap_s": 0, "memory_cap_bytes": None}
    out = tmp_path / "result.json"
    assert bench_case._worker([json.dumps(spec), str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["status"] == "unavailable" and "scaled_dot_product_attention" in result["message"]


@pytest.mark.slow
def test_no_kernel_while_timing_is_unavailable(tmp_path):
    case = case_of(backend="efficient", n=16)
    row = run_case(case, env_for(tmp_path, heads=2, head_dim=8), _Benchmark(),
                   probes={case.id: {"status": "ok", "message": ""}})
    assert row["status"] == "unavailable" and row["message"].startswith("while timing: RuntimeError: No viable")


# --- 6: xformers' attention FLOPs, which torch's counter does not see -------------------------------

def test_xformers_attention_flops_follow_torchs_sdpa_formulas():
    b, h, n, dh = 2, 4, 128, 32
    fwd = xformers_attention_flops(case_of(backend="xformers", mode="forward", n=n, batch=b), h, dh)
    both = xformers_attention_flops(case_of(backend="xformers", mode="forward_backward", n=n, batch=b), h, dh)
    assert fwd == 4 * b * h * n * n * dh  # QK^T and PV, as the full variant's analytic count
    assert both == fwd + 10 * b * h * n * n * dh  # FlopCounterMode's SDPA backward: scores again, four products


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
def test_an_xformers_case_counts_its_attention(mode):
    """On CPU an xformers-labelled step runs torch's CPU flash kernel, which the counter does not see
    either: it stands in for xformers' kernel, and the step's count becomes the projections plus the
    attention by torch's formulas."""
    case = case_of(backend="xformers", mode=mode, batch=2)
    stepper = Stepper(case, heads=2, head_dim=16, mlp_dim=64, device=CPU, seed=0)
    counted, kernels = counted_flops(stepper)
    attention = xformers_attention_flops(case, 2, 16)
    projections = analytic_flops(stepper) - (3 if mode == "forward_backward" else 1) * 4 * 2 * 2 * 64 * 64 * 16
    assert counted == projections + attention and "xformers" in kernels
    plain, _ = counted_flops(Stepper(case_of(mode=mode, batch=2), heads=2, head_dim=16, mlp_dim=64, device=CPU,
                                     seed=0))
    assert plain == projections  # not an xformers case: nothing added
    assert "added analytically" in flops_counted_method(case)
    assert "added" not in flops_counted_method(case_of())


# --- on a GPU ---------------------------------------------------------------------------------------

@CUDA
def test_cuda_worker_caps_its_memory_and_records_the_cap(tmp_path):
    env = env_for(tmp_path, "cuda", heads=2, head_dim=16)
    free, _total = torch.cuda.mem_get_info()
    result = probe_case(case_of(dtype="bfloat16", n=256), env)
    assert result["status"] == "ok", result
    assert 0 < result["memory_cap_bytes"] <= free


@CUDA
def test_cuda_memory_fraction_is_set_on_this_process():
    try:
        cap = cap_cuda_memory(torch.device("cuda"), 2 * GIB)
        total = torch.cuda.mem_get_info()[1]
        assert 0 < cap <= 2 * GIB
        assert torch.cuda.get_per_process_memory_fraction() == pytest.approx(cap / total)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, torch.cuda.current_device())


@CUDA
def test_cuda_backends_that_cannot_run_are_unavailable_not_failed(tmp_path):
    env = env_for(tmp_path, "cuda", heads=2, head_dim=16)
    for case in (case_of(backend="flash"), case_of(backend="flash", dtype="bfloat16", variant="window"),
                 case_of(backend="efficient", dtype="float64")):  # the last one: torch's own "no kernel"
        result = probe_case(case, env)
        assert result["status"] == "unavailable", (case, result)
    assert probe_case(case_of(backend="flash", dtype="bfloat16"), env)["status"] == "ok"


@CUDA
def test_cuda_memory_is_given_back_after_an_out_of_memory_while_timing(monkeypatch, tmp_path):
    class Hog:
        def __init__(self, *args, **kwargs):
            self.held = torch.empty(GIB, dtype=torch.uint8, device="cuda")

        def __call__(self):
            torch.empty(4 * torch.cuda.mem_get_info()[1], dtype=torch.uint8, device="cuda")  # more than exists

    monkeypatch.setattr(bench_sweep, "Stepper", Hog)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    case = case_of(dtype="bfloat16")
    row = run_case(case, env_for(tmp_path, "cuda"), _Benchmark(), probes={case.id: {"status": "ok", "message": ""}})
    assert row["status"] == "oom"
    assert torch.cuda.memory_reserved() <= before  # the held GiB went back to the GPU


@CUDA
@pytest.mark.skipif(bench_case.xformers_unavailable() is not None, reason="needs xformers")
def test_cuda_xformers_case_counts_its_attention_flops():
    case = case_of(backend="xformers", dtype="bfloat16", mode="forward_backward", n=512)
    with bench_case.backend_context("xformers"):
        stepper = Stepper(case, heads=2, head_dim=64, mlp_dim=64, device=torch.device("cuda"), seed=0)
        counted, kernels = counted_flops(stepper)
    assert "xformers" in kernels and counted >= xformers_attention_flops(case, 2, 64)
