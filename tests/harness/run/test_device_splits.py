"""Where a run's data live and how each batch reaches the model, with the CUDA branches forced on the CPU.

On a GPU a split's tokens are kept on the device in a narrow integer type (int16 when the vocabulary fits,
else int32) and cast to long per batch, or, when even that is too large, gathered per batch in host memory
(pinned) and copied; the split is placed before the run's memory measurement starts, so that its bytes
are not the run's peak; each step's index is a slice of the epoch's permutation staged on the device once
per epoch. ``DeviceSplit(..., placement=...)`` takes the placement a CUDA device would get, so these tests
run that code on the CPU; pinning needs an accelerator, so it is faked where a test needs its branch. The
tests marked cuda_only check the same on a GPU (``make gpu-check``)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.overrides import TorchFunctionMode

from attnbench.harness.run import batches
from attnbench.harness.run.batches import DeviceSplit, choose_placement, narrow_dtype, place_splits
from attnbench.harness.run.progress import Log
from attnbench.harness.run.train import Trainer, train_run
from conftest import tiny_run

CPU = torch.device("cpu")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run make gpu-check)")


def _split(n: int, shape: tuple[int, ...], vocab: int, seed: int = 0) -> dict:
    """Random ids in [1, vocab) as the data loader gives them (int64); the first third of the examples end
    in padding (id 0), the others hold none."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, vocab, (n, *shape), generator=gen)
    tokens[: n // 3, ..., -3:] = 0
    tokens[-1, ..., 0] = vocab - 1  # the largest id is there
    return {"tokens": tokens, "labels": torch.randint(0, 5, (n,), generator=gen)}


# ---------------------------------------------------------------- (a) the device path gives the plain batches

@pytest.mark.parametrize(("vocab", "shape", "narrow"), [
    (20, (24,), torch.int16),                     # ListOps-like
    (2 ** 15, (24,), torch.int16),                # ids up to 32767 still fit int16
    (2 ** 15 + 1, (24,), torch.int32),            # id 32768 does not: int16 would wrap it to -32768
    (50_257, (2, 24), torch.int32),               # a GPT-2-sized vocabulary, paired documents
])
def test_device_placement_gives_the_batches_of_the_plain_path(vocab, shape, narrow):
    split = _split(90, shape, vocab)
    if vocab > 2 ** 15:
        assert int(split["tokens"].max()) > 2 ** 15 - 1, "the ids that int16 would get wrong are there"
    plain = DeviceSplit(split, 0, CPU)                                        # the CPU's own path
    on_device = DeviceSplit(split, 0, CPU, placement="device", vocab_size=vocab)  # the CUDA path, forced
    streamed = DeviceSplit(split, 0, CPU, placement="streamed", vocab_size=vocab)
    assert plain.placement == "host" and plain.device_bytes == 0
    assert on_device.tokens.dtype == narrow and on_device.tokens is not split["tokens"]
    assert on_device.device_bytes == split["tokens"].numel() * narrow.itemsize + 90 * 8  # tokens + int64 labels
    assert streamed.tokens is split["tokens"] and streamed.device_bytes == 90 * 8        # labels only
    gen = torch.Generator().manual_seed(1)
    perm = torch.randperm(90, generator=gen)
    staged = on_device.stage(perm)
    for start in range(0, 90, 16):
        idx = perm[start:start + 16]
        want = plain.batch(idx)
        assert want[0].dtype == torch.int64
        for got in (on_device.batch(idx), on_device.batch(idx, staged[start:start + 16]), streamed.batch(idx)):
            assert got[0].dtype == torch.int64 and torch.equal(got[0], want[0])
            assert torch.equal(got[1], want[1]) and got[2] is want[2]
    for start, stop in ((0, 40), (40, 80), (80, 120)):  # evaluation: ordered slices, the last one ragged
        want = plain.slice(start, stop)
        for got in (on_device.slice(start, stop), streamed.slice(start, stop)):
            assert got[0].dtype == torch.int64 and torch.equal(got[0], want[0])
            assert torch.equal(got[1], want[1]) and got[2] is want[2]
    assert plain.slice(0, 40)[2] and not plain.slice(40, 80)[2]  # both flags are exercised above


def test_narrow_dtype_fits_every_id_of_the_vocabulary():
    assert narrow_dtype(20) == torch.int16
    assert narrow_dtype(2 ** 15) == torch.int16          # largest id 32767
    assert narrow_dtype(2 ** 15 + 1) == torch.int32
    assert narrow_dtype(2 ** 31) == torch.int32
    assert narrow_dtype(2 ** 31 + 1) == torch.int64
    big = torch.tensor([[0, 2 ** 15]])  # without a vocabulary size the largest id decides
    assert DeviceSplit({"tokens": big, "labels": torch.zeros(1, dtype=torch.long)}, 0, CPU,
                       placement="device").tokens.dtype == torch.int32


def test_a_split_goes_on_the_device_when_its_narrow_tokens_fit(monkeypatch):
    """LRA ListOps' training split: 96,000 x 2,000 tokens. As int64 (1.43 GiB) it took 1.4 GiB of every run's
    device memory; as int16 it is 366 MiB. Placement is decided on the bytes it would take there."""
    cuda = torch.device("cuda")  # a device object only: nothing is allocated
    n, length = 96_000, 2_000
    assert choose_placement(CPU, n * length * 8, budget_bytes=0) == "host"
    assert choose_placement(cuda, n * length * 2, budget_bytes=2 ** 30) == "device"
    assert choose_placement(cuda, n * length * 2, budget_bytes=n * length * 2 - 1) == "streamed"
    split = {"tokens": torch.zeros(10, 100, dtype=torch.long), "labels": torch.zeros(10, dtype=torch.long)}
    # 8,000 bytes as int64, 2,000 as int16: a 4,000-byte budget places it (on a CPU, forced)
    placed = DeviceSplit(split, 0, CPU, budget_bytes=4_000, vocab_size=20, placement=None)
    assert placed.placement == "host"  # the CPU's own choice
    seen = []

    def choose(device, nbytes, budget_bytes):
        seen.append((device.type, nbytes, budget_bytes))
        return "device"

    monkeypatch.setattr(batches, "choose_placement", choose)
    assert DeviceSplit(split, 0, CPU, budget_bytes=4_000, vocab_size=20).placement == "device"
    assert seen == [("cpu", 2_000, 4_000)]


# ---------------------------------------------------------------- (b) the peak memory leaves the data out

def _big_data(tiny, n_train: int, length: int):
    """The tiny ListOps data with a training split of ``n_train`` examples of ``length`` tokens (int16 ids,
    so that only the device copy is new memory), and the tiny validation and test splits cut to length."""
    def cut(split):
        tokens = torch.zeros(split["tokens"].shape[0], length, dtype=torch.long)
        tokens[:, :split["tokens"].shape[1]] = split["tokens"][:, :length]
        return {"tokens": tokens, "labels": split["labels"]}

    gen = torch.Generator().manual_seed(0)
    train = {"tokens": torch.randint(1, tiny.vocab_size, (n_train, length), generator=gen, dtype=torch.int16),
             "labels": torch.randint(0, tiny.num_classes, (n_train,), generator=gen)}
    splits = {"train": train, "val": cut(tiny.splits["val"]), "test": cut(tiny.splits["test"])}
    return dataclasses.replace(tiny, splits=splits, seq_len=length)


@pytest.mark.slow
def test_a_runs_peak_memory_leaves_out_the_splits_it_placed_on_the_device(tmp_path, tiny_listops_data, monkeypatch):
    """The CUDA placement forced on the CPU: the splits' copies (here 96 MiB of int16 tokens, made in this
    process's memory) are placed before the measurement starts, as on a GPU, so the recorded peak of a tiny
    model's training is far below them; the record says how many bytes were placed and that they are not
    counted. (Placed inside the measurement, as before, the peak held all of them.)"""
    monkeypatch.setattr(batches, "choose_placement", lambda device, nbytes, budget_bytes: "device")
    data = _big_data(tiny_listops_data, n_train=196_608, length=256)
    placed = 196_608 * 256 * 2 + sum(s["labels"].numel() * 8 for s in data.splits.values()) + sum(
        s["tokens"].numel() * 2 for name, s in data.splits.items() if name != "train")
    run = tiny_run(train={"steps": 4, "eval_every": 4, "batch_size": 4, "eval_batch_size": 8,
                          "timing_skip_steps": 0})
    record = train_run(run, data, tmp_path, bar=False)
    assert record["status"] == "ok", record["message"]
    eff = record["efficiency"]
    assert eff["device_data_bytes"] == placed
    assert "before the measurement" in eff["peak_memory_method"]
    assert eff["peak_memory_bytes"] is not None and eff["peak_memory_bytes"] < placed // 2, (
        f"peak {eff['peak_memory_bytes'] / 2 ** 20:.1f} MiB with {placed / 2 ** 20:.1f} MiB of splits placed")


@pytest.mark.slow
def test_a_trainer_given_placed_splits_takes_those_splits(tiny_listops_data, monkeypatch, tmp_path):
    """Every trainer (a distilled one too: it passes them to Trainer.__init__) takes the splits that
    train_run placed before measuring, instead of placing them a second time inside the measurement."""
    run = tiny_run()
    calls = []
    original = batches.DeviceSplit.__init__

    def counting(self, *args, **kwargs):
        calls.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(batches.DeviceSplit, "__init__", counting)
    splits = batches.place_splits(tiny_listops_data, CPU)
    assert len(calls) == 3
    trainer = Trainer(run, tiny_listops_data, CPU, splits=splits)
    assert trainer.splits is splits and len(calls) == 3
    assert Trainer(run, tiny_listops_data, CPU).splits is not splits and len(calls) == 6  # none given: its own
    calls.clear()
    assert train_run(run, tiny_listops_data, tmp_path, bar=False)["status"] == "ok"
    assert len(calls) == 3  # one placement per split for the whole run


# ---------------------------------------------------------------- (d) each step's index is on the device already

class Transfers(TorchFunctionMode):
    """Records the tensor methods that move or copy data between places (to, copy_, pin_memory, cuda) and the
    index tensors given to index_select."""

    MOVES = {"to", "copy_", "pin_memory", "cuda", "contiguous"}

    def __init__(self):
        super().__init__()
        self.moves: list[str] = []
        self.indices: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.MOVES:
            self.moves.append(name)
        if name == "index_select":
            self.indices.append(args[2] if len(args) > 2 else kwargs["index"])
        return func(*args, **(kwargs or {}))


def test_steady_steps_take_their_index_from_the_epochs_staged_permutation(tiny_listops_data, monkeypatch):
    """With the CUDA placement forced on the CPU: the epoch's permutation is staged on the device once
    (pinned first on a GPU: faked here, pin_memory needs an accelerator), and each step's index is a slice
    of it; a step copies no index from host memory. A permutation restored from a checkpoint is staged too."""
    monkeypatch.setattr(batches, "choose_placement", lambda device, nbytes, budget_bytes: "device")
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self)
    trainer = Trainer(tiny_run(train={"batch_size": 16}), tiny_listops_data, CPU)
    split = trainer.splits["train"]
    assert split.placement == "device"
    split.pin = True  # what a CUDA device sets: the staging path pins
    stages, staged = [], []
    stage = split.stage

    def spy_stage(perm):
        stages.append(perm)
        staged.append(stage(perm))
        return staged[-1]

    monkeypatch.setattr(split, "stage", spy_stage)
    it = trainer.batches()
    per_epoch = split.n // 16  # 200 examples: 12 steps an epoch
    for step in range(2 * per_epoch + 3):
        spy = Transfers()
        with spy:
            x, y, _ = next(it)
        if step % per_epoch == 0:  # an epoch starts: its permutation is staged once
            assert len(stages) == step // per_epoch + 1 and stages[-1] is trainer.perm
            assert pinned and pinned[-1] == (split.n,)
            continue
        assert spy.moves == [], f"step {step}: {spy.moves}"
        assert spy.indices and all(i.untyped_storage().data_ptr() == staged[-1].untyped_storage().data_ptr()
                                   for i in spy.indices), "the index is a slice of the staged permutation"
        pos = trainer.pos - 16
        assert torch.equal(y, tiny_listops_data.splits["train"]["labels"][trainer.perm[pos:pos + 16]])
        assert torch.equal(x, tiny_listops_data.splits["train"]["tokens"][trainer.perm[pos:pos + 16]])
    n_stages = len(stages)
    trainer.perm = torch.randperm(split.n)  # as checkpoint.restore sets it
    trainer.pos = 0
    next(it)
    assert len(stages) == n_stages + 1 and stages[-1] is trainer.perm


def test_streamed_batches_are_gathered_pinned_and_copied(monkeypatch):
    """A split too large for the device stays in host memory: each batch is gathered there and pinned
    before its copy (on a GPU; pinning is faked here), as is the epoch's permutation it is indexed with."""
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self)
    split = DeviceSplit(_split(40, (12,), 30), 0, CPU, placement="streamed")
    split.pin = True
    perm = torch.randperm(40)
    idx = perm[:8]
    x, y, _ = split.batch(idx, split.stage(perm)[:8])
    assert pinned == [(40,), (8, 12)]  # the epoch's permutation, then the batch's tokens
    assert x.dtype == torch.int64 and torch.equal(x, split.tokens[idx]) and torch.equal(y, split.labels[idx])


def test_place_splits_places_every_split_and_the_cpu_path_trains(tiny_listops_data):
    splits = place_splits(tiny_listops_data, CPU)
    assert set(splits) == set(tiny_listops_data.splits) and all(s.placement == "host" for s in splits.values())
    forced = place_splits(tiny_listops_data, CPU, placement="device")
    assert all(s.tokens.dtype == torch.int16 for s in forced.values())  # ListOps: 20-odd ids
    trainer = Trainer(tiny_run(), tiny_listops_data, CPU)
    trainer.fit(Log(10, "t", bar=False))
    assert trainer.device_data_bytes == 0 and len(trainer.curve) == 2


# ---------------------------------------------------------------- on a GPU

@cuda_only
def test_cuda_placement_narrow_staged_and_out_of_the_peak(tmp_path, tiny_listops_data):
    cuda = torch.device("cuda")
    split = _split(64, (24,), 20)
    on_device = DeviceSplit(split, 0, cuda, vocab_size=20)
    streamed = DeviceSplit(split, 0, cuda, vocab_size=20, budget_bytes=0)
    assert on_device.placement == "device" and on_device.tokens.dtype == torch.int16 and on_device.tokens.is_cuda
    assert streamed.placement == "streamed" and not streamed.tokens.is_cuda and streamed.pin
    perm = torch.randperm(64)
    staged = on_device.stage(perm)
    assert staged.is_cuda
    for got in (on_device.batch(perm[:8], staged[:8]), streamed.batch(perm[:8], staged[:8])):
        assert got[0].is_cuda and got[0].dtype == torch.int64 and torch.equal(got[0].cpu(), split["tokens"][perm[:8]])
    data = _big_data(tiny_listops_data, n_train=786_432, length=256)  # 384 MiB on the device as int16
    run = tiny_run(device="cuda", train={"steps": 4, "eval_every": 4, "batch_size": 4, "eval_batch_size": 8,
                                         "timing_skip_steps": 0})
    record = train_run(run, data, tmp_path, bar=False)
    eff = record["efficiency"]
    assert record["status"] == "ok" and eff["device_data_bytes"] >= 786_432 * 256 * 2
    assert eff["peak_memory_bytes"] < eff["device_data_bytes"] // 2, eff

