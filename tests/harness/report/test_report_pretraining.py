"""The report's Self-pretraining section and its Summary line: each spt[<variant>] against the variant's run
from scratch of the same task and seed (gain: the mean of per-seed differences over the seeds where both have
a test accuracy), what self-pretraining cost, and whether the ranking of the variants changes between the two
protocols. Runs' tables are built as in test_report_summary.py, with the ``pretrain_*`` columns aggregate
writes for a self-pretrained run."""
from __future__ import annotations

import pandas as pd
import pytest
from test_report_summary import MACHINE_A, MACHINE_B, run_row, table

from attnbench.harness.report.pretraining import (
    pretraining_line,
    pretraining_section,
    pretraining_table,
    rankings,
)
from attnbench.harness.report.render import render_report
from attnbench.harness.report.writer import Document


def scratch(task: str, variant: str, seed: int, acc: float, train_s: float = 20.0, **kw) -> dict:
    return {**run_row(task, variant, seed, acc, **kw), "train_s": train_s}


def spt(task: str, variant: str, seed: int, acc: float | None, *, pretrain_s: float = 30.0, train_s: float = 10.0,
        tokens: int = 96_000, masked: float = 0.4, pretrain_status: str = "ok", **kw) -> dict:
    row = run_row(task, f"spt[{variant}]", seed, acc, **kw)
    row.update(attention=variant, method="spt", train_s=train_s,
               pretrain_run_id=f"{task}/pretrain[{variant}]/seed{seed}", pretrain_status=pretrain_status,
               pretrain_steps=200, pretrain_train_s=pretrain_s, pretrain_wall_s=pretrain_s + 5,
               pretrain_tokens_seen=tokens, pretrain_masked_acc=masked, pretrain_peak_memory_mb=50.0,
               pretrain_mask_rate=0.1, pretrain_masking="token")
    return row


def listops() -> list[dict]:
    """full and linear on listops, seeds 0 and 1 paired; an spt seed 2 without a run from scratch and a run from
    scratch seed 3 without an spt run, both far off, which no mean may count. From scratch linear > full,
    self-pretrained full > linear."""
    return [
        scratch("listops", "full", 0, 0.50, train_s=10.0), scratch("listops", "full", 1, 0.54, train_s=46.0),
        scratch("listops", "full", 3, 0.10),
        spt("listops", "full", 0, 0.55, pretrain_s=30.0, train_s=10.0, masked=0.40),
        spt("listops", "full", 1, 0.61, pretrain_s=34.0, train_s=12.0, masked=0.44),
        spt("listops", "full", 2, 0.90, pretrain_s=1000.0, train_s=1000.0, masked=0.99),
        scratch("listops", "linear", 0, 0.56), scratch("listops", "linear", 1, 0.56),
        spt("listops", "linear", 0, 0.52), spt("listops", "linear", 1, 0.54),
    ]


def image() -> list[dict]:
    """full above linear in both protocols on image."""
    return [scratch("image", v, s, acc) for v, acc in (("full", 0.60), ("linear", 0.50)) for s in (0, 1)] + \
        [spt("image", v, s, acc) for v, acc in (("full", 0.70), ("linear", 0.55)) for s in (0, 1)]


def by_variant(df: pd.DataFrame) -> dict[tuple[str, str], dict]:
    return {(r["task"], r["variant"]): r for r in pretraining_table(df).to_dict("records")}


def test_the_table_pairs_by_seed_and_the_gain_is_the_mean_of_per_seed_differences():
    rows = by_variant(table(listops()))
    full = rows[("listops", "full")]
    assert full["pairs"] == "2/3"  # seed 2 has no run from scratch
    assert full["from scratch (%)"] == "52.0 ± 2.8"  # seeds 0, 1 (50, 54): not seed 3's 10%
    assert full["self-pretrained (%)"] == "58.0 ± 4.2"  # seeds 0, 1 (55, 61): not seed 2's 90%
    assert full["gain (points)"] == "+6.0"
    assert full["objective"] == "token, 10%" and full["pretraining steps"] == "200"
    assert full["pretraining (s)"] == "32.0" and full["fine-tuning (s)"] == "11.0" and full["total (s)"] == "43.0"
    assert full["total (× from scratch)"] == "2.50"  # per seed 40/10 and 46/46: their mean, not 43/28
    assert full["tokens seen"] == "96,000" and full["masked-token acc (%)"] == "42.0"
    linear = rows[("listops", "linear")]
    assert linear["pairs"] == "2/2" and linear["gain (points)"] == "-3.0"
    assert linear["from scratch (%)"] == "56.0 ± 0.0" and linear["self-pretrained (%)"] == "53.0 ± 1.4"


def test_the_ranking_sentence_says_whether_the_order_changes():
    found = {r.task: r for r in rankings(table(listops() + image()))}
    assert found["listops"].changes is True
    assert found["listops"].sentence == ("listops: from scratch linear > full; self-pretrained full > linear: "
                                         "the ranking changes.")
    assert found["image"].changes is False
    assert found["image"].sentence == ("image: from scratch full > linear; self-pretrained full > linear: "
                                       "the ranking does not change.")
    # a task's gain: the mean of its variants' gains (listops +6 and -3; image +10 and +5)
    assert found["listops"].gain == pytest.approx(0.015) and found["image"].gain == pytest.approx(0.075)


def test_one_variant_has_no_ranking_and_ties_at_the_shown_precision_are_ties():
    one = rankings(table([r for r in listops() if r["attention"] == "full"]))[0]
    assert one.changes is None
    assert one.sentence == "listops: only full has both protocols: no ranking to compare."
    tied = image() + [scratch("image", "window", s, 0.60) for s in (0, 1)] + \
        [spt("image", "window", s, 0.70 + 1e-6) for s in (0, 1)]
    found = rankings(table(tied))[0]
    assert found.sentence == ("image: from scratch full = window > linear; self-pretrained full = window > linear: "
                              "the ranking does not change.")
    lone = rankings(table([spt("image", "full", 0, 0.7)]))[0]  # no run from scratch: nothing to rank
    assert lone.changes is None and "no ranking to compare" in lone.sentence
    assert by_variant(table([spt("image", "full", 0, 0.7)]))[("image", "full")]["gain (points)"] == "–"


def test_a_pair_with_a_run_that_did_not_finish_ok_is_marked():
    rows = listops()
    rows[0] = {**rows[0], "status": "timeout"}  # full's run from scratch, seed 0
    assert by_variant(table(rows))[("listops", "full")]["pairs"] == "2/3†"
    assert by_variant(table(rows))[("listops", "linear")]["pairs"] == "2/2"
    rows = listops()
    rows[-1] = {**rows[-1], "pretrain_status": "timeout"}  # linear's pretraining, seed 1
    assert by_variant(table(rows))[("listops", "linear")]["pairs"] == "2/2†"
    line = pretraining_line(table(rows))
    assert "**listops** +1.5 points† (" in line and line.endswith("(†: with runs that did not finish ok; see "
                                                                  "Self-pretraining).")
    rows = listops()
    # a failed self-pretrained run has no test accuracy: in no pair, counted, and no pair is marked for it
    rows[-1] = {**rows[-1], "status": "failed", "test_acc": None}
    linear = by_variant(table(rows))[("listops", "linear")]
    assert linear["pairs"] == "1/2" and linear["gain (points)"] == "-4.0"


def test_pairs_are_of_one_machine():
    rows = [scratch("listops", "full", 0, 0.50, machine=MACHINE_A), spt("listops", "full", 0, 0.60, machine=MACHINE_A),
            scratch("listops", "full", 1, 0.50, machine=MACHINE_B), spt("listops", "full", 0, 0.90, machine=MACHINE_B)]
    df = table(rows)
    df["machine"] = df["device_name"]
    rows = by_variant(df)
    assert rows[("listops", "full @ Test CPU A")]["gain (points)"] == "+10.0"
    assert rows[("listops", "full @ Test GPU B")]["pairs"] == "0/1"  # its seed 0 from scratch ran on A


def test_nothing_without_self_pretrained_runs(tmp_path):
    df = table([r for r in listops() if r["method"] == "labels"])
    assert pretraining_table(df).empty and rankings(df) == [] and pretraining_line(df) is None
    doc = Document(tmp_path)
    pretraining_section(doc, df)
    assert doc.md == [] and doc.html == []


def test_the_report_shows_the_section_after_distillation_and_the_summary_line(tmp_path):
    rows = listops() + [{**run_row("listops", "distilled[linear]", s, 0.5), "method": "distill", "attention": "linear",
                         "teacher_run_id": f"listops/full/seed{s}", "teacher_status": "ok", "teacher_test_acc": 0.5,
                         "teacher_layers": 2, "teacher_params": 1000} for s in (0, 1)]
    table(rows).to_csv(tmp_path / "summary.csv", index=False)
    out = render_report(tmp_path / "summary.csv", tmp_path / "out").parent
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert md.index("## Distillation") < md.index("## Self-pretraining") < md.index("## Runs")
    section = md[md.index("## Self-pretraining"):md.index("## LRA")] if "## LRA" in md else \
        md[md.index("## Self-pretraining"):md.index("## Runs")]
    assert "| listops | full | token, 10% | 200 | 2/3 | 52.0 ± 2.8 | 58.0 ± 4.2 | +6.0 |" in section
    assert "- listops: from scratch linear > full; self-pretrained full > linear: the ranking changes." in section
    summary = md[md.index("## Summary"):md.index("## ", md.index("## Summary") + 3)]
    assert ("- Self-pretrained against from scratch (test accuracy, mean gain over a task's variants, paired by "
            "seed): **listops** +1.5 points (from scratch linear > full; self-pretrained full > linear: the ranking "
            "changes).") in summary
    assert "![from scratch vs self-pretrained accuracy](figures/self_pretraining.png)" in section
    assert (out / "figures" / "self_pretraining.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_figure_without_pairs(tmp_path):
    doc = Document(tmp_path)
    pretraining_section(doc, table([spt("image", "full", 0, 0.7)]))  # no run from scratch
    assert "| image | full | token, 10% | – | 0/1 | – | – | – |" in "\n".join(doc.md)
    assert "_from scratch vs self-pretrained accuracy: no data to plot_" in doc.md
    assert not (tmp_path / "figures" / "self_pretraining.png").exists()
