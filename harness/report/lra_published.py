"""LRA's published accuracies (Tay et al., ICLR 2021, Table 1; identical in the arXiv PDF and
the repository's README leaderboard) and the two averaging conventions in use.

- ``5``: LRA's own: the mean over ListOps, Text, Retrieval, Image and Pathfinder, Path-X left
  out (every model FAILed it).
- ``6``: S4 and later papers: the mean over all six tasks, Path-X's FAIL counted as 50.
"""
from __future__ import annotations

import math

#: our task name -> LRA's column, in LRA's order
LRA_TASKS = {"listops": "ListOps", "text": "Text", "retrieval": "Retrieval", "image": "Image",
             "pathfinder": "Pathfinder", "pathx": "Path-X"}
FAIL = None  # the paper's FAIL: chance level, no number given
FAIL_AS = 50.0  # what the six-task convention counts a FAIL as
SOURCE = "Tay et al., Long Range Arena, ICLR 2021, Table 1"

_COLUMNS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
_ROWS = {
    "Transformer": (36.37, 64.27, 57.46, 42.44, 71.40, FAIL),
    "Local Attention": (15.82, 52.98, 53.39, 41.46, 66.63, FAIL),
    "Sparse Trans.": (17.07, 63.58, 59.59, 44.24, 71.71, FAIL),
    "Longformer": (35.63, 62.85, 56.89, 42.22, 69.71, FAIL),
    "Linformer": (35.70, 53.94, 52.27, 38.56, 76.34, FAIL),
    "Reformer": (37.27, 56.10, 53.40, 38.07, 68.50, FAIL),
    "Sinkhorn Trans.": (33.67, 61.20, 53.83, 41.23, 67.45, FAIL),
    "Synthesizer": (36.99, 61.68, 54.67, 41.61, 69.45, FAIL),
    "BigBird": (36.05, 64.02, 59.29, 40.83, 74.87, FAIL),
    "Linear Trans.": (16.13, 65.90, 53.09, 42.34, 75.30, FAIL),
    "Performer": (18.01, 65.40, 53.82, 42.77, 77.05, FAIL),
}
#: model -> task -> accuracy (%) or FAIL
PUBLISHED: dict[str, dict[str, float | None]] = {m: dict(zip(_COLUMNS, accs, strict=True)) for m, accs in _ROWS.items()}
#: the averages as printed (5-task convention); Sinkhorn's printed 51.39 is not its row's mean (51.48)
PRINTED_AVERAGE = {"Transformer": 54.39, "Local Attention": 46.06, "Sparse Trans.": 51.24, "Longformer": 53.46,
                   "Linformer": 51.36, "Reformer": 50.67, "Sinkhorn Trans.": 51.39, "Synthesizer": 52.88,
                   "BigBird": 55.01, "Linear Trans.": 50.55, "Performer": 51.41}

#: published rows from later papers, beside LRA's: model -> (task -> accuracy or NOT_REPORTED, source)
NOT_REPORTED = math.nan
OTHER_PUBLISHED: dict[str, tuple[dict[str, float | None], str]] = {
    # Xiong et al., AAAI 2021 (the repository's img/LRA.png); a PyTorch re-implementation of LRA at
    # 2 layers, width 64 (its LRA/ folder), Text at 4K; Path-X not run
    "Nystromformer": (dict(zip(_COLUMNS, (37.15, 65.52, 79.56, 41.58, 70.94, NOT_REPORTED), strict=True)),
                      "Xiong et al., Nyströmformer, AAAI 2021: its own PyTorch LRA set-up, where Retrieval scores "
                      "about 79 for every model, against 57 in LRA's"),
}


def published_row(model: str) -> tuple[dict[str, float | None], str]:
    """(task -> accuracy, its source) of a published model: LRA's Table 1, else a later paper's."""
    if model in PUBLISHED:
        return PUBLISHED[model], "LRA Table 1"
    if model in OTHER_PUBLISHED:
        return OTHER_PUBLISHED[model]
    raise KeyError(f"no published row for {model!r}; known: {', '.join([*PUBLISHED, *OTHER_PUBLISHED])}")


CONVENTIONS = {
    5: "LRA's convention: the mean over the five tasks ListOps, Text, Retrieval, Image and Pathfinder "
       "(Path-X left out)",
    6: "the six-task convention of S4 and later papers: the mean over all six tasks, a Path-X FAIL counted as 50",
}


def lra_average(accuracies: dict[str, float | None], convention: int) -> float | None:
    """The average (%) of task -> accuracy (%) under ``convention`` (5 or 6); FAIL (None) counts
    as 50 in the six-task mean. None when a task the convention needs is missing (absent or NaN)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"LRA average convention {convention!r}; allowed: 5, 6")
    needed = _COLUMNS if convention == 6 else _COLUMNS[:5]
    values = []
    for task in needed:
        if task not in accuracies:
            return None
        acc = accuracies[task]
        if acc is FAIL:
            if convention == 5:
                return None
            acc = FAIL_AS
        if isinstance(acc, float) and math.isnan(acc):
            return None
        values.append(float(acc))
    return sum(values) / len(values)
