"""Equal compute (issue 27, part 2): ``train.budget`` as steps, seconds of training or training FLOPs, the
curve's train_s and train_flops, the record's and the summary's budget fields. A seconds budget is tested
with a stand-in slow model (every forward sleeps a fixed time), so each assertion is about counts and
bounds, never about the machine's speed."""
from __future__ import annotations

import csv
import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from attnbench.harness.cli import main as cli_main
from attnbench.harness.config import ConfigError, validate_config
from attnbench.harness.measure.flops import CPU_FLASH_FORMULAS
from attnbench.harness.results.aggregate import aggregate, record_row
from attnbench.harness.run import checkpoint, trainer_steps
from attnbench.harness.run.batches import place_splits
from attnbench.harness.run.model import EncoderClassifier, model_for_run
from attnbench.harness.run.train import Trainer, train_run
from attnbench.harness.run.train_config import lr_factor
from conftest import tiny_config, tiny_run, torch_state_restored

#: what every forward of the stand-in slow model sleeps, and the seconds budget it is trained for
SLEEP_S, BUDGET_S = 0.025, 0.5


class Recording(Trainer):
    """The trainer, kept for the test to read its step timer."""

    made: list[Trainer] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        Recording.made.append(self)


@pytest.fixture
def slow_model(monkeypatch):
    """Every forward pass (training and evaluation) sleeps ``SLEEP_S`` first."""
    original = EncoderClassifier.forward

    def slow(self, tokens, padded=True):
        time.sleep(SLEEP_S)
        return original(self, tokens, padded)

    monkeypatch.setattr(EncoderClassifier, "forward", slow)
    Recording.made.clear()


def _curve(out) -> list[dict]:
    with open(out / "curve.csv", newline="") as f:
        return list(csv.DictReader(f))


def _seconds_run(**train):
    return tiny_run(train={"steps": 1000, "eval_every": 5, "budget": {"seconds": BUDGET_S}, **train})


# ---------------------------------------------------------------- seconds

@pytest.mark.slow
def test_a_seconds_budget_stops_at_the_first_step_past_it(tmp_path, tiny_listops_data, slow_model):
    record = train_run(_seconds_run(), tiny_listops_data, tmp_path, bar=False, trainer_cls=Recording)
    training, durations = record["training"], Recording.made[-1].step_timer.durations
    assert record["status"] == "ok" and record["message"] is None
    assert training["budget"]["kind"] == "seconds" and training["budget"]["limit"] == BUDGET_S
    assert training["budget"]["reached"] == training["train_s"] >= BUDGET_S
    # the run stopped after the first step that took its training-step time to S, far from train.steps
    assert training["train_s"] == pytest.approx(sum(durations))
    assert sum(durations[:-1]) < BUDGET_S and training["steps_done"] == len(durations) < BUDGET_S / SLEEP_S + 2
    curve = _curve(tmp_path)
    steps, train_s = [int(r["step"]) for r in curve], [float(r["train_s"]) for r in curve]
    assert steps[-1] == training["steps_done"] and steps[-1] - steps[-2] <= 5  # within one evaluation interval
    assert all(t < BUDGET_S for t in train_s[:-1]) and train_s[-1] >= BUDGET_S
    assert train_s == sorted(train_s)
    # evaluation is not training time: each evaluation before the last row's (its elapsed_s is taken as it
    # starts) ran at least one (sleeping) forward
    assert float(curve[-1]["elapsed_s"]) - train_s[-1] >= (len(curve) - 1) * SLEEP_S
    # the LR decay follows the budget's time (by steps it would still be near its peak at step ~20 of 1000)
    lr = record["config"]["train"]["lr"]
    assert float(curve[-1]["lr"]) < 0.5 * lr * lr_factor(steps[-1], Recording.made[-1].cfg)


@pytest.mark.slow
def test_a_resumed_seconds_budget_run_stops_at_the_same_total_budget(tmp_path, tiny_listops_data, slow_model,
                                                                     monkeypatch):
    run = _seconds_run(checkpoint_every=4)
    with monkeypatch.context() as m:  # killed in step 10: the checkpoint of step 8 is left
        original = Trainer.train_step

        def killed(self, x, y, padded=True):
            if self.step == 10:
                raise KeyboardInterrupt
            return original(self, x, y, padded)

        m.setattr(Trainer, "train_step", killed)
        with pytest.raises(KeyboardInterrupt), torch_state_restored():
            train_run(run, tiny_listops_data, tmp_path, bar=False)
    saved = torch.load(checkpoint.checkpoint_path(tmp_path), weights_only=True)
    assert saved["step"] == 8 and 8 * SLEEP_S <= saved["train_s"] < BUDGET_S

    record = train_run(run, tiny_listops_data, tmp_path, bar=False, trainer_cls=Recording)
    training, durations = record["training"], Recording.made[-1].step_timer.durations
    assert record["status"] == "ok" and training["resumed_from_step"] == 8
    assert training["steps_done"] == 8 + len(durations)
    assert training["budget"]["reached"] == pytest.approx(saved["train_s"] + sum(durations))
    assert training["budget"]["reached"] >= BUDGET_S
    assert saved["train_s"] + sum(durations[:-1]) < BUDGET_S  # the same total: the first step past S is the last
    train_s = [float(r["train_s"]) for r in _curve(tmp_path)]
    assert train_s == sorted(train_s) and train_s[0] < saved["train_s"]  # step 5's row, from the checkpoint


# ---------------------------------------------------------------- FLOPs

def _counted_by_hand(run, data) -> tuple[int, int]:
    """(FLOPs FlopCounterMode sees in a forward and backward of the tiny model on the first training batch, with
    torch's CPU flash kernel counted; the same without that rule)."""
    model = model_for_run(run, data).train()
    x, y, padded = place_splits(data, torch.device("cpu"))["train"].slice(0, run["train"]["batch_size"])
    counts = []
    for mapping in (CPU_FLASH_FORMULAS, {}):
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            F.cross_entropy(model(x, padded), y).backward()
        counts.append(counter.get_total_flops())
    return counts[0], counts[1]


@pytest.mark.slow
def test_a_flops_budget_trains_floor_of_it_over_one_counted_step(tmp_path, tiny_listops_data):
    run = tiny_run()
    per_step, without_flash = _counted_by_hand(run, tiny_listops_data)
    # the attention core, which torch has no rule for on a CPU, counted as its SDPA formulas count it
    shape = (16, 2, tiny_listops_data.seq_len + 1, 8)  # batch, heads, tokens with [CLS], head_dim
    assert per_step - without_flash == sdpa_flop_count(shape, shape, shape) + sdpa_backward_flop_count(*[shape] * 4)

    for accumulate in (1, 2):  # a step's FLOPs are those of all its micro-batches
        out = tmp_path / f"acc{accumulate}"
        budget = tiny_run(train={"budget": {"flops": 3.5 * per_step}, "accumulate": accumulate})
        training = train_run(budget, tiny_listops_data, out, bar=False)["training"]
        assert training["flops_per_step"] == per_step and "FlopCounterMode" in training["flops_method"]
        assert training["steps_planned"] == training["steps_done"] == 3
        assert training["budget"] == {"kind": "flops", "limit": 3.5 * per_step, "reached": 3 * per_step}
        assert training["train_flops"] == 3 * per_step
        curve = _curve(out)
        assert [int(r["step"]) for r in curve] == [3]
        assert float(curve[-1]["lr"]) == 0.0  # 3 steps are the cosine schedule's horizon


@pytest.mark.slow
def test_the_curve_carries_monotone_time_and_flops_and_a_steps_budget_is_train_steps(tmp_path, tiny_listops_data):
    plain = train_run(tiny_run(), tiny_listops_data, tmp_path / "plain", bar=False)["training"]
    assert plain["budget"] == {"kind": "steps", "limit": 10, "reached": 10}
    curve = _curve(tmp_path / "plain")
    assert list(curve[0]) == ["step", "lr", "train_loss", "val_loss", "val_acc", "elapsed_s", "train_s", "train_flops"]
    assert [int(r["train_flops"]) for r in curve] == [5 * plain["flops_per_step"], 10 * plain["flops_per_step"]]
    train_s = [float(r["train_s"]) for r in curve]
    assert 0 < train_s[0] <= train_s[1] == pytest.approx(plain["train_s"], abs=1e-6)

    given = train_run(tiny_run(train={"steps": 99, "budget": {"steps": 10}}), tiny_listops_data, tmp_path / "budget",
                      bar=False)
    assert given["training"]["budget"] == {"kind": "steps", "limit": 10, "reached": 10}
    assert given["training"]["steps_planned"] == 10

    def results(rows):
        return [{k: v for k, v in r.items() if k not in ("elapsed_s", "train_s")} for r in rows]

    assert results(_curve(tmp_path / "budget")) == results(curve)


@pytest.mark.slow
def test_counting_leaves_the_runs_results_unchanged(tmp_path, tiny_listops_data, monkeypatch):
    """Dropout draws from torch's generator in the counted step too: it is put back, so the run is the one it
    would be without the count."""
    run = tiny_run(model={"dropout": 0.2}, train={"steps": 20})
    with torch_state_restored():
        counted = train_run(run, tiny_listops_data, tmp_path / "counted", bar=False)
    monkeypatch.setattr(Trainer, "count_step_flops", lambda self: setattr(self, "flops_method", "not counted"))
    plain = train_run(run, tiny_listops_data, tmp_path / "plain", bar=False)
    assert counted["training"]["flops_per_step"] > 0 and plain["training"]["flops_per_step"] is None
    assert counted["accuracy"] == plain["accuracy"]
    keep = ("step", "lr", "train_loss", "val_loss", "val_acc")
    assert ([{k: r[k] for k in keep} for r in _curve(tmp_path / "counted")]
            == [{k: r[k] for k in keep} for r in _curve(tmp_path / "plain")])


@pytest.mark.slow
def test_a_count_that_fails_leaves_the_flops_empty_and_the_run_ok(tmp_path, tiny_listops_data, monkeypatch):
    def cannot(*args, **kwargs):
        raise RuntimeError("no flop formula for this kernel\nsecond line")

    monkeypatch.setattr(trainer_steps, "count_flops", cannot)
    record = train_run(tiny_run(), tiny_listops_data, tmp_path / "ok", bar=False)
    training = record["training"]
    assert record["status"] == "ok" and training["steps_done"] == 10
    assert training["flops_per_step"] is None and training["train_flops"] is None
    assert training["flops_method"] == "not counted: RuntimeError: no flop formula for this kernel"
    assert [r["train_flops"] for r in _curve(tmp_path / "ok")] == ["", ""]
    # a FLOPs budget cannot be planned without the count: the run fails and says so
    failed = train_run(tiny_run(train={"budget": {"flops": 1e9}}), tiny_listops_data, tmp_path / "flops", bar=False)
    assert failed["status"] == "failed" and "train.budget.flops 1e+09 needs the FLOPs" in failed["message"]
    assert failed["training"]["budget"] == {"kind": "flops", "limit": 1e9, "reached": None}


# ---------------------------------------------------------------- the config, the summary

def test_check_config_refuses_two_budgets_in_one_line(tmp_path, capsys):
    path = tmp_path / "two.yaml"
    path.write_text(json.dumps(tiny_config(train={"budget": {"steps": 100, "seconds": 60}})))
    assert cli_main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'train.budget' gives steps and seconds; give exactly one of" in err


@pytest.mark.parametrize(("budget", "message"), [
    ({"minutes": 5}, "unknown key 'train.budget.minutes'; allowed keys under 'train.budget': flops, seconds, steps"),
    ({"seconds": 0}, "'train.budget.seconds' is 0; must be > 0"),
    ({"flops": -1.0}, r"'train.budget.flops' is -1.0; must be > 0"),
    ({"steps": 2.5}, r"'train.budget.steps' is 2.5; expected an integer"),
    ({"seconds": "soon"}, r"'train.budget.seconds' is 'soon' \(a string\); expected number"),
])
def test_a_bad_budget_is_refused_naming_its_key(budget, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(tiny_config(train={"budget": budget}))


def test_budget_numbers_are_read_as_the_others(tmp_path):
    """YAML reads 1e15 as text; a task's budget replaces the shared one and is checked where it is written."""
    config = validate_config(tiny_config(train={"budget": {"flops": "1e15"}},
                                         tasks={"listops": {"train": {"budget": {"steps": "20.0"}}}}))
    assert config["train"]["budget"] == {"flops": 1e15}
    assert config["tasks"]["listops"]["train"]["budget"] == {"steps": 20}
    with pytest.raises(ConfigError, match=r"^invalid attnbench config: 'tasks.listops.train.budget.seconds' is -2"):
        validate_config(tiny_config(tasks={"listops": {"train": {"budget": {"seconds": -2}}}}))


@pytest.mark.slow
def test_the_summary_has_the_budget_and_an_older_record_trained_for_its_steps(tmp_path, tiny_listops_data):
    train_run(tiny_run(train={"budget": {"steps": 4}}), tiny_listops_data, tmp_path, bar=False)
    new = aggregate([tmp_path / "record.json"], tmp_path / "summary.csv").table.iloc[0]
    assert (new["budget_kind"], new["budget_limit"], new["budget_reached"]) == ("steps", 4, 4)
    assert new["train_flops"] == 4 * new["flops_per_step"] > 0 and new["train_s"] > 0
    old = json.loads((tmp_path / "record.json").read_text())
    for key in ("budget", "train_s", "train_flops", "flops_per_step", "flops_method"):
        del old["training"][key]
    row = record_row(old, tmp_path / "record.json")
    assert (row["budget_kind"], row["budget_limit"], row["budget_reached"]) == ("steps", 4, 4)
    assert row["train_s"] is None and row["train_flops"] is None and row["flops_per_step"] is None


def test_the_clock_on_cuda_estimates_from_the_host_and_reads_the_events_only_when_asked():
    """CPU twin of TrainClock's CUDA branch: between reads of the step timer (whose CUDA events wait for the
    device) the clock adds the host's time around each step; ``exact()`` reads the timer and drops that estimate."""
    from types import SimpleNamespace

    from attnbench.harness.run.budget import TrainClock

    timer = SimpleNamespace(device=torch.device("cuda"), durations=[0.5, 0.5])
    clock = TrainClock(timer, before=10.0)
    assert clock.exact() == 11.0
    timer.durations.append(0.75)  # a step the device ran, not read yet
    clock.add_host(0.25)
    assert clock.estimate() == 11.25  # the host's clock stands in: the timer is not read
    assert clock.exact() == 11.75 and clock.estimate() == 11.75
    cpu = TrainClock(SimpleNamespace(device=torch.device("cpu"), durations=[0.5]))
    cpu.add_host(9.0)
    assert cpu.estimate() == 0.5  # on a CPU the timer itself, read at once
