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

This file prints the two tables; the time model is in scripts/lra_cost_time.py, the memory one in
scripts/lra_cost_memory.py (sibling modules, imported as Python imports a script's neighbours: run it as
``python scripts/lra_cost.py``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lra_cost_memory import FIT_SHARE, GPU_MEMORY_GB, config_memory, memory_table
from lra_cost_time import BANDWIDTH_TBS, EFFICIENCY, PEAK_TFLOPS, Rate, config_costs, markdown_table

from attnbench.harness.config import load_config

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "config" / "lra.yaml"


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
