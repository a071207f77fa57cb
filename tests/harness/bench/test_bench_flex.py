"""The sweep's FlexAttention cases on a CPU: the CUDA sweep's window/sparse/local branch, forced (review finding 1).

On CUDA ``kernel: auto`` runs FlexAttention, and the sweep's worker counted FLOPs under
``FlopCounterMode``, where the flex operator cannot run (dynamo runs no compiled frame under a
dispatch mode, and the eager operator has no rule for the mode): every window, sparse and local
case of a CUDA sweep ended ``failed``. The same worker runs here with ``kernel: flex`` in forward
mode (torch has no FlexAttention backward on a CPU), one case with the kernel compiled as on CUDA:
- the case is ``ok``, its row names the kernel that ran (flex) and why;
- its counted FLOPs are the layout's, not torch's dense N x N formula for flex: they are counted on
  the gather kernel of the same layout, within a few percent of that kernel's own count and well
  under full attention's;
- a kernel that compiles for its shape is primed at the case's own length, so the measured step
  does not compile (a cold compile is seconds; the measured step is milliseconds).
"""
from __future__ import annotations

import pytest

from attnbench.harness.bench.settings import BenchConfig, Case
from attnbench.harness.bench.sweep import SweepEnv, probe_case
from attnbench.harness.core.registry import as_dict, build_dataclass
from attnbench.variants import VARIANTS, build_attention

N = 512
LAYOUTS = {
    "window": {"window": 16, "block_size": 16},
    "sparse": {"block_size": 32, "window_blocks": 1, "random_blocks": 1},
    "local": {"block_size": 64},
}


def env_for(tmp_path, **settings) -> SweepEnv:
    return SweepEnv(build_dataclass(BenchConfig, {"warmup": 1, "repeats": 1, "time_cap_s": 120, **settings},
                                    "bench"), "cpu", 2, tmp_path / "work")


def case(variant: str, kernel: str, mode: str = "forward") -> Case:
    params = as_dict(VARIANTS.make_config(variant, {**LAYOUTS[variant], "kernel": kernel}))
    return Case(variant, params, "default", "layer", mode, "float32", 2, N)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(LAYOUTS))
def test_flex_case_runs_through_the_sweep_worker_with_the_layouts_flops(variant, tmp_path):
    env = env_for(tmp_path)
    flex, gather = probe_case(case(variant, "flex"), env), probe_case(case(variant, "gather"), env)
    assert flex["status"] == "ok", flex.get("message")
    assert gather["status"] == "ok", gather.get("message")
    assert flex["attention_kernel"] == "flex" and "kernel: flex" in flex["attention_kernel_why"]
    assert gather["attention_kernel"] != "flex"
    assert "gather kernel" in flex["flops_counted_method"]
    # the layout's work: what the gather kernel counts for the same layout (no N x N formula)
    assert flex["flops_counted"] == pytest.approx(gather["flops_counted"], rel=0.05)
    settings = env.settings  # full attention's analytic count at the same shape (its N x N product)
    full = build_attention("full", settings.heads * settings.head_dim, settings.heads, {}, max_len=N).flops(2, N)
    assert flex["flops_counted"] < 0.6 * full


@pytest.mark.slow
def test_compiled_flex_case_is_primed_at_its_own_length(tmp_path, monkeypatch):
    """The CUDA branch itself: FlexAttention compiled (forced on a CPU), inside the worker and its FLOP count."""
    monkeypatch.setenv("ATTNBENCH_FLEX_COMPILE", "1")
    result = probe_case(case("window", "flex"), env_for(tmp_path))
    assert result["status"] == "ok", result.get("message")
    assert result["attention_kernel"] == "flex" and "compiled" in result["attention_kernel_why"]
    assert result["primed_at"] == N
    # compiling takes seconds; a primed step of 2 x 512 tokens takes milliseconds
    assert result["cold_step_s"] < 1.0, result["cold_step_s"]
