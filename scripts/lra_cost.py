"""Expected GPU time and attention memory of a config's training runs, from analytic FLOPs and bytes: a planning
aid for SLURM time limits and for batch sizes that fit a GPU.

    python scripts/lra_cost.py                           # config/lra.yaml, Markdown tables on stdout
    python scripts/lra_cost.py --config my.yaml --peak-tflops 989 --bandwidth-tbs 3.35   # an H100 SXM
    python scripts/lra_cost.py --gpu-memory-gb 40        # the memory table for a 40 GB GPU

For every (task, variant) of the config (and each distilled student), from the resolved run settings:

- forward FLOPs of one example = layers x (the variant's own ``flops(1, n)`` of one attention layer, built with
  ``attnbench.variants.build_attention`` for the task's length n, projections included, + the MLP's two matmuls
  2 x 2 x n x dim x mlp_dim) + the classifier head's matmuls; a paired task (Retrieval) runs two sequences per
  example. Embeddings are lookups (counted as 0), and LayerNorm, softmax, GELU, dropout and the optimiser are
  elementwise work, left out of the count (they cost memory traffic, which the efficiency below absorbs);
- training FLOPs = 3 x forward (a backward pass counted as twice the forward) x batch x steps; a distilled
  student adds its teacher's forward pass per step;
- evaluation FLOPs = forward x (validation size x validation passes + test size once); a pass every
  ``eval_every`` steps and one at the end, as the training loop does;
- time = FLOPs / an achievable rate, in two parts: the attention core (the variant's FLOPs less its projections:
  scores and weighted sums along the sequence) at ``--efficiency`` (default 25 %) of the GPU's bf16 dense peak
  (default an A100's, 312 TFLOP/s), since its matmuls run along the length whatever the model's width; the
  width-bound matmuls (projections, MLP, head) at that rate scaled down by a roofline for narrow models
  (``Rate.dense``, ``--bandwidth-tbs``).

The estimate is a lower bound in spirit: the gather-based kernels of window, sparse and lsh run well below the
rate of dense matmuls, so their times are the likeliest to be short; ``make gpu-check`` measures real step times
on your GPU (step time x steps is the better estimate once you have it).

Memory (a second table): the bytes of the attention's quadratic tensors, from the variant's own analytic
``stack_bytes`` (``materialized_bytes`` and ``saved_bytes``, variants/base.py: N x N logits, weights and dropout
masks, at least; 0 for every mechanism that holds only O(N x d) or O(N x w) per layer, so only the runs of
variants that form N x N tensors get a row), on a batch with padding, at the run's precision:

- training: ``layers`` layers at the micro-batch ``batch_size / accumulate`` (two sequences per example on a
  paired task): the last layer's forward peak while the layers before it keep their saved tensors;
- evaluation: one layer's forward at ``eval_batch_size`` (no gradients: a layer keeps nothing once it has run);
- against the cap a run allocates under on a GPU of ``--gpu-memory-gb`` (80% of it: harness/measure/memory.py's
  ``cuda_memory_cap``): over the cap is a certain ``oom`` record; over FIT_SHARE of it leaves too little for the
  rest (parameters and optimiser state, O(N x d) activations, the backward's own N x N gradients, the caching
  allocator's rounding). Either gets a suggestion: the smallest ``train.accumulate`` (dividing the batch) and the
  largest ``train.eval_batch_size`` whose attention tensors take at most FIT_SHARE of the cap. Neither changes a
  result: micro-batches sum to the same update, and evaluation is per example.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from attnbench.harness.config import load_config, resolve_run
from attnbench.harness.measure.memory import cuda_memory_cap
from attnbench.variants import build_attention

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "config" / "lra.yaml"

#: an A100 (SXM, 80 GB): bf16 dense tensor-core peak and HBM bandwidth (NVIDIA's data sheet)
PEAK_TFLOPS = 312.0
BANDWIDTH_TBS = 2.0
#: share of the peak a whole training step reaches when its matmuls are compute-bound: eager PyTorch with bf16
#: autocast and fused attention; tuned, compiled GPT-2-small-sized training is commonly reported at 30-40 %, and these
#: models are smaller, uncompiled, and spend more of each step in elementwise kernels
EFFICIENCY = 0.25

#: (train, validation, test) examples of LRA's own data (shared/notes/lra-facts.md): the release's splits where a
#: task reads it; IMDb and CIFAR-10 carve validation from train with the task's val_fraction (below)
LRA_SPLITS = {
    "listops": (96_000, 2_000, 2_000),
    "retrieval": (147_086, 18_090, 17_437),
    "pathfinder": (160_000, 20_000, 20_000),  # 80/10/10 of the 200k images of one difficulty
    "pathx": (160_000, 20_000, 20_000),
}
IMDB_TRAIN_TEST = (25_000, 25_000)
CIFAR10_TRAIN_TEST = (50_000, 10_000)
DIGITS = 1_797  # scikit-learn's 8x8 digits
#: classes per task, for the head's matmuls (2 elsewhere)
CLASSES = {"listops": 10, "image": 10, "textcls": 4}

#: the GPU the memory table is for: an A100 or H100 of 80 GB (GB = 1e9 bytes here)
GPU_MEMORY_GB = 80.0
#: the share of the training cap that a suggestion gives the attention's quadratic tensors (the rest: parameters,
#: optimiser state, O(N x d) activations, the backward's own N x N gradients, the allocator's rounding)
FIT_SHARE = 0.75
#: the dtype a run's forward computes in under ``train.precision`` on a GPU (auto: bf16 on Ampere and later)
PRECISION_DTYPE = {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class TaskShape:
    """What the cost of a task's runs depends on besides the model: its length and its split sizes."""

    seq_len: int
    paired: bool
    train: int
    val: int
    test: int
    classes: int


def task_shape(task: str, data: dict) -> TaskShape:
    """The length and split sizes of a task under its resolved data settings (without preparing the data)."""
    classes = CLASSES.get(task, 2)
    if task == "listops":
        sizes = LRA_SPLITS["listops"] if data["source"] == "files" else (data["n_train"], data["n_val"],
                                                                          data["n_test"])
        return TaskShape(data["max_length"], False, *sizes, classes)
    if task in ("pathfinder", "pathx"):
        sizes = LRA_SPLITS[task] if data["source"] == "files" else (data["n_train"], data["n_val"], data["n_test"])
        return TaskShape(data["resolution"] ** 2, False, *sizes, classes)
    if task == "retrieval":
        return TaskShape(data["seq_len"], True, *LRA_SPLITS["retrieval"], classes)
    if task == "image":
        if data["source"] == "cifar10":
            train, test = CIFAR10_TRAIN_TEST
            n = 1024
        else:
            test = round(DIGITS * data["test_fraction"])
            train, n = DIGITS - test, 64
        val = round(train * data["val_fraction"])
        return TaskShape(n, False, train - val, val, test, classes)
    if task in ("text", "textcls"):
        train, test = IMDB_TRAIN_TEST  # textcls: IMDb's sizes stand in (the source decides; only evaluation uses them)
        val = round(train * data["val_fraction"])
        return TaskShape(data["seq_len"], False, train - val, val, test, classes)
    raise ValueError(f"lra_cost: no shape known for task {task!r}; add it to task_shape()")


def forward_flops_per_example(run: dict, shape: TaskShape) -> tuple[int, int]:
    """Forward FLOPs of one example under a resolved run config, as (attention core, width-bound matmuls):
    see the module doc for what is counted."""
    model = run["model"]
    n = shape.seq_len + (model["pooling"] == "cls")
    attn = build_attention(run["variant"]["name"], model["dim"], model["heads"], run["variant"]["params"], max_len=n)
    projections = attn.projection_flops(1, n)
    core = model["layers"] * (attn.flops(1, n) - projections)
    dense = model["layers"] * (projections + 2 * 2 * n * model["dim"] * model["mlp_dim"])
    towers = 2 if shape.paired else 1
    width = model["dim"] * (towers if model["interaction"] == "concat" or not shape.paired else 4)
    head = 2 * (width * model["mlp_dim"] + model["mlp_dim"] * shape.classes)
    return towers * core, towers * dense + head


def eval_passes(steps: int, eval_every: int) -> int:
    """Validation passes of a run: every ``eval_every`` steps and at the last step."""
    return steps // eval_every + (steps % eval_every != 0)


@dataclass(frozen=True)
class Rate:
    """The assumed GPU: bf16 dense peak (TFLOP/s), memory bandwidth (TB/s), and the share of the peak that a
    training step's compute-bound work reaches."""

    peak_tflops: float = PEAK_TFLOPS
    bandwidth_tbs: float = BANDWIDTH_TBS
    efficiency: float = EFFICIENCY

    @property
    def core(self) -> float:
        """FLOP/s of the attention core."""
        return self.peak_tflops * 1e12 * self.efficiency

    def dense(self, dim: int) -> float:
        """FLOP/s of the width-bound matmuls of a model of width ``dim``: the core's rate times the roofline of
        its (tokens x dim) @ (dim x 3 dim) projections in bf16, whose arithmetic intensity is about 0.75 dim
        FLOP/byte; below the GPU's ridge point (peak / bandwidth, 156 FLOP/byte on an A100) they are
        memory-bound: dim 512 and 256 are not, 128 gets 62 % of the rate, 32 only 15 %."""
        ridge = self.peak_tflops / self.bandwidth_tbs
        return self.core * min(1.0, 0.75 * dim / ridge)

    @property
    def full_width(self) -> int:
        """The narrowest model whose matmuls are compute-bound."""
        return math.ceil(self.peak_tflops / self.bandwidth_tbs / 0.75)


@dataclass(frozen=True)
class RunCost:
    task: str
    label: str
    seq_len: int
    batch: int
    steps: int
    core_flops: float
    dense_flops: float
    dim: int
    rate: Rate

    @property
    def flops(self) -> float:
        return self.core_flops + self.dense_flops

    @property
    def hours(self) -> float:
        return (self.core_flops / self.rate.core + self.dense_flops / self.rate.dense(self.dim)) / 3600


def run_cost(config: dict, task: str, variant: str, method: str = "labels", rate: Rate = Rate()) -> RunCost:
    """The FLOPs and expected time of one run of ``config`` (seed 0; every seed costs the same): training
    (3 x forward per example; a distilled student adds its teacher's forward) and evaluation."""
    run = resolve_run(config, task, variant, 0, method)
    shape = task_shape(task, run["task"]["data"])
    train = run["train"]
    fwd = forward_flops_per_example(run, shape)
    teacher = (0, 0)
    if method == "distill":
        teacher = forward_flops_per_example(resolve_run(config, task, run["method"]["teacher"], 0), shape)
    examples = train["batch_size"] * train["steps"]
    evaluated = shape.val * eval_passes(train["steps"], train["eval_every"]) + shape.test
    core, dense = ((3 * f + t) * float(examples) + f * float(evaluated) for f, t in zip(fwd, teacher, strict=True))
    label = variant if method == "labels" else f"distilled[{variant}]"
    return RunCost(task, label, shape.seq_len, train["batch_size"], train["steps"], core, dense,
                   run["model"]["dim"], rate)


def config_costs(config: dict, rate: Rate = Rate()) -> list[RunCost]:
    """Every (task, variant) run of the config, then each distilled student, task by task."""
    out = []
    for task in config["tasks"]:
        out += [run_cost(config, task, v, rate=rate) for v in config["variants"]]
        out += [run_cost(config, task, v, "distill", rate=rate) for v in config["distill"]["students"]]
    return out


@dataclass(frozen=True)
class RunMemory:
    """The attention's quadratic tensors of one run on a GPU (see the module doc), in bytes, against the cap of
    the GPU's memory that a run allocates under, and the settings that would fit them into FIT_SHARE of it."""

    task: str
    label: str
    seq_len: int
    paired: bool
    batch: int
    accumulate: int
    eval_batch: int
    train_bytes: int
    eval_bytes: int
    cap: int
    #: the smallest ``train.accumulate`` (a divisor of the batch) whose training fits; None: not even one example
    fit_accumulate: int | None
    #: the largest ``train.eval_batch_size`` (at most the configured one) that fits; None: not even one example
    fit_eval_batch: int | None

    @property
    def budget(self) -> float:
        return FIT_SHARE * self.cap

    def advice(self) -> str:
        """'fits', or 'tight' (over FIT_SHARE of the cap) / '**oom**' (over the cap) with the settings that fit."""
        worst = max(self.train_bytes, self.eval_bytes)
        if worst <= self.budget:
            return "fits"
        fixes = []
        if self.train_bytes > self.budget:
            fixes.append(f"accumulate {self.fit_accumulate}" if self.fit_accumulate else "no accumulate fits")
        if self.eval_bytes > self.budget:
            fixes.append(f"eval_batch_size {self.fit_eval_batch}" if self.fit_eval_batch
                         else "no eval_batch_size fits")
        return ("**oom**" if worst > self.cap else "tight") + ": " + ", ".join(fixes)


def run_memory(config: dict, task: str, variant: str, method: str = "labels",
               gpu_memory_gb: float = GPU_MEMORY_GB) -> RunMemory:
    """The attention memory of one run of ``config`` on a GPU of ``gpu_memory_gb`` (GB, 1e9 bytes): training at
    its micro-batch (a distilled student's teacher runs its evaluation forward there too) and evaluation at its
    ``eval_batch_size``, both on batches with padding, at the dtype of its ``train.precision``."""
    run = resolve_run(config, task, variant, 0, method)
    shape = task_shape(task, run["task"]["data"])
    train, towers = run["train"], 2 if shape.paired else 1
    kw = {"padded": True, "dtype": PRECISION_DTYPE[train["precision"]], "device": "cuda"}

    def stack(settings: dict):
        model = settings["model"]
        n = shape.seq_len + (model["pooling"] == "cls")
        attn = build_attention(settings["variant"]["name"], model["dim"], model["heads"],
                               settings["variant"]["params"], max_len=n, dropout=model["attn_dropout"])
        return lambda examples, training: attn.stack_bytes(model["layers"], towers * examples, n, training=training,
                                                           **kw)

    student = stack(run)
    teacher = stack(resolve_run(config, task, run["method"]["teacher"], 0)) if method == "distill" else None

    def train_bytes(examples: int) -> int:
        return max(student(examples, True), teacher(examples, False) if teacher else 0)

    def eval_bytes(examples: int) -> int:
        return student(examples, False)

    cap = cuda_memory_cap(None, int(gpu_memory_gb * 1e9), int(gpu_memory_gb * 1e9))
    batch, accumulate, eval_batch = train["batch_size"], train["accumulate"], train["eval_batch_size"]
    fit_accumulate = next((k for k in range(1, batch + 1)
                           if batch % k == 0 and train_bytes(batch // k) <= FIT_SHARE * cap), None)
    fit_eval_batch = next((e for e in range(eval_batch, 0, -1) if eval_bytes(e) <= FIT_SHARE * cap), None)
    label = variant if method == "labels" else f"distilled[{variant}]"
    return RunMemory(task, label, shape.seq_len, shape.paired, batch, accumulate, eval_batch,
                     train_bytes(batch // accumulate), eval_bytes(eval_batch), cap, fit_accumulate, fit_eval_batch)


def config_memory(config: dict, gpu_memory_gb: float = GPU_MEMORY_GB) -> list[RunMemory]:
    """Every run of the config (as ``config_costs`` orders them) whose attention forms quadratic tensors."""
    out = []
    for task in config["tasks"]:
        runs = [(v, "labels") for v in config["variants"]] + [(v, "distill") for v in config["distill"]["students"]]
        out += [m for v, method in runs if (m := run_memory(config, task, v, method, gpu_memory_gb)).train_bytes
                or m.eval_bytes]
    return out


def fmt_gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:,.1f} GB"


def memory_table(memory: list[RunMemory], gpu_memory_gb: float = GPU_MEMORY_GB) -> str:
    """One row per run whose attention forms quadratic tensors: its micro-batch and the bytes of those tensors in
    training, its evaluation batch and theirs in evaluation, and whether they fit a GPU of ``gpu_memory_gb``."""
    cap = fmt_gb(cuda_memory_cap(None, int(gpu_memory_gb * 1e9), int(gpu_memory_gb * 1e9)))
    head = ["task", "run", "N", "batch / accumulate", "training", "eval_batch_size", "evaluation",
            f"{gpu_memory_gb:g} GB GPU (cap {cap})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in memory:
        towers = " (x2 towers)" if m.paired else ""
        lines.append("| " + " | ".join([m.task, m.label, f"{m.seq_len:,}", f"{m.batch} / {m.accumulate}{towers}",
                                        fmt_gb(m.train_bytes), f"{m.eval_batch}{towers}", fmt_gb(m.eval_bytes),
                                        m.advice()]) + " |")
    return "\n".join(lines)


def fmt_hours(h: float) -> str:
    if h < 1 / 60:
        return f"{h * 3600:.0f} s"
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def suggested_runtime_min(hours: float, margin: float = 2.0) -> int:
    """A wall-time limit for a run expected to take ``hours``: ``margin`` times it (data loading, evaluation
    overheads, a slower GPU, the estimate's own error), rounded up to 30 minutes."""
    return int(30 * math.ceil(hours * 60 * margin / 30))


def markdown_table(costs: list[RunCost]) -> str:
    """One row per task: its length, batch and steps, each run's expected time, and wall-time limits that cover
    its slowest run trained from labels (``resources.train.runtime_min``) and its slowest distilled student
    (``resources.distill.runtime_min``), at twice the estimate."""
    labels = list(dict.fromkeys(c.label for c in costs))
    by = {(c.task, c.label): c for c in costs}
    head = ["task", "N", "batch", "steps", *labels, "train runtime_min", "distill runtime_min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in dict.fromkeys(c.task for c in costs):
        runs = [by[task, label] for label in labels if (task, label) in by]
        cells = [task, f"{runs[0].seq_len:,}", str(runs[0].batch), f"{runs[0].steps:,}"]
        cells += [fmt_hours(by[task, label].hours) if (task, label) in by else "" for label in labels]
        for distilled in (False, True):
            group = [c.hours for c in runs if c.label.startswith("distilled[") == distilled]
            cells.append(str(suggested_runtime_min(max(group))) if group else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline config (default: config/lra.yaml)")
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS,
                   help=f"the GPU's bf16 dense peak in TFLOP/s (default {PEAK_TFLOPS:g}: an A100; H100 SXM 989)")
    p.add_argument("--bandwidth-tbs", type=float, default=BANDWIDTH_TBS,
                   help=f"its memory bandwidth in TB/s (default {BANDWIDTH_TBS:g}: an A100; H100 SXM 3.35)")
    p.add_argument("--efficiency", type=float, default=EFFICIENCY,
                   help=f"share of the peak a compute-bound training step reaches (default {EFFICIENCY:g})")
    p.add_argument("--gpu-memory-gb", type=float, default=GPU_MEMORY_GB,
                   help=f"the GPU's memory in GB, for the memory table (default {GPU_MEMORY_GB:g}: an A100 or H100)")
    args = p.parse_args(argv)
    config = load_config(args.config)
    rate = Rate(args.peak_tflops, args.bandwidth_tbs, args.efficiency)
    costs = config_costs(config, rate)
    print(markdown_table(costs))
    seeds = len(config["seeds"])
    total = sum(c.hours for c in costs) * seeds
    print(f"\nOne run per cell (x {seeds} seed{'s' * (seeds > 1)}: {total:.0f} GPU-hours in all). Assumed: "
          f"{rate.efficiency:.0%} of {rate.peak_tflops:g} TFLOP/s bf16 ({rate.core / 1e12:.0f} TFLOP/s) for the "
          f"attention core and for the matmuls of models at least {rate.full_width} wide, less for narrower ones "
          f"(memory-bound at {rate.bandwidth_tbs:g} TB/s); FLOPs: analytic, 3 x forward per training example.")
    memory = config_memory(config, args.gpu_memory_gb)
    print()
    if not memory:
        print("Attention memory: no run of this config forms tensors beyond O(N x d) per layer.")
        return 0
    print(memory_table(memory, args.gpu_memory_gb))
    print(f"\nAttention memory: the bytes of the N x N tensors (logits, weights, dropout masks) that these runs' "
          f"layers hold at their high point, at least (variants' analytic `stack_bytes`, batches with padding); every "
          f"other run holds O(N x d) or O(N x w) per layer. Training: all layers at the micro-batch; evaluation: one "
          f"layer. A run "
          f"allocates under 80% of the GPU's memory; over it is an `oom` record, over {FIT_SHARE:.0%} of it "
          f"(tight) leaves too little for the rest; the suggested `train.accumulate` / `train.eval_batch_size` bring "
          f"the tensors under {FIT_SHARE:.0%} of the cap and change no result.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
