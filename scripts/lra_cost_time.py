"""The time table of scripts/lra_cost.py (whose doc says what is counted and how): the length and split sizes of a
task, the forward FLOPs of one example, the assumed GPU's rates, and each run's FLOPs and expected hours, with the
Markdown table of them and the wall-time limits they suggest."""
from __future__ import annotations

import math
from dataclasses import dataclass

from attnbench.harness.config import resolve_run
from attnbench.variants import build_attention

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
    scripts/lra_cost.py's doc says what is counted."""
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
