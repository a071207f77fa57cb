"""The Pathfinder generator's drawing settings (``DrawSettings``), their automatic values scaled to
the resolution and the difficulty (``draw_settings``, ``resolved_settings``), and the checks a config
gets before anything is drawn (``out_of_range``, ``cannot_fit``). The drawing itself, and what each
setting means in the picture: ``pathfinder_draw``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: difficulty folder of the LRA release -> contour length (dashes of a target path)
DIFFICULTY_LENGTH = {"curv_baseline": 6, "curv_contour_length_9": 9, "curv_contour_length_14": 14}
#: headings are multiples of 360 / N_HEADINGS = 5 degrees
N_HEADINGS = 72


def round_half_up(x: float) -> int:
    """``x`` rounded to the nearest integer, halves up (Python's ``round`` rounds halves to even)."""
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class DrawSettings:
    """Concrete drawing settings (see ``draw_settings`` for the resolution-scaled defaults)."""

    resolution: int = 32
    path_length: int = 14
    dash_length: int = 2
    gap: int = 1
    n_distractors: int = 5
    distractor_length: int = 4
    marker_size: int = 3
    max_turn: float = 45.0
    margin: int = 1

    def __post_init__(self) -> None:
        problems = out_of_range(dataclasses.asdict(self))
        if problems:
            raise ValueError("pathfinder drawing settings out of range: "
                             + ", ".join(f"{name}={getattr(self, name)} ({allowed})" for name, allowed in problems))


def out_of_range(values: Mapping[str, float]) -> list[tuple[str, str]]:
    """(setting, what is allowed) for each of ``DrawSettings``' fields (given as a mapping) out of
    range: what ``DrawSettings`` refuses, and what a config check says before anything is drawn."""
    problems = []
    if values["resolution"] < 8:
        problems.append(("resolution", "at least 8"))
    for name in ("path_length", "dash_length", "gap", "distractor_length"):
        if values[name] < 1:
            problems.append((name, "at least 1"))
    if values["n_distractors"] < 0:
        problems.append(("n_distractors", "at least 0"))
    if values["marker_size"] < 3 or values["marker_size"] % 2 == 0:
        problems.append(("marker_size", "an odd number, at least 3"))
    if not 0 <= values["max_turn"] <= 90:
        problems.append(("max_turn", "degrees, 0 to 90"))
    if values["margin"] < 0:
        problems.append(("margin", "at least 0"))
    return problems


def cannot_fit(s: DrawSettings) -> list[tuple[str, str]]:
    """(setting, why) when two target paths cannot fit into the image whatever is drawn: bounds
    that follow ``_Geometry`` and ``_Canvas.grow`` in ``pathfinder_draw``. Inside the ``margin``-pixel
    border, a path's elements (dashes and caps, the caps' space kept even when not drawn as markers) are disjoint;
    a dash advances one pixel per step along its heading's major axis, a jump of ``gap + 1``
    steps separates consecutive elements, and a cap sits ``gap + 1 + marker_size // 2`` steps from
    its dash. So a cap, a gap and a dash in a row span ``marker_size + gap + dash_length`` pixels
    of one axis; with turns that round to 0 steps (max_turn < 2.5) a whole path is straight; and
    the pixels of two target paths with their four caps cannot outnumber those inside the border."""
    inside = s.resolution - 2 * s.margin
    border = f"inside the {s.margin}-pixel border of the {s.resolution}x{s.resolution} image"
    first = s.marker_size + s.gap + s.dash_length
    if first > inside:
        return [("resolution", f"a marker, a gap and a dash in a row (marker_size {s.marker_size} + gap {s.gap} + "
                               f"dash_length {s.dash_length} = {first} pixels) span more than the {inside} pixels "
                               f"across {border}; raise resolution or lower marker_size, gap or dash_length")]
    if round_half_up(s.max_turn * N_HEADINGS / 360) == 0:
        straight = 2 * s.marker_size + s.path_length * s.dash_length + (s.path_length + 1) * s.gap
        if straight > inside:
            return [("max_turn", f"turns are whole steps of {360 // N_HEADINGS} degrees, so max_turn "
                                 f"{s.max_turn:g} allows none and every path is straight; a target path "
                                 f"({s.path_length} dashes of {s.dash_length} pixels, {s.path_length + 1} gaps of "
                                 f"{s.gap}, two {s.marker_size}-pixel markers) spans {straight} pixels, more than the "
                                 f"{inside} across {border}; raise max_turn or resolution, or shorten the path")]
    ink = 2 * (s.path_length * s.dash_length + 2 * s.marker_size ** 2)
    if ink > inside ** 2:
        return [("path_length", f"two target paths of {s.path_length} dashes of {s.dash_length} pixels with their "
                                f"four {s.marker_size}x{s.marker_size} markers cover {ink} pixels, more than the "
                                f"{inside ** 2} {border}; lower path_length, dash_length or marker_size, or raise "
                                "resolution")]
    return []


def draw_settings(resolution: int, difficulty: str = "curv_contour_length_14", **given: Any) -> DrawSettings:
    """Settings with the automatic values filled in (``resolved_settings``); out-of-range values
    are a ValueError naming them."""
    return DrawSettings(**resolved_settings(resolution, difficulty, **given))


def resolved_settings(resolution: int, difficulty: str = "curv_contour_length_14", *, path_length: int = 0,
                      dash_length: int = 0, gap: int = 0, n_distractors: int = -1, distractor_length: int = 0,
                      marker_size: int = 0, max_turn: float = 45.0, margin: int = 1) -> dict[str, Any]:
    """``DrawSettings``' fields with the automatic values filled in (0, or -1 for ``n_distractors``,
    = automatic), not yet checked (``out_of_range``).

    With ``f = resolution / 32``: path_length from the difficulty (6 / 9 / 14 dashes, the
    release's contour lengths), dash_length ``max(2, round(2f))``, gap ``max(1, round(f/2))``,
    marker_size ``2 round(0.75 f) + 1``, n_distractors ``round(5f)``, distractor_length
    ``max(2, path_length // 3)``. At 32 px: 14 dashes of 2 px, gap 1, 3x3 markers,
    5 distractors of 4 dashes (as LRA's Pathfinder-32); at 128 px: 14 dashes of 8 px,
    gap 2, 7x7 markers, 20 distractors of 4 dashes.
    """
    if difficulty not in DIFFICULTY_LENGTH:
        raise ValueError(f"unknown pathfinder difficulty {difficulty!r}; known: {', '.join(DIFFICULTY_LENGTH)}")
    f = resolution / 32

    def rnd(x: float) -> int:
        return int(math.floor(x + 0.5))

    path_length = path_length or DIFFICULTY_LENGTH[difficulty]
    return dict(
        resolution=resolution,
        path_length=path_length,
        dash_length=dash_length or max(2, rnd(2 * f)),
        gap=gap or max(1, rnd(f / 2)),
        n_distractors=n_distractors if n_distractors >= 0 else rnd(5 * f),
        distractor_length=distractor_length or max(2, path_length // 3),
        marker_size=marker_size or 2 * max(1, rnd(0.75 * f)) + 1,
        max_turn=max_turn,
        margin=margin,
    )

