"""Per-class evidence in the report: per task, each label's test accuracy per class (mean over its runs) and
the confusion matrix of the task's best label (the highest mean test accuracy), from the test split's
confusion counts each run's record holds (``accuracy.test_confusion``: rows the true class, columns the
predicted one) and the class names beside them (``data.label_names``; ids where a record has none).

The records are read at report time (the record path of each row of ``summary.csv``), with care, as
``curves`` reads the curves beside them: a record that is not there, or holds no confusion (one written
before confusions were recorded), leaves its run out of this section, counted in one note; a record that
cannot be read or disagrees with its row (another run, a table that is not square counts of its classes,
counts that do not make its test accuracy) is left out with a warning naming it."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from attnbench.harness.core.json_values import UnreadableJSON, read_json
from attnbench.harness.report.marks import MARK, footnote, mark, named_runs, tested
from attnbench.harness.report.measurements import whole
from attnbench.harness.report.writer import Document, save_figure

MOST_CLASSES = 20  # classes a table or figure shows at most: beyond, the best label's most-confused ones
ANNOTATED_COUNTS = 10  # classes up to which a figure's cells also show their counts
TOLERANCE = 1e-6  # between a confusion's accuracy and the run's test accuracy


@dataclass(frozen=True)
class Confusion:
    """One run's test confusion: ``counts[true, predicted]`` and the class names in id order."""

    counts: np.ndarray
    names: tuple[str, ...]


def _square_counts(value: object) -> np.ndarray | None:
    """``value`` as a square integer array of counts >= 0, or None when it is not one."""
    if not isinstance(value, list) or not value or not all(isinstance(r, list) and len(r) == len(value)
                                                           for r in value):
        return None
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for r in value for c in r):
        return None
    return np.array(value, dtype=np.int64)


def read_confusion(path: Path, run: pd.Series) -> tuple[Confusion | None, str | None]:
    """(the test confusion in the record at ``path`` of the summary row ``run``, or None; what is wrong with
    the record, or None). A missing record, or one without a confusion, is (None, None); class names that are
    not one per class are replaced by ids, and said."""
    if not path.is_file():
        return None, None
    try:
        record = read_json(path)
    except UnreadableJSON as exc:
        return None, f"`{path}` cannot be read ({exc}): left out"
    if not isinstance(record, dict):
        return None, f"`{path}` holds a JSON {type(record).__name__}, not a record: left out"
    theirs = (record.get("task"), record.get("label", record.get("variant")), record.get("seed"))
    if theirs != (run["task"], run["variant"], int(run["seed"]) if pd.notna(run["seed"]) else None):
        return None, (f"`{path}` is the record of {theirs[0]}/{theirs[1]} seed {theirs[2]}, not of "
                      f"{run['task']}/{run['variant']} seed {whole(run['seed'])}: left out")
    accuracy, data = record.get("accuracy"), record.get("data")
    raw = accuracy.get("test_confusion") if isinstance(accuracy, dict) else None
    if raw is None:
        return None, None
    counts = _square_counts(raw)
    data = data if isinstance(data, dict) else {}
    classes = data.get("num_classes")
    if counts is None or len(counts) != classes:
        return None, f"`{path}`: its `accuracy.test_confusion` is not {classes} x {classes} counts ≥ 0: left out"
    total, test_size = int(counts.sum()), (data.get("sizes") or {}).get("test")
    if total == 0 or (test_size is not None and total != test_size):
        return None, f"`{path}`: its confusion counts {total} test examples, its test split {test_size}: left out"
    if abs(np.trace(counts) / total - run["test_acc"]) > TOLERANCE:
        return None, (f"`{path}`: its confusion is {100 * np.trace(counts) / total:.2f}% correct, its test accuracy "
                      f"{100 * run['test_acc']:.2f}%: left out")
    names = data.get("label_names")
    if names is None:
        return Confusion(counts, tuple(map(str, range(len(counts))))), None
    if not (isinstance(names, list) and len(names) == len(counts) and all(isinstance(n, str) for n in names)):
        return (Confusion(counts, tuple(map(str, range(len(counts))))),
                f"`{path}`: its `data.label_names` are not {len(counts)} names: its classes are shown by id")
    return Confusion(counts, tuple(names)), None


def load_confusions(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(the tested runs of ``df`` whose records hold a confusion, each with it in ``confusion``; the tested
    runs left out for holding none; a warning per record left out or read in part). A run whose classes are
    not those of its task's first run is left out with a warning."""
    found, none, warnings = [], [], []
    names: dict[str, tuple[str, ...]] = {}
    for index, run in tested(df).sort_values(["task", "variant", "seed"]).iterrows():
        path = run["record"]
        confusion, problem = read_confusion(Path(path), run) if isinstance(path, str) else (None, None)
        if problem:
            warnings.append(f"Per-class accuracy: record {problem}.")
        if confusion is None:
            if not problem:
                none.append(index)
            continue
        if names.setdefault(run["task"], confusion.names) != confusion.names:
            warnings.append(f"Per-class accuracy: record `{path}` has classes {list(confusion.names)}, other runs "
                            f"of {run['task']} {list(names[run['task']])}: left out.")
            continue
        found.append(run.to_dict() | {"confusion": confusion})
    return pd.DataFrame(found), df.loc[none], warnings


def class_accuracy(counts: np.ndarray) -> np.ndarray:
    """Per true class the % of its test examples predicted as it (NaN for a class without one)."""
    rows = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, 100 * np.diag(counts) / rows, np.nan)


def best_label(runs: pd.DataFrame) -> str:
    """The label of ``runs`` (one task's) with the highest mean test accuracy; the first by name on a tie."""
    means = runs.groupby("variant", sort=True)["test_acc"].mean()
    return str(means.idxmax())


def summed(runs: pd.DataFrame, label: str) -> np.ndarray:
    """The confusion counts of ``label``'s runs, summed."""
    return np.sum([c.counts for c in runs.loc[runs["variant"] == label, "confusion"]], axis=0)


def shown_classes(counts: np.ndarray, most: int = MOST_CLASSES) -> list[int]:
    """Every class, or beyond ``most`` classes the ``most`` with the most errors in ``counts`` (as the true
    class and as the predicted one; the lower id first on a tie), in id order."""
    if len(counts) <= most:
        return list(range(len(counts)))
    correct = np.diag(counts)
    errors = counts.sum(axis=1) - correct + counts.sum(axis=0) - correct
    return sorted(int(i) for i in np.argsort(-errors, kind="stable")[:most])


def class_table(runs: pd.DataFrame, best: str, classes: list[int]) -> pd.DataFrame:
    """One task's ``classes`` (rows, named) by label (columns): the mean over the label's runs of the class's
    test accuracy (%), the best label's column so named, the label marked ``MARK`` where some of its runs did
    not finish ok; then the class's share of the test set, and a last row with the labels' test accuracy."""
    first = runs["confusion"].iloc[0]
    sizes = first.counts.sum(axis=1)
    table = {"class": [first.names[i] for i in classes] + ["all (test accuracy)"]}
    for label, group in runs.groupby("variant", sort=True):
        per_class = np.stack([class_accuracy(c.counts) for c in group["confusion"]]).mean(axis=0)  # NaN: no examples
        head = f"{label}{mark(group)} ({'best, ' if label == best else ''}n={len(group)})"
        table[head] = [_pct(per_class[i]) for i in classes] + [_pct(100 * group["test_acc"].mean())]
    table["share of test (%)"] = [_pct(100 * sizes[i] / sizes.sum()) for i in classes] + [_pct(100.0)]
    return pd.DataFrame(table)


def _pct(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{x:.1f}"


def figure_confusion(counts: np.ndarray, names: tuple[str, ...], classes: list[int], title: str,
                     path: Path) -> Path:
    """A heatmap of ``counts`` for ``classes``: each cell's colour (and text) the % of the true class's test
    examples predicted as the column's class, with its count up to ``ANNOTATED_COUNTS`` classes; the true
    classes named with their number of test examples."""
    rows = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(rows[:, None] > 0, 100 * counts / rows[:, None], np.nan)[np.ix_(classes, classes)]
    shown = counts[np.ix_(classes, classes)]
    few = len(classes) <= ANNOTATED_COUNTS
    text = [[(f"{s:.0f}%\n{c}" if few else f"{s:.0f}") if c else "" for s, c in zip(r, cr, strict=True)]
            for r, cr in zip(share, shown, strict=True)]
    side = max(4.5, 0.55 * len(classes) + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    sns.heatmap(share, ax=ax, annot=np.array(text, dtype=object), fmt="", cmap="Blues", vmin=0, vmax=100,
                square=True, linewidths=0.5, linecolor="white", annot_kws={"fontsize": 8 if few else 6.5},
                cbar_kws={"label": "% of the true class", "shrink": 0.8},
                xticklabels=[names[i] for i in classes],
                yticklabels=[f"{names[i]} (n={rows[i]})" for i in classes])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (n: its examples counted)")
    if max(len(names[i]) for i in classes) > 3:  # names, not ids: slanted, each ending under its column
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def _file_name(task: str, taken: set[str]) -> str:
    name = base = "confusion_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", task)
    k = 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name + ".png"


def classes_section(doc: Document, df: pd.DataFrame) -> None:
    """Per task, the per-class test accuracy of every label and the best label's confusion matrix (seeds summed);
    the tested runs whose records hold no confusion are named in one note, damaged records warned about."""
    runs, without, warnings = load_confusions(df)
    doc.heading(2, "Per-class accuracy and confusion")
    for warning in warnings:
        doc.warn(warning)
    if not runs.empty:
        doc.note("Per task and label, the test accuracy (%) of each class: of its test examples, those predicted as "
                 "it, from the confusion counts each run recorded; mean over the label's runs (n), whatever their "
                 f"status (marked {MARK} where some did not finish ok). `share of test`: the class's part of the "
                 "test split. The figure is the confusion matrix of the task's best label (the highest mean test "
                 "accuracy), its runs' counts summed over seeds: each row is a true class, its cells the % of that "
                 "class's test examples predicted as each class.")
    taken: set[str] = set()
    for task in sorted(runs["task"].unique()) if not runs.empty else []:
        t = runs[runs["task"] == task]
        best = best_label(t)
        counts, names = summed(t, best), t["confusion"].iloc[0].names
        classes = shown_classes(counts)
        doc.heading(3, f"{task}: per-class test accuracy")
        seeds = ", ".join(whole(s) for s in t.loc[t["variant"] == best, "seed"])
        doc.note(f"Best label: {best} ({100 * t.loc[t['variant'] == best, 'test_acc'].mean():.1f}% mean test "
                 f"accuracy, seeds {seeds}). {len(counts)} classes"
                 + (f"; shown: the {len(classes)} that {best} confuses most (as the true or the predicted class)."
                    if len(classes) < len(counts) else "."))
        doc.table(class_table(t, best, classes))
        marked = footnote(t)
        if marked:
            doc.note(marked)
        title = (f"{task}: confusion matrix of {best}, test split, seeds {seeds} summed "
                 f"(% of the true class{', with counts' if len(classes) <= ANNOTATED_COUNTS else ''}"
                 + (f"; the {len(classes)} most-confused of {len(counts)} classes)" if len(classes) < len(counts)
                    else ")"))
        doc.figure(figure_confusion(counts, names, classes, title, doc.out_dir / "figures" / _file_name(task, taken)),
                   title, md_alt=f"{task} confusion matrix")
    if len(without):
        doc.note(f"Left out of this section: {len(without)} tested run(s) whose record holds no test confusion "
                 f"(written before it was recorded, or not found): {named_runs(without)}.")
    elif runs.empty:
        doc.note("No tested run's record holds a readable test confusion.")
