"""How every figure of the report is laid out before it is saved (``writer.save_figure`` calls ``finish``),
whatever its number of panels or tasks:

- titles whole: the figure's title (``suptitle``) and every panel's title are wrapped, by their width as
  drawn, to the figure's width (a panel's: to the panel's), so that none is cut at an edge or runs into a
  neighbour's, at one panel as at many;
- legends off the data: each panel's legend sits outside it, to its right, and the figure is widened by
  the legends of its widest row so that the panels keep their size;
- accuracy axes fitted to the data: ``fit_accuracy`` sets a percentage axis to what is plotted on it
  (points, error bars, bands and reference lines such as chance and the majority class) with
  ``ACCURACY_MARGIN`` points either side, within 0-100, instead of 0-100."""
from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text

ACCURACY_MARGIN = 5.0  # accuracy points an accuracy axis extends past the data, each way
LEGEND_GAP = 0.02  # between a panel and its legend, as a fraction of the panel's width
TITLE_PAD_PX = 4.0  # left free at each side of a title


def fit_accuracy(ax: Axes, margin: float = ACCURACY_MARGIN, axis: str = "y") -> tuple[float, float] | None:
    """Fit ``ax``'s accuracy axis (in %, ``axis`` 'y' or 'x') to everything plotted on it so far (its data
    limits: points, error bars, bands, reference lines), ``margin`` points either side and within 0-100;
    returns the limits, or None when nothing is plotted."""
    low, high = ax.dataLim.intervaly if axis == "y" else ax.dataLim.intervalx
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    limits = max(0.0, float(low) - margin), min(100.0, float(high) + margin)
    if limits[0] >= limits[1]:  # nothing but values past 0-100
        return None
    (ax.set_ylim if axis == "y" else ax.set_xlim)(*limits)
    return limits


def _move_legends_out(fig: Figure) -> None:
    """Every panel's legend outside the panel, at its upper right (never on the data): the figures draw
    theirs with ``ax.legend`` where it suits them, and this places them all alike."""
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            legend.set_loc("upper left")
            legend.set_bbox_to_anchor((1 + LEGEND_GAP, 1.0), transform=ax.transAxes)
            legend.borderaxespad = 0.0


def _widen_for_legends(fig: Figure) -> None:
    """Widen ``fig`` by the legends of its widest row (and the gaps before them), so that the panels keep
    the room they were given."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    rows: dict[int, float] = defaultdict(float)
    for ax in fig.axes:
        legend = ax.get_legend()
        spec = ax.get_subplotspec()
        if legend is None or spec is None:
            continue
        width = legend.get_window_extent(renderer).width / fig.dpi
        rows[spec.rowspan.start] += width + 2 * LEGEND_GAP * ax.get_position().width * fig.get_figwidth()
    if rows:
        fig.set_figwidth(fig.get_figwidth() + max(rows.values()))


def _titles(fig: Figure) -> list[tuple[Text, Axes | None]]:
    """Every non-empty title of ``fig``: its title (no panel) and each panel's (centre, left, right)."""
    title = getattr(fig, "_suptitle", None)  # matplotlib keeps them as these attributes
    found: list[tuple[Text, Axes | None]] = [(title, None)] if title is not None and title.get_text() else []
    for ax in fig.axes:
        texts = (getattr(ax, name) for name in ("title", "_left_title", "_right_title"))
        found += [(t, ax) for t in texts if t.get_text()]
    return found


def wrap_to(text: Text, width_px: float, renderer: Any) -> bool:
    """Wrap ``text`` (its words, any line breaks undone) into lines no wider than ``width_px`` as drawn, as
    long as that allows (one line when it fits); a word wider than that alone stays whole on its line. True
    when the text changed."""
    before = text.get_text()
    words = " ".join(before.split())
    text.set_text(words)
    chars = len(words)
    width = text.get_window_extent(renderer).width
    if width > width_px:  # from about the number of characters that fits, down
        chars = min(chars, int(len(words) * width_px / width) + 2)
        while chars > 1:
            text.set_text("\n".join(textwrap.wrap(words, chars, break_long_words=False)))
            if text.get_window_extent(renderer).width <= width_px:
                break
            chars -= 1
    return text.get_text() != before


def _wrap_titles(fig: Figure) -> bool:
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    changed = False
    for text, ax in _titles(fig):
        room = (fig.get_figwidth() * fig.dpi if ax is None else ax.get_window_extent(renderer).width)
        changed |= wrap_to(text, room - 2 * TITLE_PAD_PX, renderer)
    return changed


def finish(fig: Figure) -> None:
    """Lay ``fig`` out for saving: legends beside their panels (the figure widened for them), every title
    wrapped to its width, and the panels, labels and titles fitted inside the figure (``tight_layout``)."""
    _move_legends_out(fig)
    _widen_for_legends(fig)
    _wrap_titles(fig)
    for _ in range(3):  # a wrapped title is taller: the panels move, and a panel's title follows its width
        fig.tight_layout()
        if not _wrap_titles(fig):
            break
    else:
        fig.tight_layout()
