"""Path-X (LRA): Pathfinder at 128 x 128 pixels, a 16,384-token sequence.

The same task, reader, splits and generator as ``tasks/pathfinder.py`` (see there); only
the defaults differ: ``resolution`` 128 (the release folder ``pathfinder128/``, LRA's
``curv_contour_length_14``), and the generator's scaled shapes at 128 px: paths of 14
dashes of 8 pixels with 2-pixel gaps, 7 x 7 markers, up to 20 distractors.
"""
from __future__ import annotations

from dataclasses import dataclass

from attnbench.harness.core.registry import param
from attnbench.tasks.base import TASKS
from attnbench.tasks.pathfinder import Pathfinder, PathfinderConfig


@dataclass(frozen=True)
class PathXConfig(PathfinderConfig):
    """Path-X images (Pathfinder at 128 x 128) as pixel-intensity token sequences."""

    resolution: int = param(128, "image side in pixels (LRA's Path-X: 128); seq_len = resolution^2", minimum=8)


@TASKS.register("pathx", PathXConfig)
class PathX(Pathfinder):
    """Path-X: Pathfinder at 128 x 128 (16,384 tokens), 2 classes (LRA)."""
