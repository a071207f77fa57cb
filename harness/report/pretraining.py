"""The report's Self-pretraining section: each self-pretrained variant (method ``spt``, ``spt[<variant>]``)
against the same variant trained from scratch on the labels (method ``labels``), paired by task and seed, from
the ``pretrain_*`` columns of ``results/summary.csv``; and, per task, whether the ranking of the variants
changes between the two protocols (``Ranking``: the section's sentences and the Summary's line both say it).

A pair is a seed where the self-pretrained run and the run from scratch both have a test accuracy, whatever
their status; with several machines a pair's runs are of one machine, and each machine's pairs are a row of
their own (``variant @ machine``), as the cost tables name them. Every mean is over the pairs."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from attnbench.harness.report.marks import MARK, incomplete
from attnbench.harness.report.pretraining_figure import figure_pretraining
from attnbench.harness.report.runs import pct
from attnbench.harness.report.writer import Document

HEADING = "Self-pretraining"
PRETRAINING_NOTE = (
    "spt[<v>] is variant v pretrained on its task's own training inputs (masked tokens: a share of each input's "
    "tokens, the mask rate, is hidden and predicted, for the pretraining steps shown; no labels, no validation or "
    "test inputs), then fine-tuned on the labels with the same settings as its run from scratch; it is compared "
    "to v's run from labels of the same task and seed. Pairs: seeds where both have a test accuracy, whatever "
    f"their status / self-pretrained runs ({MARK}: a self-pretrained run, its pretraining or its run from scratch "
    "among them did not finish ok: the Runs table says where it stopped). Accuracies: mean ± sample std over the "
    "pairs; gain: the mean of the per-seed differences (self-pretrained minus from scratch), in points. Times are "
    "training-step time (evaluation excluded), means over the pairs: pretraining, fine-tuning, and their sum, the "
    "cost of self-pretraining, also as a multiple of the run from scratch's (×: the mean of the per-seed ratios). "
    "Tokens seen: the input tokens the pretraining steps went through; masked-token accuracy: the pretraining's "
    "best, on a held-out share of the training inputs. Below the table, per task, the variants that have both "
    "protocols ranked by that mean test accuracy (=: equal at the 0.1 points shown), from scratch and "
    "self-pretrained: a ranking of means, without their uncertainty (the Summary's intervals hold it).")

KEYS = ["task", "attention", "seed"]


def _several_machines(df: pd.DataFrame) -> bool:
    return "machine" in df and df["machine"].nunique() > 1


def pairs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per self-pretrained run (final runs), with its run from scratch's ``scratch_*`` columns where one
    exists (same task, attention and seed, and machine when the runs come from several), and ``name``: the
    variant as the section names it. Empty without self-pretrained runs."""
    if "method" not in df or not (df["method"] == "spt").any():
        return pd.DataFrame()
    final = df[df["stage"].isna() | (df["stage"] == "final")] if "stage" in df else df
    keys = KEYS + (["machine"] if _several_machines(df) else [])
    spt = final[final["method"] == "spt"]
    scratch = final[final["method"] == "labels"].drop_duplicates(keys)
    scratch = scratch[keys + ["test_acc", "status", "train_s"]].rename(
        columns={"test_acc": "scratch_test_acc", "status": "scratch_status", "train_s": "scratch_train_s"})
    out = spt.merge(scratch, on=keys, how="left")
    name = out["attention"].astype(str)
    out["name"] = name + " @ " + out["machine"].astype(str) if "machine" in keys else name
    return out


def paired(runs: pd.DataFrame) -> pd.DataFrame:
    """The self-pretrained runs of ``pairs`` whose seed has both test accuracies."""
    return runs[runs["test_acc"].notna() & runs["scratch_test_acc"].notna()]


def _marked(p: pd.DataFrame) -> bool:
    """Some run of these pairs (self-pretrained, its pretraining, from scratch) did not finish ok."""
    return bool((incomplete(p) | (p["pretrain_status"] != "ok") | (p["scratch_status"] != "ok")).any())


def _mean(values: pd.Series) -> float:
    values = pd.to_numeric(values, errors="coerce")
    return float(values.mean()) if values.notna().any() else float("nan")


def _cell(x: float, fmt: Callable[[float], str]) -> str:
    return "–" if pd.isna(x) else fmt(x)


def _acc(values: pd.Series) -> str:
    """'51.0 ± 1.0' (one value: '51.0'; none: '–')."""
    if values.empty:
        return "–"
    sd = f" ± {pct(values.std(ddof=1))}" if len(values) > 1 else ""
    return pct(values.mean()) + sd


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def _objective(runs: pd.DataFrame) -> str:
    """'token, 10%' (the group's settings; several: each)."""
    settings = sorted({(str(m), float(r)) for m, r in zip(runs["pretrain_masking"], runs["pretrain_mask_rate"],
                                                          strict=True) if pd.notna(m) and pd.notna(r)})
    return "; ".join(f"{m}, {100 * r:g}%" for m, r in settings) or "–"


def _range(values: pd.Series) -> str:
    """A whole number, or 'low–high' where the runs differ ('–': none)."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "–"
    low, high = int(values.min()), int(values.max())
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def pretraining_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per task and self-pretrained variant: accuracy from scratch and self-pretrained, the gain, and what
    self-pretraining cost, over the pairs (empty when no run was self-pretrained)."""
    runs = pairs(df)
    if runs.empty:
        return pd.DataFrame()
    rows = []
    for (task, name), g in runs.groupby(["task", "name"], sort=True):
        p = paired(g)
        total = pd.to_numeric(p["pretrain_train_s"], errors="coerce") + pd.to_numeric(p["train_s"], errors="coerce")
        scratch_s = pd.to_numeric(p["scratch_train_s"], errors="coerce")
        rows.append({
            "task": task, "variant": name,
            "objective": _objective(g),
            "pretraining steps": _range(p["pretrain_steps"]),
            "pairs": f"{len(p)}/{len(g)}" + (MARK if _marked(p) else ""),
            "from scratch (%)": _acc(p["scratch_test_acc"]),
            "self-pretrained (%)": _acc(p["test_acc"]),
            "gain (points)": _cell(_mean(p["test_acc"] - p["scratch_test_acc"]), _points),
            "pretraining (s)": _cell(_mean(p["pretrain_train_s"]), lambda x: f"{x:.1f}"),
            "fine-tuning (s)": _cell(_mean(p["train_s"]), lambda x: f"{x:.1f}"),
            "total (s)": _cell(_mean(total), lambda x: f"{x:.1f}"),
            "total (× from scratch)": _cell(_mean(total / scratch_s.where(scratch_s > 0)), lambda x: f"{x:.2f}"),
            "tokens seen": _cell(_mean(p["pretrain_tokens_seen"]), lambda x: f"{x:,.0f}"),
            "masked-token acc (%)": _cell(_mean(p["pretrain_masked_acc"]), pct),
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the ranking of the variants per task

def _order(means: dict[str, float]) -> list[list[str]]:
    """The variants from the highest mean test accuracy down, as groups tied at the precision shown (0.1
    points), each group by name."""
    shown = {v: round(100 * m, 1) for v, m in means.items()}
    return [sorted(v for v in shown if shown[v] == s) for s in sorted(set(shown.values()), reverse=True)]


def _order_text(order: list[list[str]]) -> str:
    return " > ".join(" = ".join(group) for group in order)


@dataclass(frozen=True)
class Ranking:
    """One task's variants that have both protocols (a pair at least), by mean test accuracy over their pairs
    from scratch and self-pretrained; ``gain`` the mean of the variants' gains (points as a fraction),
    ``marked`` whether a run of their pairs did not finish ok."""

    task: str
    scratch: list[list[str]]
    pretrained: list[list[str]]
    gain: float
    marked: bool

    @property
    def variants(self) -> int:
        return sum(len(group) for group in self.scratch)

    @property
    def changes(self) -> bool | None:
        """Whether the order (ties included) differs between the protocols; None: fewer than two variants."""
        return None if self.variants < 2 else self.scratch != self.pretrained

    @property
    def text(self) -> str:
        """'from scratch full > linear; self-pretrained linear > full: the ranking changes'."""
        if self.variants == 0:
            return "no variant has a seed with a test accuracy from both protocols: no ranking to compare"
        if self.variants == 1:
            return f"only {self.scratch[0][0]} has both protocols: no ranking to compare"
        verdict = "the ranking changes" if self.changes else "the ranking does not change"
        return (f"from scratch {_order_text(self.scratch)}; self-pretrained {_order_text(self.pretrained)}: "
                f"{verdict}")

    @property
    def sentence(self) -> str:
        """'listops: from scratch full > linear; self-pretrained linear > full: the ranking changes.'"""
        return f"{self.task}: {self.text}."


def rankings(df: pd.DataFrame) -> list[Ranking]:
    """Per task with self-pretrained runs (by name), its ``Ranking``; none without self-pretrained runs."""
    runs = pairs(df)
    if runs.empty:
        return []
    out = []
    for task, t in runs.groupby("task", sort=True):
        p = paired(t)
        by_variant = p.groupby("name", sort=True)
        scratch = by_variant["scratch_test_acc"].mean().to_dict()
        pretrained = by_variant["test_acc"].mean().to_dict()
        gains = (p["test_acc"] - p["scratch_test_acc"]).groupby(p["name"]).mean()
        out.append(Ranking(str(task), _order(scratch), _order(pretrained), _mean(gains), _marked(p)))
    return out


def pretraining_line(df: pd.DataFrame) -> str | None:
    """The Summary's line: per task, the mean gain of self-pretraining over its variants and whether the
    ranking of the variants changes (``Ranking.text``); None without self-pretrained runs."""
    found = rankings(df)
    if not found:
        return None
    parts = [f"**{r.task}** {_cell(r.gain, _points)} points{MARK if r.marked else ''} ({r.text})" for r in found]
    marked = any(r.marked for r in found)
    return ("Self-pretrained against from scratch (test accuracy, mean gain over a task's variants, paired by seed): "
            + "; ".join(parts) + (f" ({MARK}: with runs that did not finish ok; see Self-pretraining)" if marked
                                  else "") + ".")


def pretraining_section(doc: Document, df: pd.DataFrame) -> None:
    """Nothing when no run was self-pretrained."""
    table = pretraining_table(df)
    if table.empty:
        return
    doc.heading(2, HEADING)
    doc.note(PRETRAINING_NOTE)
    doc.table(table)
    doc.bullets([r.sentence for r in rankings(df)])
    runs = pairs(df)
    marked = {(str(task), str(name)): _marked(paired(g)) for (task, name), g in runs.groupby(["task", "name"])}
    doc.figure(figure_pretraining(paired(runs), marked, doc.out_dir / "figures" / "self_pretraining.png"),
               "Test accuracy from scratch and self-pretrained per task and variant, over the seeds paired "
               "(click to enlarge)", md_alt="from scratch vs self-pretrained accuracy")
