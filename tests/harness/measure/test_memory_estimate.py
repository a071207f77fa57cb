"""The variants' analytic memory estimates (``Attention.materialized_bytes``, ``saved_bytes``, ``stack_bytes``,
variants/base.py) against what a forward really allocates on the CPU, and scripts/lra_cost.py's memory table.

What a forward allocates is measured two ways that do not read the estimates' code:

- ``LiveQuadratic``, a TorchDispatchMode: it sees every op's outputs below autograd, keeps a weak reference to
  each new storage of a tensor with two dimensions of size N (the quadratic ones: the parameters, the inputs and
  anything O(N x d) are left out), and adds up the bytes alive after each op: the forward's peak, and what is
  still alive when it has returned (what autograd keeps);
- ``saved_quadratic``: ``torch.autograd.graph.saved_tensors_hooks``, the unique storages of the quadratic tensors
  that autograd saves for the backward.

The estimates are asked for the CPU (``device="cpu"``: its dropout keeps a float noise tensor where CUDA's keeps a
1-byte mask); the CUDA twin runs where torch sees a GPU.
"""
from __future__ import annotations

import re

import pytest
import torch
import yaml
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from attnbench.harness.config import load_config, validate_config
from attnbench.harness.run.model import EncoderClassifier, ModelConfig
from attnbench.variants import VARIANTS, build_attention
from conftest import REPO, load_script

DIM, HEADS, BATCH = 16, 2, 3
#: the estimate and the measurement agree to this ratio (today exactly: the estimate follows the code's allocations)
BAND = (0.9, 1.1)


class LiveQuadratic(TorchDispatchMode):
    """The bytes of the quadratic tensors (two dimensions of size ``n``) that the ops run inside allocate, alive at
    once: ``peak`` over the block, ``alive()`` now. Storages that existed before (``exclude``) do not count."""

    def __init__(self, n: int, exclude: set[int] = frozenset()):
        super().__init__()
        self.n, self.exclude = n, set(exclude)
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def alive(self) -> int:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            del self.live[key]
        return sum(nbytes for _, nbytes in self.live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.alive()  # what the last op's caller dropped is gone before this op allocates
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and sum(size == self.n for size in t.shape) >= 2:
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.live and key not in self.exclude:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
        self.peak = max(self.peak, self.alive())
        return out


def storages(module: torch.nn.Module, *tensors: torch.Tensor) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers(), *tensors)}


def measure(layer, x, mask, n: int, training: bool) -> tuple[int, int]:
    """(peak, kept) quadratic bytes of one forward: kept is what is alive once it has returned."""
    layer.train(training)
    with torch.set_grad_enabled(training):
        mode = LiveQuadratic(n, storages(layer, x))
        with mode:
            out = layer(x, mask)
        kept = mode.alive()
        del out
    return mode.peak, kept


def saved_quadratic(layer, x, mask, n: int) -> int:
    """The bytes of the unique storages of the quadratic tensors autograd saves in one training forward."""
    own, seen = storages(layer, x), {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if sum(size == n for size in t.shape) >= 2 and storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    layer.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, mask)
    return sum(seen.values())


def inputs(n: int, padded: bool, dtype=torch.float32):
    torch.manual_seed(0)
    x = torch.randn(BATCH, n, DIM, dtype=dtype)
    mask = torch.ones(BATCH, n, dtype=torch.bool)
    if padded:
        mask[0, -5:] = False
    return x, mask


def within(estimate: int, measured: int) -> bool:
    return measured > 0 and BAND[0] <= estimate / measured <= BAND[1]


# ---------------------------------------------------------------- synthesizer: the one that forms N x N tensors

SYNTH_CASES = {
    "lra-random-dot-padded": ({"kind": "random", "dot_product": True}, True, torch.float32),   # LRA's Synthesizer
    "dense-dot-padded-bf16": ({"kind": "dense", "dot_product": True}, True, torch.bfloat16),  # Path-X's, autocast
    "dense-padded": ({"kind": "dense"}, True, torch.float32),
    "random-unpadded": ({"kind": "random"}, False, torch.float32),     # (1, H, N, N) weights, copied by the matmul
    "factorized-padded": ({"kind": "random", "factorized": True, "factor_rank": 4}, True, torch.float32),
    "dense-dot-unpadded-f64": ({"kind": "dense", "dot_product": True}, False, torch.float64),
}


@pytest.mark.parametrize(("training", "dropout"), [(False, 0.0), (True, 0.0), (True, 0.1)],
                         ids=["eval", "train", "train-dropout"])
@pytest.mark.parametrize("case", list(SYNTH_CASES))
def test_synthesizer_estimate_is_what_its_forward_allocates(case, training, dropout):
    params, padded, dtype = SYNTH_CASES[case]
    measured, estimated = {}, {}
    for n in (64, 128):
        layer = build_attention("synthesizer", DIM, HEADS, params, max_len=n, dropout=dropout)
        x, mask = inputs(n, padded, torch.float64 if dtype == torch.float64 else torch.float32)
        if dtype == torch.float64:
            layer.double()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            peak, kept = measure(layer, x, mask, n, training)
            saved = saved_quadratic(layer, x, mask, n) if training else 0
        kw = {"padded": padded, "dtype": dtype, "device": "cpu"}
        est = layer.materialized_bytes(BATCH, n, training=training, **kw)
        est_saved = layer.saved_bytes(BATCH, n, **kw) if training else 0
        assert within(est, peak), (n, est, peak)
        if training:
            assert within(est_saved, saved) and within(est_saved, kept), (n, est_saved, saved, kept)
        else:
            assert kept == 0  # evaluation keeps nothing
        measured[n], estimated[n] = peak, est
    # quadratic: twice the length, four times the bytes, measured and estimated alike
    assert measured[128] / measured[64] == pytest.approx(4, rel=0.05)
    assert estimated[128] == 4 * estimated[64]


def test_synthesizer_estimate_is_linear_in_the_batch_and_counts_lras_tensors():
    """The hand count of LRA's Retrieval form (random + dot product, padded) per (B, H, N, N) float32 tensor T:
    evaluation holds the scores, the logits, their masked copy and the weights (4 T); a CUDA training forward
    adds the dropped weights and a 1-byte mask (5.25 T) and keeps the weights, mask and dropped weights (2.25 T)."""
    layer = build_attention("synthesizer", 128, 4, {"kind": "random", "dot_product": True}, max_len=100, dropout=0.1)
    t = 8 * 4 * 100 * 100 * 4
    assert layer.materialized_bytes(8, 100) == 4 * t
    assert layer.materialized_bytes(8, 100, training=True) == 5.25 * t
    assert layer.saved_bytes(8, 100) == 2.25 * t
    assert layer.stack_bytes(4, 8, 100, training=True) == (3 * 2.25 + 5.25) * t
    assert layer.stack_bytes(4, 8, 100, training=False) == 4 * t
    assert layer.materialized_bytes(16, 100, dtype=torch.bfloat16) == 2 * layer.materialized_bytes(8, 100)
    assert layer.materialized_bytes(8, 100, dtype=torch.float64) == 2 * layer.materialized_bytes(8, 100)


@pytest.mark.parametrize("paired", [False, True], ids=["single", "paired"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_stack_bytes_is_what_a_whole_model_allocates(training, paired):
    """A model of 3 synthesizer blocks (LRA's form, its dropouts, padded batches): in training the last layer's
    peak while the earlier layers keep their saved tensors; in evaluation one layer's; a paired task runs both
    towers as one batch of twice the examples."""
    seq_len, batch = 63, 2
    n = seq_len + 1  # the CLS token
    cfg = ModelConfig(layers=3, dim=DIM, heads=HEADS, mlp_dim=32, attn_dropout=0.1, pooling="cls")
    torch.manual_seed(0)
    model = EncoderClassifier(cfg, "synthesizer", {"kind": "random", "dot_product": True}, vocab_size=11,
                              seq_len=seq_len, num_classes=2, paired=paired)
    tokens = torch.randint(1, 11, (batch, 2, seq_len) if paired else (batch, seq_len))
    tokens[..., -4:] = 0  # padding
    model.train(training)
    with torch.set_grad_enabled(training):
        mode = LiveQuadratic(n, storages(model))
        with mode:
            model(tokens)
    layer = model.attention_layers()[0]
    sequences = batch * (2 if paired else 1)
    est = layer.stack_bytes(3, sequences, n, training=training, device="cpu")
    assert within(est, mode.peak), (est, mode.peak)


# ---------------------------------------------------------------- every other variant: 0, and truly so

#: the variants that form N x N tensors by design, each with its estimate checked where it is tested (synthesizer
#: above; sparse_fixed, LRA's dense-mask Sparse Trans., in tests/variants/test_sparse_fixed.py)
QUADRATIC = ("synthesizer", "sparse_fixed")
OTHERS = [e.name for e in VARIANTS if e.name not in QUADRATIC]


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("name", OTHERS)
def test_a_variant_without_an_estimate_forms_no_quadratic_tensor(name, dropout, monkeypatch):
    """The default 0 is a claim: no tensor with two dimensions of N in a forward, evaluation or training. At 320
    tokens (above the CPU's dense path for block layouts, variants/lib/block_dense.py, switched off here anyway)."""
    import attnbench.variants.lib.block_dense as block_dense

    monkeypatch.setattr(block_dense, "MAX_TOKENS", 0)
    entry, n = VARIANTS.get(name), 320
    layer = build_attention(name, 32, 2, dict(entry.cls.small_params), max_len=n, dropout=dropout)
    torch.manual_seed(0)
    x, mask = torch.randn(2, n, 32), torch.ones(2, n, dtype=torch.bool)
    mask[0, -7:] = False
    for training in (False, True):
        if training and dropout and entry.cls.exact:
            continue  # SDPA with dropout on a CPU: torch's O(N^2) math fallback (the estimate is for fused GPU kernels)
        peak, _ = measure(layer, x, mask, n, training)
        assert layer.materialized_bytes(2, n, training=training, device="cpu") == 0
        assert peak == 0, f"{name} forms {peak} bytes of N x N tensors ({'training' if training else 'evaluation'})"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA device: its dropout keeps a 1-byte mask")
@pytest.mark.parametrize("case", ["lra-random-dot-padded", "dense-dot-padded-bf16"])
def test_cuda_synthesizer_estimate_is_what_its_forward_allocates(case):
    params, padded, dtype = SYNTH_CASES[case]
    n = 128
    layer = build_attention("synthesizer", DIM, HEADS, params, max_len=n, dropout=0.1).cuda()
    x, mask = (t.cuda() for t in inputs(n, padded))
    for training in (False, True):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            peak, kept = measure(layer, x, mask, n, training)
        kw = {"padded": padded, "dtype": dtype, "device": "cuda"}
        assert within(layer.materialized_bytes(BATCH, n, training=training, **kw), peak)
        if training:
            assert within(layer.saved_bytes(BATCH, n, **kw), kept)


# ---------------------------------------------------------------- scripts/lra_cost.py's memory table

@pytest.fixture(scope="module")
def lra_cost():
    return load_script("lra_cost")


@pytest.fixture(scope="module")
def lra_cost_memory():
    return load_script("lra_cost_memory")


@pytest.fixture(scope="module")
def lra_config():
    return load_config(REPO / "config" / "lra.yaml")


@pytest.mark.slow
def test_retrieval_memory_is_the_hand_count(lra_cost_memory, lra_config):
    """Retrieval's synthesizer (random + dot product, 4 layers, 4 heads, 4000 tokens, no CLS): per sequence a
    (4, 4000, 4000) float32 tensor T; training holds 3 x 2.25 T + 5.25 T per sequence of the micro-batch (two
    towers per example), evaluation 4 T per sequence."""
    m = lra_cost_memory.run_memory(lra_config, "retrieval", "synthesizer")
    t = 4 * 4000 * 4000 * 4
    micro = m.batch // m.accumulate
    assert (m.seq_len, m.paired) == (4000, True)
    assert m.train_bytes == 12 * t * 2 * micro and m.eval_bytes == 4 * t * 2 * m.eval_batch
    assert m.cap == int(0.8 * 80e9)


@pytest.mark.slow
def test_every_run_of_the_lra_config_fits_an_80_gb_gpu(lra_cost_memory, lra_config):
    memory = lra_cost_memory.config_memory(lra_config)
    assert {m.label for m in memory} == set(QUADRATIC)  # the variants that form N x N tensors
    assert {m.task for m in memory} == set(lra_config["tasks"])
    assert all(m.advice() == "fits" for m in memory), [(m.task, m.advice()) for m in memory]


@pytest.mark.slow
def test_without_its_settings_the_synthesizer_would_run_out_of_memory(lra_cost_memory, tmp_path):
    """config/lra.yaml without the synthesizer's per-task `train:` settings: the memory table flags Retrieval and
    Path-X as certain oom records (over the cap), and suggests the settings the config now has, or smaller."""
    raw = yaml.safe_load((REPO / "config" / "lra.yaml").read_text())
    for settings in raw["tasks"].values():
        synth = (settings.get("per_variant") or {}).get("synthesizer")
        if synth:
            synth.pop("train", None)
    config = validate_config(raw)
    lra = load_config(REPO / "config" / "lra.yaml")
    for task in ("retrieval", "pathx"):
        m = lra_cost_memory.run_memory(config, task, "synthesizer")
        assert m.train_bytes > m.cap and m.eval_bytes > m.cap and m.advice().startswith("**oom**: ")
        now = lra["tasks"][task]["per_variant"]["synthesizer"]["train"]
        assert m.fit_accumulate <= now["accumulate"] and m.fit_eval_batch >= now["eval_batch_size"]
    table = lra_cost_memory.memory_table(lra_cost_memory.config_memory(config))
    assert re.search(r"\| pathx \| synthesizer \| 16,384 \| 64 / 1 \| [\d,.]+ GB \| 256 \| [\d,.]+ GB \| \*\*oom\*\*: "
                     r"accumulate 16, eval_batch_size 5 \|", table), table
    # a smaller GPU: the same runs need more micro-batches
    small = lra_cost_memory.run_memory(lra, "retrieval", "synthesizer", gpu_memory_gb=24)
    assert small.advice() != "fits" and small.fit_accumulate > 8


@pytest.mark.slow
def test_the_script_prints_the_memory_table_and_the_readme_shows_it(lra_cost, lra_cost_memory, lra_config, capsys):
    assert lra_cost.main(["--config", str(REPO / "config" / "lra.yaml")]) == 0
    out = capsys.readouterr().out
    table = lra_cost_memory.memory_table(lra_cost_memory.config_memory(lra_config))
    assert table in out and "80 GB GPU (cap 64.0 GB)" in table
    assert table in (REPO / "docs" / "lra.md").read_text()  # rerun `python scripts/lra_cost.py` when either changes
    assert lra_cost.main(["--config", str(REPO / "config" / "config.yaml")]) == 0
    assert "no run of this config forms tensors beyond O(N x d)" in capsys.readouterr().out
