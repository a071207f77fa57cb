"""The selection of tuning (``tune:``): from one (task, run label)'s trial records to the trial its final runs
train with (``results/tune/TASK/LABEL/selected.json``, what ``attnbench select`` writes and ``runs.read_selection``
reads). Selection reads validation accuracy only (``tuning.select_trial``); a trial record holds no test
accuracy (its job withheld the test split)."""
from __future__ import annotations

from pathlib import Path

from attnbench.harness.config.tuning import TuningError, select_trial
from attnbench.harness.core.io import atomic_write_json
from attnbench.harness.results.records import RecordError, read_record


class SelectionError(TuningError):
    """Trial records that cannot be selected from: unreadable, not trials, or of several (task, label)s."""


def select_from_records(records: list[Path]) -> dict:
    """The selection from the trial records ``records`` (all of one task and run label): ``select_trial``'s
    answer with the task, label and each trial's run_id, status, validation accuracy and config hash."""
    trials = []
    for path in records:
        try:
            record = read_record(Path(path))
        except RecordError as exc:
            raise SelectionError(str(exc)) from None
        if record.get("stage") != "tune":
            raise SelectionError(f"{path} is the record of {record['run_id']}, a final run, not a tuning trial")
        trials.append(record)
    pairs = sorted({(r["task"], r["label"]) for r in trials})
    if len(pairs) != 1:
        raise SelectionError(f"select from the trials of one task and run label; given {len(trials)} record(s) of "
                             f"{', '.join('/'.join(p) for p in pairs) or 'none'}")
    chosen = select_trial([{"trial": r["trial"], "status": r["status"], "best_val_acc": r["accuracy"]["best_val"],
                            "point": r["config"]["tuning"]["point"]} for r in trials])
    return {"task": pairs[0][0], "label": pairs[0][1], **chosen,
            "by_trial": [{"trial": r["trial"], "run_id": r["run_id"], "status": r["status"],
                          "best_val_acc": r["accuracy"]["best_val"], "config_hash": r["config_hash"]}
                         for r in sorted(trials, key=lambda r: r["trial"])]}


def write_selection(records: list[Path], out: Path) -> dict:
    """Select from ``records`` and write the selection to ``out`` (atomically); returns it."""
    selection = select_from_records(records)
    atomic_write_json(Path(out), selection)
    return selection
