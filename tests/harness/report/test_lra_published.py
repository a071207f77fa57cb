"""LRA's published Table 1, the averaging conventions, the report's comparison table, and the
mapping from variants to the published models."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from attnbench.harness.report.lra import lra_section, lra_table
from attnbench.harness.report.lra_published import PRINTED_AVERAGE, PUBLISHED, lra_average, published_row
from attnbench.harness.report.writer import Document
from attnbench.harness.run.train_config import TrainConfig, lr_factor
from attnbench.variants import VARIANTS


def test_five_task_average_reproduces_the_printed_averages():
    for model, printed in PRINTED_AVERAGE.items():
        ours = lra_average(PUBLISHED[model], 5)
        if model == "Sinkhorn Trans.":  # the paper prints 51.39 for a row whose mean is 51.48
            assert ours == pytest.approx(51.476, abs=1e-3)
        else:
            assert ours == pytest.approx(printed, abs=0.006), model


def test_six_task_average_counts_path_x_fail_as_50():
    # the values S4 and later papers print for LRA's rows
    assert lra_average(PUBLISHED["Transformer"], 6) == pytest.approx(53.66, abs=0.006)
    assert lra_average(PUBLISHED["Performer"], 6) == pytest.approx(51.18, abs=0.006)
    assert lra_average(PUBLISHED["BigBird"], 6) == pytest.approx(54.18, abs=0.006)


def test_average_needs_every_task_of_its_convention():
    five = {"listops": 40.0, "text": 60.0, "retrieval": 70.0, "image": 45.0, "pathfinder": 80.0}
    assert lra_average(five, 5) == pytest.approx(59.0)
    assert lra_average(five, 6) is None  # no Path-X
    assert lra_average({**five, "pathx": 62.0}, 6) == pytest.approx(357 / 6)
    assert lra_average({**five, "image": math.nan}, 5) is None
    assert lra_average({k: v for k, v in five.items() if k != "text"}, 5) is None
    with pytest.raises(ValueError, match="allowed: 5, 6"):
        lra_average(five, 4)


@pytest.mark.parametrize("variant, params, model", [
    ("full", {}, "Transformer"), ("window", {}, "Longformer"), ("lsh", {}, "Reformer"),
    ("sparse", {}, "BigBird"), ("sparse", {"random_blocks": 0, "strided_every": 4}, "Sparse Trans."),
    ("sparse", {"random_blocks": 0}, None), ("linear", {}, "Linear Trans."),
    ("linear", {"feature_map": "favor"}, "Performer"), ("local", {}, "Local Attention"),
    ("linformer", {}, "Linformer"), ("sinkhorn", {}, "Sinkhorn Trans."),
    ("synthesizer", {"kind": "random", "dot_product": True}, "Synthesizer"), ("synthesizer", {}, None),
    ("nystrom", {}, "Nystromformer"),
])
def test_variants_name_the_published_model_they_implement(variant, params, model):
    assert VARIANTS.get(variant).cls.published_as(params) == model
    assert model is None or published_row(model)[0]


def _runs(rows, lra_settings=True):
    """Runs' rows; ``lra_settings``: whether they ran LRA's data and lengths (the comparison needs it)."""
    cols = ["task", "variant", "published_as", "seed", "status", "test_acc", "seq_len"]
    df = pd.DataFrame(rows, columns=cols)
    df["lra_settings"] = lra_settings
    return df


def test_report_table_interleaves_our_rows_with_the_published_ones():
    rows = []
    for task, n in (("listops", 2000), ("text", 1000), ("retrieval", 4000), ("image", 1024), ("pathfinder", 1024)):
        rows += [(task, "full", "Transformer", 0, "ok", 0.50, n), (task, "full", "Transformer", 1, "ok", 0.60, n),
                 (task, "linear", "Performer", 0, "ok", 0.40, n)]
    rows.append(("listops", "linear", "Performer", 1, "oom", None, 2000))
    rows.append(("other", "full", "Transformer", 0, "ok", 0.99, 10))  # not an LRA task: not in the table
    table = lra_table(_runs(rows), 5)
    assert list(table["model"]) == ["full (this run)", "Transformer (published, LRA Table 1)",
                                    "linear (this run)", "Performer (published, LRA Table 1)"]
    assert list(table.columns) == ["model", "form", "ListOps (N=2000)", "Text (N=1000)", "Retrieval (N=4000)",
                                   "Image (N=1024)", "Pathfinder (N=1024)", "average", "seeds"]
    assert table.iloc[0]["ListOps (N=2000)"] == "55.00" and table.iloc[0]["average"] == "55.00"
    assert table.iloc[1]["ListOps (N=2000)"] == "36.37" and table.iloc[1]["average"] == "54.39"
    assert table.iloc[2]["ListOps (N=2000)"] == "40.00"  # the OOM seed is left out of the mean
    assert table.iloc[0]["seeds"] == "2" and table.iloc[1]["seeds"] == ""


def test_a_later_papers_row_is_labelled_with_its_source():
    rows = [(task, "nystrom", "Nystromformer", 0, "ok", 0.5, 1024) for task in ("listops", "text", "retrieval",
                                                                           "image", "pathfinder")]
    table = lra_table(_runs(rows), 5)
    assert list(table["model"]) == ["nystrom (this run)", "Nystromformer (published, Xiong et al., Nyströmformer, "
                                                          "AAAI 2021)"]
    assert table.iloc[1]["Retrieval (N=1024)"] == "79.56" and table.iloc[1]["average"] == "58.95"
    assert lra_table(_runs(rows + [("pathx", "nystrom", "Nystromformer", 0, "ok", 0.5, 16384)]), 6).iloc[1][
        "Path-X (N=16384)"] == "–"  # not reported, not a FAIL
    assert lra_average(published_row("Nystromformer")[0], 6) is None


def test_report_table_six_task_convention_and_missing_tasks():
    rows = [("listops", "full", "Transformer", 0, "ok", 0.5, 48), ("pathx", "full", "Transformer", 0, "ok", 0.5, 256)]
    table = lra_table(_runs(rows), 6)
    assert table.iloc[0]["average"] == "–"  # four tasks were not run
    assert table.iloc[1]["Path-X (N=256)"] == "FAIL"
    assert table.iloc[1]["average"] == "53.66"
    doc = Document(Path("."))
    lra_section(doc, _runs(rows), 6)
    md, html = "\n".join(doc.md), "".join(doc.html)
    assert md.startswith("## LRA Table 1 comparison") and "a Path-X FAIL counted as 50" in md
    assert "<h2 id='lra-table-1-comparison'>LRA Table 1 comparison</h2>" in html and "published" in html
    empty = Document(Path("."))
    lra_section(empty, _runs([("other", "full", None, 0, "ok", 0.5, 8)]), 5)
    assert empty.md == empty.html == []


@pytest.mark.parametrize("warmup, steps, peak, end", [(1000, 5000, 1.58e-3, 7.1e-4), (8000, 5000, 5.59e-4, 3.5e-4),
                                                     (8000, 20000, 5.59e-4, 3.5e-4)])
def test_rsqrt_schedule_is_lras(warmup, steps, peak, end):
    """LRA: lr(step) = 0.05 * min(1, step / warmup) / sqrt(max(step, warmup)); our lr is its peak."""
    cfg = TrainConfig(steps=steps, warmup_steps=warmup, schedule="rsqrt", lr=0.05 / math.sqrt(warmup))
    lra = [0.05 * min(1.0, s / warmup) / math.sqrt(max(s, warmup)) for s in range(1, steps + 1)]
    ours = [cfg.lr * lr_factor(s, cfg) for s in range(steps)]  # optimiser step s is LRA's step s + 1
    assert max(abs(a - b) / b for a, b in zip(ours, lra, strict=True)) < 1e-9
    assert max(ours) == pytest.approx(peak, rel=0.01) if warmup <= steps else max(ours) < peak
    assert ours[-1] == pytest.approx(end, rel=0.02)


def test_a_variant_run_as_lras_code_and_as_its_paper_has_a_row_for_each():
    from attnbench.harness.report.forms import with_forms

    rows = [(task, "lsh", "Reformer", seed, "ok", acc, n) for task, n in (("listops", 2000), ("text", 1000))
            for seed, acc in ((0, 0.30), (1, 0.50))]
    df = _runs(rows)
    df["mechanism_form"] = ["LRA's code", "paper"] * 2  # seed 0 from config/lra.yaml, seed 1 from lra_paper.yaml
    df = with_forms(df)
    assert sorted(set(df["variant"])) == ["lsh (LRA's code)", "lsh (paper)"]
    table = lra_table(df, 5)
    ours = table[table["model"].str.endswith("(this run)")]
    assert list(ours["form"]) == ["LRA's code", "paper"]
    assert list(ours["ListOps (N=2000)"]) == ["30.00", "50.00"]  # not pooled
    assert set(table[table["model"].str.contains("published")]["form"]) == {"LRA's code"}
    one_form = _runs(rows).assign(mechanism_form="paper")
    assert set(with_forms(one_form)["variant"]) == {"lsh"}  # one form: the label as it is

