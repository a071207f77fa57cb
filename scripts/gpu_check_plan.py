"""The GPU check's plan (scripts/gpu_check.py, which runs it): its four stages and their commands, from the config
file as written, and their time budget on one A100/H100-class GPU, estimated from start-up, compile and analytic
FLOP costs (scripts/lra_cost_time.py); ``--dry-run`` prints both."""
from __future__ import annotations

import importlib.util
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

STAGE_KEYS = ("tests", "train", "bench", "table")

#: the test files with CUDA tests: all of tests/harness/run/test_cuda.py, and the CUDA cases of the others (``-k cuda``)
CUDA_TEST_FILES = ("tests/harness/run/test_cuda.py", "tests/variants/test_flex_blocks.py",
                   "tests/harness/run/test_train_loop.py", "tests/harness/bench/test_bench_cuda.py",
                   "tests/harness/run/test_device_splits.py", "tests/variants/test_linear.py",
                   "tests/harness/measure/test_memory_estimate.py")

# Time budget on one A100/H100-class GPU, estimated (see the estimate_* functions): what each command costs
# besides its compute. A Python process that imports torch and starts CUDA takes about 5 s.
TESTS_S = 135.0       # ~80 CUDA tests of milliseconds each; the peak-memory cases (4K-16K tokens), the sweep
#                      worker's fresh processes, pytest and CUDA start-up dominate, and each FlexAttention
#                      compilation (a new shape or layout kind: about 3 in all) adds ~15 s
DATA_S_PER_EXAMPLE = 1.2e-3  # generating the ListOps data once (1.2 ms an example at 256-1023 tokens, on a CPU)
RUN_START_S = 10.0    # a training run: start-up, model, loading the data, evaluation passes
BENCH_START_S = 8.0   # one variant's sweep: attnbench and pytest start-up, the matmul probe's fresh process
CASE_S = 5.0          # one sweep case besides its steps: its fresh process (start-up, CUDA context, priming)
FP32_FLOPS = 10e12    # float32 without tensor cores (the sweep's float32): half an A100's 19.5 TFLOP/s
TABLE_S = 5.0
#: compiling: FlexAttention's forward and backward for one shape (Triton, cold cache; window, sparse and local run
#: it on CUDA: each sweep case, each training run's first steps and evaluation), and a whole model under
#: ``train.compile: true`` (inductor, forward and backward). Estimates until a GPU run measures them
FLEX_COMPILE_S = 15.0
MODEL_COMPILE_S = 45.0
#: ``make gpu-check``'s install before scripts/gpu_check.py: a venv over the node's torch and the wheelhouse's
#: wheels with no index (``make wheelhouse``); from a package index instead, a few minutes more (docs/gpu.md)
INSTALL_S = 45.0
#: what the whole check, the install included, should stay under: a 15-minute machine lease with time to rerun it
TOTAL_BUDGET_S = 8 * 60.0
#: hard limits per command (a hung command is killed; the stage then fails): generous multiples of the budget
LIMITS_S = {"tests": 600, "train": 300, "bench": 600, "aggregate": 120}


@dataclass
class Command:
    stage: str
    argv: list[str]
    limit_s: float
    what: str = ""

    def __str__(self) -> str:
        return shlex.join(self.argv)


@dataclass
class Stage:
    key: str
    title: str
    commands: list[Command] = field(default_factory=list)
    budget_s: float = 0.0
    writes: str = ""


def attnbench_cmd() -> list[str]:
    """The attnbench of this Python's environment (the venv's console script, else ``python -m``)."""
    exe = Path(sys.executable).with_name("attnbench")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "attnbench.harness.cli"]


def read_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def plan(config_path: Path, out: Path, cores: int) -> list[Stage]:
    """The four stages and their commands, from the config file as written (no validation, no torch)."""
    raw = read_yaml(config_path)
    ab, cfg = attnbench_cmd(), ["--config", str(config_path)]
    variants = list(raw.get("variants", {}))
    bench_variants = list((raw.get("bench") or {}).get("variants") or variants)
    seeds = raw.get("seeds", [0])
    runs, bench = out / "runs", out / "bench"
    tests = Stage("tests", "the variant tests on CUDA", writes="(pytest's report)")
    tests.commands.append(Command("tests", [sys.executable, "-m", "pytest", *CUDA_TEST_FILES, "-k", "cuda", "-q",
                                            "-ra", "-p", "no:cacheprovider"], LIMITS_S["tests"]))
    train = Stage("train", "every variant trains the config's task(s)", writes=f"{runs}/, {out}/summary.csv")
    for task in raw.get("tasks", {}):
        for variant in variants:
            for seed in seeds:
                train.commands.append(Command(
                    "train", ab + ["train", *cfg, "--task", task, "--variant", variant, "--seed", str(seed), "--out",
                                   str(runs / task / variant / f"seed{seed}"), "--strict", "--no-progress"],
                    LIMITS_S["train"], f"{task}/{variant}/seed{seed}"))
    train.commands.append(Command("train", ab + ["aggregate", *cfg, "--runs", str(runs),
                                                 "--out", str(out / "summary.csv")], LIMITS_S["aggregate"]))
    sweep = Stage("bench", "the efficiency sweep of every variant", writes=f"{bench}/, {out}/bench.csv")
    for variant in bench_variants:
        sweep.commands.append(Command("bench", ab + ["bench", *cfg, "--variant", variant, "--cores", str(cores),
                                                     "--out", str(bench / f"{variant}.json")],
                                      LIMITS_S["bench"], variant))
    sweep.commands.append(Command("bench", ab + ["aggregate-bench", "--inputs",
                                                 *[str(bench / f"{v}.json") for v in bench_variants],
                                                 "--out", str(out / "bench.csv")], LIMITS_S["aggregate"]))
    table = Stage("table", "one table: variant, step time, peak memory, accuracy, the sweep's 4K/16K cells",
                  writes=f"{out}/summary.md", budget_s=TABLE_S)
    return [tests, train, sweep, table]


# ---------------------------------------------------------------- the time budget

def estimate_budget(stages: list[Stage], config: dict) -> None:
    """Fill in each stage's expected seconds on one A100/H100-class GPU: fixed start-up costs (above) plus the
    compute of the analytic FLOPs (scripts/lra_cost_time.py: its rate for training in bf16 and for the sweep's
    bfloat16, FP32_FLOPS for its float32)."""
    import lra_cost_time as cost  # a sibling script (imported here: it imports torch)

    from attnbench.harness.bench.settings import bench_settings
    from attnbench.variants import build_attention

    by = {s.key: s for s in stages}
    by["tests"].budget_s = TESTS_S
    runs = [c.what.split("/") for c in by["train"].commands if c.what]
    by["train"].budget_s = data_s(config) + sum(RUN_START_S + cost.run_cost(config, task, variant).hours * 3600
                                        + run_compile_s(config, task, variant) for task, variant, _ in runs)
    s, rate = bench_settings(config), cost.Rate()
    steps = s.warmup + s.repeats * s.rounds + 3  # timed, and the probe's priming, measured and counted steps
    seconds = 0.0
    for variant in (c.what for c in by["bench"].commands if c.what):
        seconds += BENCH_START_S
        backends = [b for b in s.backends.get(variant, ["default"]) if b != "xformers" or xformers_installed()]
        cases = len(backends) * len(s.scopes)  # a block's MLP is not counted; xformers without it costs nothing
        for n in s.cuda_lengths:
            layer = build_attention(variant, s.heads * s.head_dim, s.heads, s.variant_params.get(variant, {}),
                                    max_len=n)
            for batch in s.batch_sizes:
                for mode in s.modes:
                    flops = layer.flops(batch, n) * (3 if mode == "forward_backward" else 1)
                    for dtype in s.cuda_dtypes:
                        step_s = flops / (FP32_FLOPS if dtype == "float32" else rate.core)
                        seconds += cases * (CASE_S + steps * step_s + (FLEX_COMPILE_S if runs_flex(layer) else 0))
    by["bench"].budget_s = seconds


def xformers_installed() -> bool:
    """Whether xformers is installed here (not imported: without it the sweep's xformers cases are
    ``unavailable`` before any process starts)."""
    return importlib.util.find_spec("xformers") is not None


def data_s(config: dict) -> float:
    """Seconds to generate the tasks' data once (ListOps' generator, the only one the check uses)."""
    return sum(DATA_S_PER_EXAMPLE * sum(task.get("data", {}).get(k, 0) for k in ("n_train", "n_val", "n_test"))
               for task in config["tasks"].values())


def runs_flex(layer) -> bool:
    """Whether a layer runs FlexAttention on a CUDA device (compiled, so each new shape compiles)."""
    from attnbench.variants.lib.flex_blocks import BlockKernelChoice

    return isinstance(layer, BlockKernelChoice) and layer.cfg.kernel in ("auto", "flex")


def run_compile_s(config: dict, task: str, variant: str) -> float:
    """Seconds a training run spends compiling: its model under ``train.compile``, its FlexAttention layers."""
    from attnbench.harness.config import resolve_run
    from attnbench.variants import build_attention

    run = resolve_run(config, task, variant, 0)
    layer = build_attention(variant, run["model"]["dim"], run["model"]["heads"], run["variant"]["params"], max_len=64)
    if run["train"].get("compile"):  # the model's compilation includes its FlexAttention
        return MODEL_COMPILE_S
    return FLEX_COMPILE_S if runs_flex(layer) else 0.0


def fmt_s(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def print_plan(stages: list[Stage], out: Path, budget_known: bool) -> None:
    for stage in stages:
        letter = "abcd"[STAGE_KEYS.index(stage.key)]
        budget = f" (about {fmt_s(stage.budget_s)})" if budget_known else ""
        print(f"\nstage {letter}. {stage.key}: {stage.title}{budget}")
        for c in stage.commands:
            print(f"  $ {c}")
        if stage.key == "table":
            print(f"  (in this script: reads {out}/runs/**/record.json and {out}/bench/*.json)")
        print(f"  writes {stage.writes}")
    if budget_known:
        total = sum(s.budget_s for s in stages)
        print(f"\nexpected time: about {fmt_s(total)} on one A100/H100-class GPU, about {fmt_s(total + INSTALL_S)} "
              f"with `make gpu-check`'s install from a wheelhouse (about {fmt_s(INSTALL_S)}); "
              f"{'within' if total + INSTALL_S <= TOTAL_BUDGET_S else 'OVER'} the {fmt_s(TOTAL_BUDGET_S)} it is "
              "meant to fit (estimated from start-up, compile and analytic FLOP costs, not measured; a slower GPU "
              "takes longer); each command is stopped after " + ", ".join(f"{k} {v} s" for k, v in LIMITS_S.items()))
