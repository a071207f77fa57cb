"""The distilled variant: loss, the student's initialisation from the teacher, a real
teacher -> student run and its record, config validation, the report's distillation table."""
from __future__ import annotations

import copy
import dataclasses
import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_config, torch_state_restored
from attnbench.harness import cli
from attnbench.harness.config.validate import ConfigError, resolve_run, validate_config
from attnbench.harness.run.distill import (TeacherError, distill_run, distillation_loss, init_student_from_teacher, soft_kl,
                             select_teacher_layers, student_layer_count)
from attnbench.harness.run.model import EncoderClassifier, ModelConfig, count_parameters
from attnbench.harness.results.records import read_record
from attnbench.harness.core.registry import dataclass_schema, param
from attnbench.harness.report.render import distillation_table
from attnbench.harness.run.train import train_run
from attnbench.variants import VARIANTS

FROM_LABELS = [e.name for e in VARIANTS if not e.cls.needs_teacher]


def logits(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


# ---------------------------------------------------------------- the loss

@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kl_term_nonnegative_and_zero_for_equal_logits(temperature):
    for seed in range(5):
        s, t = logits(8, 10, seed=seed), logits(8, 10, seed=100 + seed)
        assert soft_kl(s, t, temperature).item() > 0
    t = logits(8, 10, seed=7)
    assert soft_kl(t.clone(), t, temperature).item() == pytest.approx(0.0, abs=1e-12)
    # softmax ignores a per-row shift: still the same distribution
    assert soft_kl(t + 5.0, t, temperature).item() == pytest.approx(0.0, abs=1e-12)


def test_kl_term_is_batchmean_kldivloss_of_the_tempered_distributions():
    s, t, temperature = logits(6, 5, seed=1), logits(6, 5, seed=2), 3.0
    p_t, p_s = torch.softmax(t / temperature, -1), torch.softmax(s / temperature, -1)
    by_hand = (p_t * (p_t.log() - p_s.log())).sum() / s.shape[0]
    kldiv = nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s / temperature, -1), p_t)
    torch.testing.assert_close(soft_kl(s, t, temperature), by_hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(soft_kl(s, t, temperature), kldiv, rtol=1e-12, atol=1e-12)


def test_loss_at_alpha_0_is_cross_entropy_and_at_alpha_1_is_scaled_kl():
    s, t = logits(8, 10, seed=3), logits(8, 10, seed=4)
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(5))
    ce, temperature = F.cross_entropy(s, y), 2.5
    kl = soft_kl(s, t, temperature)
    assert torch.equal(distillation_loss(s, t, y, temperature, 0.0), ce)
    torch.testing.assert_close(distillation_loss(s, t, y, temperature, 1.0), temperature ** 2 * kl,
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(distillation_loss(s, t, y, temperature, 0.3), 0.3 * temperature ** 2 * kl + 0.7 * ce,
                               rtol=1e-12, atol=0)


# ---------------------------------------------------------------- the student's initialisation

@pytest.mark.parametrize("teacher, student, expected", [
    (12, 6, [0, 2, 4, 7, 9, 11]),  # DistilBERT's choice
    (2, 1, [0]), (4, 2, [0, 3]), (6, 3, [0, 3, 5]), (3, 2, [0, 2]), (5, 5, [0, 1, 2, 3, 4]), (1, 1, [0]),
])
def test_select_teacher_layers(teacher, student, expected):
    assert select_teacher_layers(teacher, student) == expected


def test_select_teacher_layers_rejects_deeper_students():
    for bad in (0, 3):
        with pytest.raises(ValueError, match="1 to 2"):
            select_teacher_layers(2, bad)


@pytest.mark.parametrize("asked, teacher, expected", [(0, 1, 1), (0, 2, 1), (0, 3, 2), (0, 12, 6), (3, 12, 3)])
def test_student_layer_count(asked, teacher, expected):
    assert student_layer_count(asked, teacher) == expected


def _model(layers, variant="full", params=None, seed=0):
    """A small model whose every tensor is random (LayerNorms included), so that no two blocks match."""
    torch.manual_seed(seed)
    cfg = ModelConfig(layers=layers, dim=16, heads=2, mlp_dim=24)
    model = EncoderClassifier(cfg, variant, params or {}, vocab_size=11, seq_len=12, num_classes=4)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def test_student_init_copies_exactly_the_chosen_teacher_layers():
    teacher, student = _model(4, seed=1), _model(2, "distilled", {"student_layers": 2}, seed=2)
    t_state = teacher.state_dict()
    result = init_student_from_teacher(student, t_state, [0, 3])
    s_state = student.state_dict()
    assert result["kept"] == [] and result["copied"] == list(s_state)
    for key, value in s_state.items():
        source = key.replace("blocks.1.", "blocks.3.")
        assert torch.equal(value, t_state[source]), key
        if key.startswith("blocks.1."):  # not the neighbouring blocks
            assert not torch.equal(value, t_state[key.replace("blocks.1.", "blocks.2.")]), key
    assert len(student.blocks) == 2 and count_parameters(student) < count_parameters(teacher)
    # copies, not shared storage: training the student leaves the teacher alone
    student.blocks[0].ln1.weight.data.add_(1.0)
    assert not torch.equal(student.blocks[0].ln1.weight, teacher.blocks[0].ln1.weight)


def test_student_init_keeps_its_own_tensors_where_shapes_differ():
    teacher, student = _model(2, seed=1), _model(1, seed=2)
    student.blocks[0].attn.qkv = nn.Linear(16, 32)  # another projection layout
    before = student.blocks[0].attn.qkv.weight.detach().clone()
    result = init_student_from_teacher(student, teacher.state_dict(), [0])
    assert set(result["kept"]) == {"blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias"}
    assert torch.equal(student.blocks[0].attn.qkv.weight, before)
    assert torch.equal(student.blocks[0].attn.out.weight, teacher.blocks[0].attn.out.weight)


@pytest.mark.parametrize("attention", FROM_LABELS)
def test_student_init_from_full_teacher_for_every_student_attention(attention):
    """Whatever the student's attention, a tensor is copied exactly when the teacher has one of
    that name and shape; everything outside the attention layers always is."""
    teacher = _model(2, seed=1)
    params = {"attention": attention, "attention_params": VARIANTS.get(attention).cls.small_params}
    student = _model(1, "distilled", params, seed=2)
    own = {k: v.clone() for k, v in student.state_dict().items()}
    t_state = teacher.state_dict()
    result = init_student_from_teacher(student, t_state, [0])
    s_state = student.state_dict()
    for key in result["copied"]:
        assert torch.equal(s_state[key], t_state[key])
    for key in result["kept"]:
        assert ".attn." in key and (key not in t_state or t_state[key].shape != own[key].shape)
        assert torch.equal(s_state[key], own[key])


# ---------------------------------------------------------------- a real teacher -> student run

def _config(**override):
    return validate_config(tiny_config(**{"variants": {"full": {}, "distilled": {}}, "model": {"layers": 2},
                                          **override}))


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_listops_data):
    root = tmp_path_factory.mktemp("distill")
    config = _config()
    with torch_state_restored():
        teacher = train_run(resolve_run(config, "listops", "full", 0), tiny_listops_data, root / "full", bar=False)
        run = resolve_run(config, "listops", "distilled", 0)
        record = distill_run(run, tiny_listops_data, root / "distilled", root / "full", bar=False)
    return teacher, run, record, root


def test_distilled_record_names_its_teacher(distilled):
    teacher, run, record, root = distilled
    out = root / "distilled"
    stored = read_record(out / "record.json")
    assert stored == json.loads(json.dumps(record))
    assert stored["status"] == "ok", stored["message"]
    assert stored["run_id"] == "listops/distilled/seed0" and teacher["teacher"] is None
    t = stored["teacher"]
    assert t["run_id"] == "listops/full/seed0" and t["status"] == "ok"
    assert (out / t["checkpoint"]).resolve() == (root / "full" / "best.pt").resolve() and (out / t["checkpoint"]).exists()
    assert read_record(out / t["record"])["run_id"] == t["run_id"]
    assert t["config_hash"] == teacher["config_hash"]
    assert t["test_acc"] == teacher["accuracy"]["test"] and t["params"] == teacher["efficiency"]["params"]
    assert t["train_tokens_per_s"] == teacher["efficiency"]["train_tokens_per_s"]
    assert t["eval_tokens_per_s"] == teacher["efficiency"]["eval_tokens_per_s"]
    assert t["layers"] == 2 and t["layers_copied"] == [0]
    # the student: half the teacher's blocks, fewer parameters, settings in the resolved config
    assert stored["config"]["model"]["layers"] == 1
    assert stored["config"]["variant"]["params"] == {"teacher": "full", "student_layers": 1, "temperature": 2.0,
                                                     "alpha": 0.5, "attention": "full", "attention_params": {}}
    assert stored["efficiency"]["params"] < teacher["efficiency"]["params"]
    assert "teacher forward" in stored["efficiency"]["timing_method"]
    assert 0.0 <= stored["accuracy"]["test"] <= 1.0


def test_distilled_checkpoint_loads_into_the_model_its_run_config_describes(distilled, tiny_listops_data):
    _, run, record, root = distilled
    ckpt = torch.load(root / "distilled" / record["training"]["checkpoint"], weights_only=True)
    data = tiny_listops_data
    for variant, params in (("distilled", run["variant"]["params"]), ("full", {})):
        model = EncoderClassifier(ModelConfig(**run["model"]), variant, params, data.vocab_size, data.seq_len,
                                  data.num_classes)
        model.load_state_dict(ckpt["model"])
        model.eval()
        with torch.no_grad():
            acc = (model(data.splits["test"]["tokens"]).argmax(-1) == data.splits["test"]["labels"]).float().mean()
        assert record["accuracy"]["test"] == pytest.approx(acc.item())


def test_missing_teacher_is_an_error_that_says_how_to_get_it(tmp_path, tiny_listops_data):
    run = resolve_run(_config(), "listops", "distilled", 0)
    with pytest.raises(TeacherError) as info:
        distill_run(run, tiny_listops_data, tmp_path / "out", tmp_path / "nowhere", bar=False)
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / "record.json") in msg and "attnbench train" in msg and "--variant full" in msg
    assert not (tmp_path / "out" / "record.json").exists()


def test_cli_missing_teacher_exits_2(tmp_path, capsys, tiny_listops_data):
    from attnbench.tasks.base import save_prepared

    run = resolve_run(_config(), "listops", "distilled", 0)
    data_file = tmp_path / "dataset.pt"
    save_prepared(data_file, "listops", run["task"]["data"], tiny_listops_data)
    args = ["train", "--task", "listops", "--variant", "distilled", "--seed", "0", "--data", str(data_file),
            "--run-config", json.dumps(run), "--out", str(tmp_path / "out"), "--no-progress"]
    assert cli.main([*args, "--teacher-dir", str(tmp_path / "nowhere")]) == 2
    assert "teacher record" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="trained from labels"):
        cli.main(["train", "--task", "listops", "--variant", "full", "--seed", "0", "--teacher-dir", str(tmp_path)])


def test_teacher_without_checkpoint_gives_failed_record(distilled, tmp_path, tiny_listops_data):
    teacher, run, _, root = distilled
    broken = copy.deepcopy(teacher)
    broken.update(status="oom", message="out of memory")
    broken["training"]["checkpoint"] = None
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "record.json").write_text(json.dumps(broken))
    with torch_state_restored():
        record = distill_run(run, tiny_listops_data, tmp_path / "out", tmp_path / "teacher", bar=False)
    assert record["status"] == "failed" and "no checkpoint" in record["message"]
    assert record["teacher"]["status"] == "oom" and record["teacher"]["checkpoint"] is None
    assert read_record(tmp_path / "out" / "record.json")["status"] == "failed"


def test_incompatible_teacher_gives_failed_record(distilled, tmp_path, tiny_listops_data):
    _, _, _, root = distilled
    wider = resolve_run(_config(model={"layers": 2, "dim": 32}), "listops", "distilled", 0)
    with torch_state_restored():
        record = distill_run(wider, tiny_listops_data, tmp_path / "out", root / "full", bar=False)
    assert record["status"] == "failed"
    assert "other model settings" in record["message"] and "dim 16 vs 32" in record["message"]


# ---------------------------------------------------------------- config

def error_of(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    return str(info.value)


def test_teacher_must_be_in_the_config():
    config = tiny_config()
    config["variants"] = {"distilled": {}}  # tiny_config merges: replace instead
    msg = error_of(config)
    assert "'variants.distilled.teacher'" in msg and "'full'" in msg and "not in 'variants'" in msg


def test_teacher_must_be_a_variant_trained_from_labels():
    msg = error_of(tiny_config(variants={"full": {}, "distilled": {"teacher": "distilled"}}))
    assert "'variants.distilled.teacher' is 'distilled'" in msg and "trained from labels: full" in msg
    msg = error_of(tiny_config(variants={"full": {}, "distilled": {"teacher": "nonesuch"}}))
    assert "'nonesuch'" in msg and "distilled" in msg


def test_unknown_student_attention_lists_known_variants():
    msg = error_of(tiny_config(variants={"full": {}, "distilled": {"attention": "fulll"}}))
    assert "'variants.distilled.attention' is 'fulll'" in msg
    for name in FROM_LABELS:
        assert name in msg


def test_student_attention_params_are_checked_against_that_variant():
    msg = error_of(tiny_config(variants={"full": {}, "distilled": {"attention_params": {"window": 3}}}))
    assert "'variants.distilled.attention_params'" in msg and "window" in msg and "unknown key" in msg


def test_student_deeper_than_teacher_rejected():
    msg = error_of(tiny_config(variants={"full": {}, "distilled": {"student_layers": 3}}, model={"layers": 2}))
    assert "'variants.distilled.student_layers' is 3" in msg and "listops" in msg and "<= 2" in msg


def test_resolved_student_spells_out_layers_and_attention_params():
    config = _config(model={"layers": 3})
    run = resolve_run(config, "listops", "distilled", 1)
    assert run["model"]["layers"] == 2 == run["variant"]["params"]["student_layers"]
    assert resolve_run(config, "listops", "full", 1)["model"]["layers"] == 3  # the teacher keeps its depth
    # the student's attention takes that variant's params from `variants:`, overridden by
    # attention_params: checked with a registered variant whose test-size params are not its defaults
    as_json = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731

    def non_default(entry):
        defaults = {k: as_json(v) for k, v in dataclasses.asdict(entry.config()).items()}
        return {k: v for k, v in entry.cls.small_params.items() if defaults[k] != as_json(v)}

    entries = [e for e in VARIANTS if not e.cls.needs_teacher and non_default(e)]
    if not entries:
        pytest.skip("no registered variant has test-size parameters that differ from its defaults")
    entry = entries[0]
    small = non_default(entry)
    key = next(iter(small))
    default = as_json(getattr(entry.config(), key))
    for attention_params, expected in (({}, as_json(small[key])), ({key: default}, default)):
        config = _config(variants={"full": {}, entry.name: dict(small),
                                   "distilled": {"attention": entry.name, "attention_params": attention_params}})
        params = resolve_run(config, "listops", "distilled", 0)["variant"]["params"]["attention_params"]
        assert set(params) == {f.name for f in dataclasses.fields(entry.config)}  # spelled out
        assert params[key] == expected, (entry.name, key, attention_params)
    # a variant that `variants:` does not name: its defaults
    config = _config(variants={"full": {}, "distilled": {"attention": entry.name}})
    params = resolve_run(config, "listops", "distilled", 0)["variant"]["params"]["attention_params"]
    assert params[key] == default


# ---------------------------------------------------------------- registry, records, report

def test_dict_config_fields_are_objects_with_fresh_defaults():
    @dataclasses.dataclass(frozen=True)
    class WithMapping:
        """a mapping field"""
        nested: dict = param({"a": 1}, "nested parameters")

    schema = dataclass_schema(WithMapping)
    assert schema["properties"]["nested"]["type"] == "object" and schema["properties"]["nested"]["default"] == {"a": 1}
    first, second = WithMapping(), WithMapping()
    first.nested["a"] = 2
    assert second.nested == {"a": 1}


def test_records_written_before_the_teacher_entry_read_as_trained_from_labels(distilled, tmp_path):
    teacher = copy.deepcopy(distilled[0])
    del teacher["teacher"]
    (tmp_path / "record.json").write_text(json.dumps(teacher))
    assert read_record(tmp_path / "record.json")["teacher"] is None


def _summary_rows():
    base = {"task": "listops", "status": "ok", "layers": 2, "params": 1000, "teacher_run_id": None}
    rows = []
    for seed, (t_acc, s_acc) in enumerate([(0.50, 0.45), (0.40, 0.40)]):
        rows.append({**base, "variant": "full", "seed": seed, "test_acc": t_acc, "train_tokens_per_s": 100.0,
                     "eval_tokens_per_s": 1000.0})
        rows.append({**base, "variant": "distilled", "seed": seed, "test_acc": s_acc, "layers": 1, "params": 600,
                     "train_tokens_per_s": 150.0 + 50 * seed, "eval_tokens_per_s": 2000.0,
                     "teacher_run_id": f"listops/full/seed{seed}", "teacher_status": "ok", "teacher_test_acc": t_acc,
                     "teacher_train_tokens_per_s": 100.0, "teacher_eval_tokens_per_s": 1000.0,
                     "teacher_params": 1000, "teacher_layers": 2, "student_attention": "full",
                     "distill_temperature": 2.0, "distill_alpha": 0.5})
    return rows


def test_distillation_table_means_per_seed_ratios():
    table = distillation_table(pd.DataFrame(_summary_rows()))
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["task"], row["student"], row["teacher"]) == ("listops", "distilled", "full")
    assert row["layers (student/teacher)"] == "1/2" and row["pairs"] == "2/2"
    assert row["accuracy kept (%)"] == "95.0"  # mean of 0.45/0.50 and 0.40/0.40
    assert row["Δ acc (points)"] == "-2.5"
    assert row["train speed (×)"] == "1.75" and row["eval speed (×)"] == "2.00" and row["params (×)"] == "0.60"


def test_distillation_table_skips_failed_pairs_and_is_empty_without_distilled_runs():
    rows = _summary_rows()
    rows[3]["status"] = "diverged"
    row = distillation_table(pd.DataFrame(rows)).iloc[0]
    assert row["pairs"] == "1/2" and row["accuracy kept (%)"] == "90.0"
    assert distillation_table(pd.DataFrame([r for r in rows if r["variant"] == "full"])).empty
