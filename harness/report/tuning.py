"""The report's Tuning section: per task and variant, the trials a tuning ran before the
final runs, each variant given the same number of trials: tuned against untuned validation accuracy, the
settings selected, how much the accuracy varied across trials (how sensitive the variant is to its settings)
and after how many trials the best was first found (whether the budget sufficed), with the best-so-far curve
against trials; and the Summary's line saying the accuracies are of tuned settings.

Rows of the runs' table (``results/summary.csv``) are of two stages: ``tune`` (a trial: it never reads the
test split) and ``final`` (a run whose test accuracy the report compares; a row without a stage is one).
A trial's ``trial`` is its index (0: the config's own settings); a tuned final run's is the trial selected,
``point`` its settings (a JSON object of dotted keys). Every other section shows ``final_runs`` only.

A trial's score is its best validation accuracy (the mean where one trial is recorded more than once); a
trial that stopped early counts with the accuracy it reached, one without any (failed) is counted by status."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
import seaborn as sns

from attnbench.harness.report.differences import pts, signed_pts
from attnbench.harness.report.layout import fit_accuracy
from attnbench.harness.report.runs import accuracy_cell, counts
from attnbench.harness.report.writer import Document, save_figure, suptitle

TUNE, FINAL = "tune", "final"
#: a setting's name in a table, where shorter than its key without the section
SHORT = {"weight_decay": "wd", "warmup_steps": "warmup"}
#: the settings named first, in this order; any others follow in key order
ORDER = ["train.lr", "train.weight_decay", "train.warmup_steps", "model.dropout"]


def stages(df: pd.DataFrame) -> pd.Series:
    """Per row its stage: ``final`` where none is recorded (results from before tuning existed)."""
    if "stage" not in df:
        return pd.Series(FINAL, index=df.index, dtype=object)
    return df["stage"].astype(object).where(df["stage"].notna(), FINAL)


def final_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of stage ``final`` (a missing stage counts as final): the runs every other section shows."""
    return df[stages(df) == FINAL]


def trials_of(df: pd.DataFrame) -> pd.DataFrame:
    """The tuning trials (stage ``tune``)."""
    return df[stages(df) == TUNE]


def _number(x) -> str:
    """A setting's value: whole numbers whole, others to 3 significant digits ('0.003', '1e-5')."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    return re.sub(r"e([+-])0*(\d)", lambda m: f"e{m[1].replace('+', '')}{m[2]}", f"{x:.3g}")


def format_point(point) -> str:
    """A point's JSON as 'lr 0.003, wd 0.02, warmup 40, dropout 0.15': keys without their section (the
    full key where two would read alike), ``ORDER``'s first; empty: "the config's own"."""
    if not isinstance(point, str) or not point.strip():
        return "the config's own"
    try:
        values = json.loads(point)
    except ValueError:
        return point
    if not isinstance(values, dict):
        return point
    names = {key: SHORT.get(key.split(".", 1)[-1], key.split(".", 1)[-1]) for key in values}
    alike = {name for name in names.values() if list(names.values()).count(name) > 1}
    keys = [k for k in ORDER if k in values] + sorted(k for k in values if k not in ORDER)
    return ", ".join(f"{key if names[key] in alike else names[key]} {_number(values[key])}" for key in keys)


@dataclass(frozen=True)
class Tuned:
    """One (task, variant)'s tuning: ``accs`` its trials' validation accuracy (%) by trial index, in order
    (NaN: none), ``selected`` the trial chosen (None: no trial scored), ``point`` its settings in words
    ('–': none chosen),
    ``unscored`` the statuses of trials without an accuracy, ``finals`` the final runs."""

    task: str
    variant: str
    accs: pd.Series
    selected: int | None
    point: str
    unscored: pd.Series
    finals: pd.DataFrame

    @property
    def trials(self) -> int:
        return len(self.accs)

    @property
    def untuned(self) -> float:
        return float(self.accs.get(0, math.nan))

    @property
    def tuned(self) -> float:
        return math.nan if self.selected is None else float(self.accs.get(self.selected, math.nan))

    @property
    def gain(self) -> float:
        return self.tuned - self.untuned

    @property
    def best_at(self) -> int | None:
        """After how many trials (1..``trials``, in trial order) the best accuracy was first reached."""
        scored = self.accs.dropna()
        return None if scored.empty else list(self.accs.index).index(scored.idxmax()) + 1

    @property
    def best_last(self) -> bool:
        """The best was first reached at the last trial: more trials might have found better settings."""
        return self.trials > 1 and self.best_at == self.trials


def _first(values: pd.Series):
    values = values.dropna()
    return values.iloc[0] if len(values) else None


def tuned_pairs(df: pd.DataFrame) -> list[Tuned]:
    """Every (task, variant) with trials, by task and variant. The selected trial is the one the pair's
    final runs name (``trial``), else the best-scoring (the first of equals)."""
    trials, finals = trials_of(df), final_runs(df)
    out = []
    for (task, variant), t in trials.groupby(["task", "variant"], sort=True):
        t = t.assign(trial=pd.to_numeric(t["trial"], errors="coerce")).dropna(subset=["trial"])
        t = t.assign(trial=t["trial"].astype(int))
        accs = (100 * t.groupby("trial")["best_val_acc"].mean()).sort_index()
        f = finals[(finals["task"] == task) & (finals["variant"] == variant)]
        named = pd.to_numeric(f["trial"], errors="coerce").dropna() if "trial" in f else pd.Series(dtype=float)
        selected: int | None
        if len(named):
            selected = int(named.mode().iloc[0])
        else:
            selected = int(accs.idxmax()) if accs.notna().any() else None
        point = (_first(f["point"]) if "point" in f else None) or _first(t[t["trial"] == selected]["point"])
        out.append(Tuned(task, variant, accs, selected, "–" if selected is None else format_point(point),
                         t[t["best_val_acc"].isna()]["status"], f))
    return out


def _spread(accs: pd.Series) -> str:
    """'48.1–61.3 (std 4.2)' over the trials with an accuracy."""
    scored = accs.dropna()
    if scored.empty:
        return "–"
    std = f" (std {scored.std(ddof=1):.1f})" if len(scored) > 1 else ""
    return f"{scored.min():.1f}–{scored.max():.1f}{std}"


def tuning_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, variant) with trials (``df``: every row, trials and final runs): trials run,
    untuned (trial 0) and tuned (selected trial) validation accuracy, the gain in points, the settings
    chosen, the spread across trials, after how many trials the best was reached and the final runs' test
    accuracy (mean ± std over seeds, n: ``runs.accuracy_cell``)."""
    rows = []
    for p in tuned_pairs(df):
        rows.append({"task": p.task, "variant": p.variant,
                     "trials": str(p.trials) + (f" ({counts(p.unscored, True)})" if len(p.unscored) else ""),
                     "untuned val (%)": pts(p.untuned), "tuned val (%)": pts(p.tuned),
                     "gain (points)": signed_pts(p.gain), "chosen settings": p.point,
                     "val across trials (%)": _spread(p.accs),
                     "best reached": "–" if p.best_at is None else f"after {p.best_at} of {p.trials} trials",
                     "final test (%)": accuracy_cell(p.finals) if len(p.finals) else "–"})
    return pd.DataFrame(rows)


def figure_best_so_far(df: pd.DataFrame, path: Path) -> Path | None:
    """A panel per task: per variant the best validation accuracy so far against trials run (1..N, in trial
    order; a running max), each trial's own accuracy as a faint point. None: no trial has an accuracy."""
    pairs = [p for p in tuned_pairs(df) if p.accs.notna().any()]
    if not pairs:
        return None
    tasks = sorted({p.task for p in pairs})
    variants = sorted({p.variant for p in pairs})
    palette = dict(zip(variants, sns.color_palette("colorblind", len(variants)), strict=True))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for p in (p for p in pairs if p.task == task):
            x = range(1, p.trials + 1)
            color = palette[p.variant]
            ax.scatter(x, p.accs, color=color, alpha=0.3, s=14)
            ax.plot(x, p.accs.cummax().ffill(), color=color, lw=2, drawstyle="steps-post", label=p.variant)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("trials run")
        ax.set_ylabel("validation accuracy (%)")
        fit_accuracy(ax)
        ax.legend(fontsize=8)
    suptitle(fig, "Best validation accuracy so far against trials run")
    return save_figure(fig, path)


def _trials_text(pairs: list[Tuned]) -> str:
    """'8 trials', or '6–8 trials' where the pairs ran different numbers."""
    low, high = min(p.trials for p in pairs), max(p.trials for p in pairs)
    return f"{high} trial{'s' * (high > 1)}" if low == high else f"{low}–{high} trials"


def tuning_section(doc: Document, df: pd.DataFrame) -> None:
    """The section, from every row of the runs' table; nothing at all when no row is a trial."""
    pairs = tuned_pairs(df)
    if not pairs:
        return
    doc.heading(2, "Tuning")
    doc.note(f"Before the final runs, each (task, variant) ran {_trials_text(pairs)}, on its training and "
             "validation splits only: trial 0 with the config's own settings, the others at the points of one "
             "seeded design, the same points for every variant (a variant's own parameters aside). The trial with "
             "the best validation accuracy is selected (the test split is never read to choose), and the final runs "
             "train with its settings over the seeds; every other section shows those final runs. `untuned`: trial "
             "0; `tuned`: the selected trial; `val across trials`: the lowest–highest of the trials' validation "
             "accuracies and their std (how much the variant depends on its settings); `best reached`: after how "
             "many trials, in order, the best was first found. A trial that stopped early counts with the accuracy "
             "it reached; one without any is counted in `trials` by status.")
    doc.table(tuning_table(df))
    doc.figure(figure_best_so_far(df, doc.out_dir / "figures" / "tuning.png"),
               "Best validation accuracy so far against trials run per task (line: best so far; faint points: each "
               "trial's own)", md_alt="best validation accuracy so far against trials")
    last = [f"{p.variant} on {p.task}" for p in pairs if p.best_last]
    if last:
        doc.note(f"Best found only at the last trial, so the budget may not have sufficed (more trials might find "
                 f"better settings): {', '.join(last)}.")


def tuned_line(df: pd.DataFrame) -> str | None:
    """The Summary's line saying the accuracies are of tuned settings, with the largest change tuning
    made (and the (task, variant) pairs not tuned, if any); None when nothing was tuned."""
    pairs = tuned_pairs(df)
    if not pairs:
        return None
    text = f"Accuracies are of tuned settings ({_trials_text(pairs)} per variant, selected on validation accuracy)"
    gains = [p for p in pairs if math.isfinite(p.gain)]
    if gains:
        top = max(gains, key=lambda p: (p.gain, p.task, p.variant))
        text += (f": tuning changed the validation accuracy by at most {max(abs(p.gain) for p in gains):.1f} points "
                 f"(largest gain: {top.variant} on {top.task}, {top.gain:+.1f})")
    finals = final_runs(df)
    tuned = {(p.task, p.variant) for p in pairs}
    untuned = sorted(set(zip(finals["task"], finals["variant"], strict=True)) - tuned)
    if untuned:
        text += "; not tuned: " + ", ".join(f"{v} on {t}" for t, v in untuned)
    return text + "."
