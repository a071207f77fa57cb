"""Distillation as a training method: loss, the student's initialisation from the teacher, a real
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

from attnbench.harness import cli
from attnbench.harness.config import ConfigError, resolve_run, validate_config
from attnbench.harness.core.registry import dataclass_schema, param
from attnbench.harness.report.distillation import distillation_table
from attnbench.harness.results.records import read_record
from attnbench.harness.run.distill import (
    TeacherError,
    distill_run,
    distillation_loss,
    init_student_from_teacher,
    select_teacher_layers,
    soft_kl,
    student_layer_count,
)
from attnbench.harness.run.model import EncoderClassifier, ModelConfig, count_parameters
from attnbench.harness.run.train import train_run
from attnbench.variants import VARIANTS
from conftest import tiny_config, torch_state_restored

NAMES = VARIANTS.names()


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
    teacher, student = _model(4, seed=1), _model(2, seed=2)
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


@pytest.mark.parametrize("attention", NAMES)
def test_student_init_from_full_teacher_for_every_student_attention(attention):
    """Whatever the student's attention, a tensor is copied exactly when the teacher has one of
    that name and shape; everything outside the attention layers always is."""
    teacher = _model(2, seed=1)
    student = _model(1, attention, VARIANTS.get(attention).cls.small_params, seed=2)
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
    return validate_config(tiny_config(**{"distill": {"students": {"full": {}}}, "model": {"layers": 2},
                                          **override}))


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_listops_data):
    root = tmp_path_factory.mktemp("distill")
    config = _config()
    with torch_state_restored():
        teacher = train_run(resolve_run(config, "listops", "full", 0), tiny_listops_data, root / "full", bar=False)
        run = resolve_run(config, "listops", "full", 0, "distill")
        record = distill_run(run, tiny_listops_data, root / "distilled", root / "full", bar=False)
    return teacher, run, record, root


@pytest.mark.slow
def test_distilled_record_names_its_teacher(distilled):
    teacher, run, record, root = distilled
    out = root / "distilled"
    stored = read_record(out / "record.json")
    assert stored == json.loads(json.dumps(record))
    assert stored["status"] == "ok", stored["message"]
    assert stored["run_id"] == "listops/distilled[full]/seed0" and "teacher" not in teacher
    assert (stored["variant"], stored["method"], stored["label"]) == ("full", "distill", "distilled[full]")
    assert (teacher["method"], teacher["label"]) == ("labels", "full")
    t = stored["teacher"]
    assert t["run_id"] == "listops/full/seed0" and t["status"] == "ok"
    assert (out / t["checkpoint"]).resolve() == (root / "full" / "best.pt").resolve()
    assert (out / t["checkpoint"]).exists()
    assert read_record(out / t["record"])["run_id"] == t["run_id"]
    assert t["config_hash"] == teacher["config_hash"]
    assert t["test_acc"] == teacher["accuracy"]["test"] and t["params"] == teacher["efficiency"]["params"]
    assert t["train_tokens_per_s"] == teacher["efficiency"]["train_tokens_per_s"]
    assert t["eval_tokens_per_s"] == teacher["efficiency"]["eval_tokens_per_s"]
    assert t["layers"] == 2 and t["layers_copied"] == [0]
    # the student: half the teacher's blocks, fewer parameters, settings in the resolved config
    assert stored["config"]["model"]["layers"] == 1
    assert stored["config"]["method"] == {"name": "distill", "teacher": "full", "student_layers": 1,
                                          "temperature": 2.0, "alpha": 0.5}
    assert stored["config"]["variant"] == {"name": "full", "params": {}}
    assert stored["efficiency"]["params"] < teacher["efficiency"]["params"]
    assert "teacher forward" in stored["efficiency"]["timing_method"]
    assert 0.0 <= stored["accuracy"]["test"] <= 1.0


@pytest.mark.slow
def test_distilled_checkpoint_loads_into_the_model_its_run_config_describes(distilled, tiny_listops_data):
    _, run, record, root = distilled
    ckpt = torch.load(root / "distilled" / record["training"]["checkpoint"], weights_only=True)
    data = tiny_listops_data
    model = EncoderClassifier.for_data(ModelConfig(**run["model"]), run["variant"]["name"],
                                       run["variant"]["params"], data)
    model.load_state_dict(ckpt["model"])
    model.eval()
    with torch.no_grad():
        acc = (model(data.splits["test"]["tokens"]).argmax(-1) == data.splits["test"]["labels"]).float().mean()
    assert record["accuracy"]["test"] == pytest.approx(acc.item())


def test_missing_teacher_is_an_error_that_says_how_to_get_it(tmp_path, tiny_listops_data):
    run = resolve_run(_config(), "listops", "full", 0, "distill")
    with pytest.raises(TeacherError) as info:
        distill_run(run, tiny_listops_data, tmp_path / "out", tmp_path / "nowhere", bar=False)
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / "record.json") in msg and "attnbench train" in msg and "--variant full" in msg
    assert not (tmp_path / "out" / "record.json").exists()


@pytest.mark.slow
def test_a_teacher_of_another_seed_is_refused(distilled, tmp_path, tiny_listops_data):
    _, _, _, root = distilled  # root / "full": the teacher of seed 0
    run = resolve_run(_config(), "listops", "full", 1, "distill")
    with pytest.raises(TeacherError, match=r"is the record of listops/full/seed0, not of a full teacher on listops "
                                           r"with seed 1"):
        distill_run(run, tiny_listops_data, tmp_path / "out", root / "full", bar=False)
    assert not (tmp_path / "out" / "record.json").exists()


def test_cli_missing_teacher_exits_2(tmp_path, capsys, tiny_listops_data):
    from attnbench.tasks.base import save_prepared

    run = resolve_run(_config(), "listops", "full", 0, "distill")
    data_file = tmp_path / "dataset.pt"
    save_prepared(data_file, "listops", run["task"]["data"], tiny_listops_data)
    args = ["train", "--task", "listops", "--variant", "full", "--method", "distill", "--seed", "0",
            "--data", str(data_file), "--run-config", json.dumps(run), "--out", str(tmp_path / "out"), "--no-progress"]
    assert cli.main([*args, "--teacher-dir", str(tmp_path / "nowhere")]) == 2
    assert "teacher record" in capsys.readouterr().err
    assert cli.main(["train", "--task", "listops", "--variant", "full", "--seed", "0",
                     "--teacher-dir", str(tmp_path)]) == 2
    assert "only a distilled run" in capsys.readouterr().err
    assert cli.main([a for a in args if a not in ("--method", "distill")]) == 2
    assert "--method labels does not match the run config's distill" in capsys.readouterr().err


@pytest.mark.slow
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


@pytest.mark.slow
def test_incompatible_teacher_gives_failed_record(distilled, tmp_path, tiny_listops_data):
    _, _, _, root = distilled
    wider = resolve_run(_config(model={"layers": 2, "dim": 32}), "listops", "full", 0, "distill")
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
    msg = error_of(tiny_config(distill={"teacher": "window", "students": {"full": {}}}))
    assert "'distill.teacher' is 'window'" in msg and "not in 'variants'" in msg and "`window: {}`" in msg


def test_no_students_no_distillation_and_no_teacher_check():
    config = validate_config(tiny_config(distill={"teacher": "nonesuch"}))
    assert config["distill"]["students"] == {}
    with pytest.raises(ConfigError, match="not a distilled student"):
        resolve_run(config, "listops", "full", 0, "distill")


def test_unknown_student_lists_known_variants():
    msg = error_of(tiny_config(distill={"students": {"fulll": {}}}))
    assert "unknown variant 'fulll' under 'distill.students'" in msg
    for name in NAMES:
        assert name in msg


def test_student_params_are_checked_against_that_variant():
    msg = error_of(tiny_config(distill={"students": {"full": {"window": 3}}}))
    assert "'distill.students.full'" in msg and "window" in msg and "unknown key" in msg
    msg = error_of(tiny_config(distill={"students": {"window": {"window": "wide"}}}))
    assert "'distill.students.window.window' is 'wide'" in msg


def test_student_deeper_than_teacher_rejected():
    msg = error_of(tiny_config(distill={"students": {"full": {}}, "student_layers": 3}, model={"layers": 2}))
    assert "'distill.student_layers' is 3" in msg and "listops" in msg and "<= 2" in msg


def test_old_distilled_variant_is_read_as_the_distill_section(capsys):
    config = validate_config(tiny_config(variants={"full": {}, "distilled": {
        "teacher": "full", "student_layers": 1, "temperature": 3.0, "attention": "window",
        "attention_params": {"window": 4}}}))
    assert list(config["variants"]) == ["full"]
    assert config["distill"] == {"teacher": "full", "student_layers": 1, "temperature": 3.0, "alpha": 0.5,
                                 "students": {"window": {"window": 4}}}
    assert "'variants.distilled' is the old form" in capsys.readouterr().err
    msg = error_of(tiny_config(variants={"full": {}, "distilled": {}}, distill={"students": {"full": {}}}))
    assert "keep one of them" in msg


def test_resolved_student_spells_out_layers_and_params():
    config = _config(model={"layers": 3})
    run = resolve_run(config, "listops", "full", 1, "distill")
    assert run["model"]["layers"] == 2 == run["method"]["student_layers"]
    assert resolve_run(config, "listops", "full", 1)["model"]["layers"] == 3  # the teacher keeps its depth
    # the student's attention takes that variant's params from `variants:`, overridden by
    # distill.students.<variant>: checked with a registered variant whose test-size params are not its defaults
    def as_json(v):
        return list(v) if isinstance(v, tuple) else v

    def non_default(entry):
        defaults = {k: as_json(v) for k, v in dataclasses.asdict(entry.config()).items()}
        return {k: v for k, v in entry.cls.small_params.items() if defaults[k] != as_json(v)}

    entries = [e for e in VARIANTS if non_default(e)]
    if not entries:
        pytest.skip("no registered variant has test-size parameters that differ from its defaults")
    entry = entries[0]
    small = non_default(entry)
    key = next(iter(small))
    default = as_json(getattr(entry.config(), key))
    for student_params, expected in (({}, as_json(small[key])), ({key: default}, default)):
        config = _config(variants={"full": {}, entry.name: dict(small)},
                         distill={"students": {entry.name: student_params}})
        params = resolve_run(config, "listops", entry.name, 0, "distill")["variant"]["params"]
        assert set(params) == {f.name for f in dataclasses.fields(entry.config)}  # spelled out
        assert params[key] == expected, (entry.name, key, student_params)
    # a variant that `variants:` does not name: its defaults
    config = _config(distill={"students": {entry.name: {}}})
    params = resolve_run(config, "listops", entry.name, 0, "distill")["variant"]["params"]
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


def test_version_1_records_read_with_method_and_label(distilled, tmp_path):
    teacher, _, student, _ = copy.deepcopy(distilled)
    for record in (teacher, student):
        record["schema_version"] = 1
        del record["method"], record["label"]
    teacher.pop("teacher", None)  # written before records named a teacher
    student["variant"] = "distilled"  # version 1 named a student after its (distilled) variant
    (tmp_path / "t.json").write_text(json.dumps(teacher))
    (tmp_path / "s.json").write_text(json.dumps(student))
    old_teacher, old_student = read_record(tmp_path / "t.json"), read_record(tmp_path / "s.json")
    assert old_teacher.get("teacher") is None and (old_teacher["method"], old_teacher["label"]) == ("labels", "full")
    assert (old_student["method"], old_student["label"]) == ("distill", "distilled")


def _summary_rows():
    base = {"task": "listops", "status": "ok", "layers": 2, "params": 1000, "teacher_run_id": None}
    rows = []
    for seed, (t_acc, s_acc) in enumerate([(0.50, 0.45), (0.40, 0.40)]):
        rows.append({**base, "variant": "full", "attention": "full", "seed": seed, "test_acc": t_acc,
                     "train_tokens_per_s": 100.0, "eval_tokens_per_s": 1000.0})
        rows.append({**base, "variant": "distilled[full]", "attention": "full", "seed": seed, "test_acc": s_acc,
                     "layers": 1, "params": 600,
                     "train_tokens_per_s": 150.0 + 50 * seed, "eval_tokens_per_s": 2000.0,
                     "teacher_run_id": f"listops/full/seed{seed}", "teacher_status": "ok", "teacher_test_acc": t_acc,
                     "teacher_train_tokens_per_s": 100.0, "teacher_eval_tokens_per_s": 1000.0,
                     "teacher_params": 1000, "teacher_layers": 2,
                     "distill_temperature": 2.0, "distill_alpha": 0.5})
    return rows


def test_distillation_table_means_per_seed_ratios():
    table = distillation_table(pd.DataFrame(_summary_rows()))
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["task"], row["student"], row["teacher"]) == ("listops", "distilled[full]", "full")
    assert row["student attention"] == "full"
    assert row["layers (student/teacher)"] == "1/2" and row["pairs"] == "2/2"
    assert row["accuracy kept (%)"] == "95.0"  # mean of 0.45/0.50 and 0.40/0.40
    assert row["Δ acc (points)"] == "-2.5"
    assert row["train speed (×)"] == "1.75" and row["eval speed (×)"] == "2.00" and row["params (×)"] == "0.60"


def test_distillation_table_skips_untested_pairs_marks_incomplete_ones_and_is_empty_without_distilled_runs():
    rows = _summary_rows()
    rows[3]["status"] = "diverged"  # a diverged student still tested its best checkpoint: counted, marked
    row = distillation_table(pd.DataFrame(rows)).iloc[0]
    assert row["pairs"] == "2/2†" and row["accuracy kept (%)"] == "95.0"
    rows[3]["status"], rows[3]["test_acc"] = "failed", None  # no test accuracy: not a pair
    row = distillation_table(pd.DataFrame(rows)).iloc[0]
    assert row["pairs"] == "1/2" and row["accuracy kept (%)"] == "90.0"
    assert distillation_table(pd.DataFrame([r for r in rows if r["variant"] == "full"])).empty
