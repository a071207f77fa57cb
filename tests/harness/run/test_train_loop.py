"""The training loop on the target device's terms: mixed precision, gradient accumulation, no
host reads of device values between evaluations, compilation, and what the record says of them."""
from __future__ import annotations

import json

import pytest
import torch
from torch.overrides import TorchFunctionMode

from attnbench.harness.cli import main as cli_main
from attnbench.harness.run import checkpoint, precision
from attnbench.harness.run.train import Trainer, seed_everything, train_run
from attnbench.variants import full, linear, lsh, sparse
from conftest import tiny_config, tiny_run


def _run(**train):
    return tiny_run(train={"steps": 30, "eval_every": 10, **train})


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_trains_and_is_recorded(tmp_path, tiny_listops_data, kind):
    record = train_run(_run(precision=kind), tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "ok", record["message"]
    assert record["training"]["precision"] == kind
    curve = (tmp_path / "curve.csv").read_text().splitlines()[1:]
    assert all(float(line.split(",")[2]) == float(line.split(",")[2]) for line in curve)  # train_loss not NaN


@pytest.mark.slow
def test_bf16_accuracy_stays_near_fp32_on_a_tiny_task(tmp_path, tiny_listops_data):
    """Same seed, same data: bf16 autocast moves the validation accuracy by rounding noise only.
    Tolerance: 0.1 on 50 validation examples (5 of them), with accuracies near 0.3 here."""
    accs = {}
    for kind in ("fp32", "bf16"):
        record = train_run(_run(precision=kind, steps=60), tiny_listops_data, tmp_path / kind, bar=False)
        assert record["status"] == "ok"
        accs[kind] = record["accuracy"]["best_val"]
    assert abs(accs["bf16"] - accs["fp32"]) <= 0.1, accs


@pytest.mark.slow
def test_the_record_says_how_the_run_computed(tmp_path, tiny_listops_data):
    record = train_run(_run(batch_size=16, accumulate=4), tiny_listops_data, tmp_path, bar=False)
    t = record["training"]
    assert (t["precision"], t["accumulate"], t["micro_batch"], t["effective_batch"]) == ("fp32", 4, 4, 16)
    assert t["compiled"] is False and t["optimizer"] == "AdamW (fused)"
    assert t["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    assert t["sdpa_kernels"] in ("flash", "math", "flash, math")  # CPU SDPA: flash, or math with a mask
    assert t["attention_kernel"] == t["eval_attention_kernel"] == "sdpa"
    assert "scaled_dot_product_attention" in t["attention_kernel_why"]
    assert "perf_counter" in record["efficiency"]["timing_method"]
    assert record["environment"]["float32_matmul_precision"] == torch.get_float32_matmul_precision()


@pytest.mark.slow
def test_cli_train_with_bf16_on_cpu_records_the_precision(tmp_path, tiny_listops_data):
    from attnbench.tasks.base import save_prepared

    run = _run(precision="bf16", steps=10)
    data_file = tmp_path / "data.pt"
    save_prepared(data_file, "listops", run["task"]["data"], tiny_listops_data)
    out = tmp_path / "run"
    rc = cli_main(["train", "--task", "listops", "--variant", "full", "--seed", "0", "--run-config", json.dumps(run),
                   "--data", str(data_file), "--out", str(out), "--no-progress", "--strict"])
    assert rc == 0
    assert json.loads((out / "record.json").read_text())["training"]["precision"] == "bf16"


def test_accumulation_must_divide_the_batch():
    from attnbench.harness.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match=r"'train.accumulate' \(3\) does not divide 'train.batch_size' \(16\)"):
        validate_config(tiny_config(train={"accumulate": 3}))


# ---------------------------------------------------------------- accumulation equivalence

def _float64_trainer(data, variant: str, accumulate: int) -> Trainer:
    run = tiny_run(variants={variant: {}}, model={"dropout": 0.0},
                   train={"accumulate": accumulate, "grad_clip": 0.5, "warmup_steps": 0})
    run["variant"] = {"name": variant, "params": {}}
    seed_everything(0, True)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return Trainer(run, data, torch.device("cpu"))
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize("variant", ["full", "window", "linear"])
def test_k_micro_batches_give_the_update_of_one_batch(tiny_listops_data, variant):
    """float64, no dropout: one optimiser step over 4 micro-batches of 4 equals one over the batch
    of 16 (clipping included), to 1e-10. Variants with random hashing or blocks in training mode
    (lsh, sparse) draw per forward, so their micro-batches see other draws by design."""
    trainers = [_float64_trainer(tiny_listops_data, variant, k) for k in (1, 4)]
    x, y = tiny_listops_data.splits["train"]["tokens"][:16], tiny_listops_data.splits["train"]["labels"][:16]
    losses = [t.train_step(x, y) for t in trainers]
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=1e-12)
    for (name, p1), (_, p4) in zip(trainers[0].model.named_parameters(), trainers[1].model.named_parameters(),
                                   strict=True):
        assert p1.dtype == torch.float64
        torch.testing.assert_close(p4, p1, rtol=0, atol=1e-10, msg=f"{variant}: parameter {name} differs")
    untrained = _float64_trainer(tiny_listops_data, variant, 1).model.parameters()
    assert any((p - q).abs().max() > 0 for p, q in zip(trainers[0].model.parameters(), untrained, strict=True))


# ---------------------------------------------------------------- no host reads in the loop

class HostReads(TorchFunctionMode):
    """Counts the tensor methods that copy a value to the host (item, bool, float, int, tolist,
    numpy, cpu) while not paused: on a GPU each is a synchronisation."""

    READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu", "is_nonzero"}

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []
        self.paused = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not self.paused and getattr(func, "__name__", "") in self.READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.slow
def test_the_loop_reads_no_device_value_between_evaluations(tiny_listops_data, monkeypatch):
    """Between evaluations a step queues its work and goes on: the losses stay on the device.
    The data pipeline (host-side index tensors) and the evaluations are not counted."""
    hook = HostReads()

    def paused(fn):
        def wrapper(*args, **kwargs):
            hook.paused += 1
            try:
                return fn(*args, **kwargs)
            finally:
                hook.paused -= 1
        return wrapper

    def paused_batches(original):
        def gen(self):
            it = original(self)
            while True:
                hook.paused += 1
                try:
                    item = next(it)
                finally:
                    hook.paused -= 1
                yield item
        return gen

    monkeypatch.setattr(Trainer, "record_eval", paused(Trainer.record_eval))
    monkeypatch.setattr(Trainer, "batches", paused_batches(Trainer.batches))
    # the variants' all-True mask check reads the mask on the CPU only (on a GPU it returns the mask
    # untouched, see variants.base.padding_mask_or_none): not counted here
    for module in (full, linear, lsh):
        monkeypatch.setattr(module, "padding_mask_or_none", paused(module.padding_mask_or_none))
    # sparse draws each training step's layout seed from torch's CPU generator: a host value, never the device's
    monkeypatch.setattr(sparse.SparseAttention, "_seed", paused(sparse.SparseAttention._seed))
    seed_everything(0, True)
    for variant, params in (("full", {}), ("linear", {}), ("window", {"window": 4, "block_size": 4}),
                            ("lsh", {"chunk_size": 4, "n_buckets": 4}),
                            ("sparse", {"block_size": 4, "random_blocks": 1})):
        run = tiny_run(variants={variant: params}, train={"steps": 25, "eval_every": 10})
        run["variant"] = {"name": variant, "params": params}
        trainer = Trainer(run, tiny_listops_data, torch.device("cpu"))
        hook.reads.clear()
        from attnbench.harness.run.progress import Log

        with hook:
            trainer.fit(Log(25, "t", bar=False))
        assert hook.reads == [], f"{variant}: the loop read device values: {hook.reads}"
        assert len(trainer.curve) == 3  # evaluations at 10, 20, 25 did read (paused)


@pytest.mark.slow
def test_a_non_finite_loss_is_found_at_the_next_evaluation_with_its_step(tmp_path, tiny_listops_data, monkeypatch):
    from attnbench.harness.run.model import EncoderClassifier

    original = EncoderClassifier.forward
    calls = {"n": 0}

    def poisoned(self, tokens, padded=True):
        out = original(self, tokens, padded)
        if self.training:
            calls["n"] += 1
            if calls["n"] >= 14:  # the first is the FLOP count's (Trainer.count_step_flops), before step 1
                return out * float("nan")
        return out

    monkeypatch.setattr(EncoderClassifier, "forward", poisoned)
    record = train_run(_run(), tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "diverged" and "at step 13" in record["message"]
    assert record["training"]["steps_done"] == 12
    assert record["accuracy"]["best_step"] == 10  # the evaluation before it stands


# ---------------------------------------------------------------- which kernel ran, and why

@pytest.mark.slow
@pytest.mark.parametrize("dense_tokens", [256, 0], ids=["dense-path", "gather-path"])
def test_the_record_names_each_passs_attention_kernel_and_why(tmp_path, tiny_listops_data, monkeypatch, dense_tokens):
    """window on a CPU, with LRA's attention dropout: short sequences run one dense masked SDPA call in training
    and evaluation; without that CPU shortcut (as on CUDA) the SDPA gather, in training because of the dropout
    (FlexAttention has none). The record says which ran in each pass, and why."""
    from attnbench.harness.config import resolve_run, validate_config
    from attnbench.variants.lib import block_dense

    monkeypatch.setattr(block_dense, "MAX_TOKENS", dense_tokens)

    config = validate_config(tiny_config(variants={"window": {"window": 4}}, model={"attn_dropout": 0.1},
                                         train={"steps": 4, "eval_every": 4}))
    record = train_run(resolve_run(config, "listops", "window", 0), tiny_listops_data, tmp_path, bar=False)
    t = record["training"]
    assert record["status"] == "ok", record["message"]
    if dense_tokens:
        assert t["attention_kernel"] == t["eval_attention_kernel"] == "dense"
        assert "at most 256 tokens" in t["attention_kernel_why"]
    else:
        assert t["attention_kernel"] == t["eval_attention_kernel"] == "gather"
        assert "(attention dropout in training)" in t["attention_kernel_why"]
        assert "attention dropout" not in t["eval_attention_kernel_why"]


def test_no_torch_function_mode_is_on_the_stack_where_compiled_code_may_first_run(tiny_listops_data, monkeypatch):
    """A compiled function first called under a torch-function mode (``SdpaKernels``) compiles again when
    called without it (review finding 8: FlexAttention on CUDA compiled twice in the first two steps). The
    first step runs with no mode; the SDPA kernels are recorded on the second, and only where nothing
    compiled runs (here: full attention; then as if FlexAttention had run)."""
    modes = []
    real_step = Trainer.train_step

    def spy(self, x, y, padded=True):
        modes.append(torch._C._len_torch_function_stack())
        return real_step(self, x, y, padded)

    monkeypatch.setattr(Trainer, "train_step", spy)
    trainer = Trainer(tiny_run(), tiny_listops_data, torch.device("cpu"))
    batches = trainer.batches()
    for _ in range(3):
        trainer.next_step()(*next(batches))
    assert modes == [0, 1, 0] and trainer.sdpa_kernels in ("flash", "math", "flash, math")
    flex = Trainer(tiny_run(), tiny_listops_data, torch.device("cpu"))
    flex.attention_kernel = {"attention_kernel": "flex", "attention_kernel_why": "as on CUDA"}
    modes.clear()
    flex.next_step()(*next(flex.batches()))
    assert modes == [0] and flex.sdpa_kernels.startswith("not recorded (FlexAttention")


# ---------------------------------------------------------------- compilation

@pytest.mark.slow
def test_compiled_model_trains_and_keeps_its_state_dict_keys(tmp_path, tiny_listops_data):
    why_not = precision.compile_unavailable(torch.device("cpu"))
    if why_not:
        pytest.skip(f"torch.compile cannot run here: {why_not}")
    run = tiny_run(train={"compile": True, "steps": 4, "eval_every": 4, "eval_batch_size": 50,
                          "timing_skip_steps": 1})
    record = train_run(run, tiny_listops_data, tmp_path, bar=False)
    assert record["status"] == "ok", record["message"]
    assert record["training"]["compiled"] is True
    assert record["training"]["sdpa_kernels"] == "not recorded (compiled model)"
    # noted outside the graph, by one uncompiled forward of the same micro-batch
    assert record["training"]["attention_kernel"] == record["training"]["eval_attention_kernel"] == "sdpa"
    saved = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    plain = Trainer(tiny_run(), tiny_listops_data, torch.device("cpu")).model.state_dict()
    assert sorted(saved) == sorted(plain)  # no "_orig_mod." prefixes: checkpoints load into a plain model


# ---------------------------------------------------------------- resuming with fewer GPUs

def test_cuda_generators_restore_on_the_devices_there_are(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state[0]), device)))
    states = [torch.tensor([7], dtype=torch.uint8), torch.tensor([9], dtype=torch.uint8)]
    note = checkpoint.restore_cuda_rng(states)
    assert restored == [(7, 0)]
    assert "2 devices, 1 visible now" in note
    restored.clear()
    assert checkpoint.restore_cuda_rng(states[:1]) is None and restored == [(7, 0)]


# ---------------------------------------------------------------- CUDA only

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run make gpu-check)")


@cuda_only
def test_cuda_steps_do_not_synchronise(tiny_listops_data):
    run = tiny_run(device="cuda", train={"steps": 12, "eval_every": 100, "precision": "bf16"})
    trainer = Trainer(run, tiny_listops_data, torch.device("cuda"))
    batches = trainer.batches()
    trainer.first_step(*next(batches))  # set-up (lazy init, kernel choice) may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            trainer.losses.append(trainer.train_step(*next(batches)))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(trainer.step_timer.durations) == 6


@cuda_only
def test_cuda_record_names_the_gpu(tmp_path, tiny_listops_data):
    record = train_run(tiny_run(device="cuda"), tiny_listops_data, tmp_path, bar=False)
    env = record["environment"]
    assert record["status"] == "ok"
    assert env["compute_capability"] and env["gpu_uuid"].startswith("GPU-") and env["cudnn"]
    assert record["training"]["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert "CUDA events" in record["efficiency"]["timing_method"]


def test_padding_flags_and_device_split_batches_on_cpu(monkeypatch):
    from attnbench.harness.run import batches

    monkeypatch.setattr(batches, "FLAG_CHUNK", 3)  # several chunks
    tokens = torch.tensor([[1, 2, 0], [3, 4, 5], [6, 0, 0], [7, 8, 9], [1, 1, 1], [0, 0, 0], [2, 2, 2]])
    flags = batches.padding_flags(tokens, pad_id=0)
    assert flags.tolist() == [True, False, True, False, False, True, False]
    split = batches.DeviceSplit({"tokens": tokens, "labels": torch.arange(7)}, 0, torch.device("cpu"))
    x, y, padded = split.batch(torch.tensor([1, 3, 4]))
    assert x.tolist() == [[3, 4, 5], [7, 8, 9], [1, 1, 1]] and y.tolist() == [1, 3, 4] and padded is False
    assert split.batch(torch.tensor([1, 2]))[2] is True
    assert split.slice(5, 10)[1].tolist() == [5, 6]
    paired = batches.padding_flags(torch.tensor([[[1, 2], [3, 0]], [[1, 2], [3, 4]]]), pad_id=0)
    assert paired.tolist() == [True, False]  # a pair: either document's padding counts


@cuda_only
def test_cuda_split_resident_or_pinned_gives_the_same_batches():
    from attnbench.harness.run.batches import DeviceSplit

    tokens = torch.randint(0, 9, (40, 16))
    split = {"tokens": tokens, "labels": torch.arange(40)}
    resident = DeviceSplit(split, 0, torch.device("cuda"))
    streamed = DeviceSplit(split, 0, torch.device("cuda"), budget_bytes=0)
    assert resident.resident and not streamed.resident
    idx = torch.randperm(40)[:8]
    for got in (resident.batch(idx), streamed.batch(idx)):
        assert got[0].is_cuda and torch.equal(got[0].cpu(), tokens[idx]) and torch.equal(got[1].cpu(), idx)
        assert got[2] == bool((tokens[idx] == 0).any())


@pytest.mark.slow
def test_a_batch_larger_than_the_split_is_recorded_as_run(tmp_path, tiny_listops_data):
    """200 training examples, batch_size 1000: each step uses 200, and throughput counts 200."""
    record = train_run(_run(batch_size=1000, steps=4, eval_every=2, timing_skip_steps=0), tiny_listops_data,
                       tmp_path, bar=False)
    t, e = record["training"], record["efficiency"]
    assert record["status"] == "ok" and t["effective_batch"] == 200 and t["micro_batch"] == 200
    assert "batch_size 1000 is larger than the 200 training examples: each step used 200" in t["batch_note"]
    assert e["train_tokens_per_s"] == pytest.approx(e["train_steps_per_s"] * 200 * tiny_listops_data.seq_len)
    from attnbench.harness.run.train_config import effective_batch

    assert effective_batch(32, 4, 30) == (28, "batch_size 32 is larger than the 30 training examples: each step "
                                              "used 28 (4 micro-batches of 7)")
    assert effective_batch(16, 1, 200) == (16, None)


def test_records_never_hold_non_finite_numbers(tmp_path):
    import json

    from attnbench.harness.core.io import atomic_write_json

    atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "b": [1.0, None], "c": {"d": None}}
    assert "NaN" not in (tmp_path / "r.json").read_text()


@pytest.mark.slow
def test_the_tested_checkpoint_is_the_best_or_the_final_weights_as_configured(tmp_path, tiny_listops_data,
                                                                              monkeypatch):
    """train.test_checkpoint: best (default) tests the best-validation weights, final (LRA's choice) the weights
    training ended with; the record says which."""
    tested = []
    original = Trainer.evaluate

    def spy(self, split, *args, **kwargs):
        if split == "test":  # which weights: the head's last bias, against the best and the final state
            tested.append(self.model.head[-1].bias.detach().clone())
        return original(self, split, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", spy)
    finals = {}
    original_test = Trainer.test

    def keep_final(self, status):  # the final and the best weights, before the test loads either
        finals[self.cfg.test_checkpoint] = (self.model.head[-1].bias.detach().clone(),
                                            self.best["state"]["head.2.bias"].clone())
        return original_test(self, status)

    monkeypatch.setattr(Trainer, "test", keep_final)
    for which in ("best", "final"):
        record = train_run(_run(test_checkpoint=which, steps=40), tiny_listops_data, tmp_path / which, bar=False)
        assert record["status"] == "ok" and record["accuracy"]["checkpoint"] == which
        final, best = finals[which]
        assert not torch.equal(final, best)  # the last step is not the best one here, so the two differ
        torch.testing.assert_close(tested[-1], final if which == "final" else best, rtol=0, atol=0)
    from attnbench.harness.results.aggregate import aggregate

    # two records of one run (listops/full/seed0): one summary each
    summaries = [aggregate([tmp_path / w / "record.json"], tmp_path / f"{w}.csv").table for w in ("best", "final")]
    assert [s["tested_checkpoint"].item() for s in summaries] == ["best", "final"]
