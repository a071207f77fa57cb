"""A seeded Pathfinder-style image generator, and a writer of the LRA release layout.

An image holds dashed curved paths on a black background, every pixel 0 or 255:

- a *path* is a chain of straight *dashes*, each ``dash_length`` pixels along its major
  axis (one pixel per major-axis step, one pixel thick, so no dash holds a 2x2 block),
  with exactly ``gap`` background pixels between consecutive dashes (their Chebyshev
  distance is ``gap + 1``); before each dash the heading turns by a uniform random
  multiple of 5 degrees in ``[-max_turn, max_turn]`` (the first dash: any heading);
- two *target* paths of ``path_length`` dashes, each with a square *cap* of
  ``marker_size`` pixels at both ends (``gap`` pixels before its first dash and after its
  last), and up to ``n_distractors`` distractor paths of ``distractor_length`` dashes and
  no caps (one that does not fit after ``_DISTRACTOR_TRIES`` tries is left out);
- two of the four caps are drawn, as solid squares: the *markers*. Label 1 (connected):
  both caps of one target path (chosen at random); label 0 (disconnected): one cap (at
  a random end) of each target path. The other caps stay black, but their space is kept
  free in both cases, so the two classes differ only in where the markers are.

Each element (dash or cap) is placed and checked in pixel space: one that leaves the
image (a ``margin``-pixel border stays black), or comes within ``gap + 1`` pixels
(Chebyshev) of another path, or of its own path other than the element just before it
(so a path never crosses, touches or nears itself), is redrawn with another heading;
when ``_TURN_TRIES`` headings fail, the element before is taken back and redrawn
(depth-first, a bounded number of times), then the path is started again elsewhere, and
when a target path does not fit, the whole image. So in the picture, the dashes of one
path are joined by jumps of ``gap + 1`` pixels, while different paths are never that
close: the label is decided by the pixels alone.

Determinism: image ``i`` of seed ``s`` is drawn by its own ``random.Random`` seeded with
the string ``"pathfinder:{s}:{i}"`` (Python hashes string seeds with SHA-512, whatever
``PYTHONHASHSEED``), and its label by ``label_of(i, s)``, so an image does not depend on
how many others are drawn: the first ``m`` images of a run of ``n`` are those of a run of
``m``. Only the standard library and numpy draw; Pillow writes the PNGs.

The settings, their automatic values and their checks: ``pathfinder_settings``.

Speed, one core: about 500 images/s at 32 px, 200 images/s at 128 px.
"""
from __future__ import annotations

import functools
import math
import random
import shutil
from pathlib import Path

import numpy as np

from attnbench.tasks.lib.pathfinder_settings import N_HEADINGS, DrawSettings, round_half_up

INK = 255
#: images per ``imgs/<k>`` folder and ``metadata/<k>.npy`` file
IMAGES_PER_FOLDER = 1000

_TURN_TRIES = 6             # headings tried for one element before the element before it is redrawn
_BACKTRACKS_PER_DASH = 0.5  # redraws allowed per dash of a path before the path is given up
_TARGET_TRIES = 20          # paths tried for a target path before the image is started again
_DISTRACTOR_TRIES = 10      # paths tried for a distractor before it is left out
_IMAGE_TRIES = 200

def _chebyshev(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    return min(max(abs(x1 - x2), abs(y1 - y2)) for x1, y1 in a for x2, y2 in b)


class _Geometry:
    """Every element shape for one ``DrawSettings``, per heading, as offsets of flat indices
    into a padded square (the padding is wide enough that no offset from a pixel inside
    the image wraps around a row or leaves the square)."""

    def __init__(self, s: DrawSettings):
        self.s = s
        n, L, half = N_HEADINGS, s.dash_length, s.marker_size // 2
        self.reach = k = s.gap + 1  # a jump that bridges one gap; other paths stay farther than this
        self.turn = round_half_up(s.max_turn * n / 360)  # in heading steps
        self.pad = pad = max(k + L, 2 * half + k) + k + 1
        self.width = w = s.resolution + 2 * pad
        units = []
        for d in range(n):
            cx, cy = math.cos(2 * math.pi * d / n), math.sin(2 * math.pi * d / n)
            m = max(abs(cx), abs(cy))
            units.append((cx / m, cy / m))  # one pixel per step along the major axis

        def along(t: float, d: int) -> tuple[int, int]:
            return round_half_up(t * units[d][0]), round_half_up(t * units[d][1])

        def shift(points: list[tuple[int, int]], by: tuple[int, int]) -> list[tuple[int, int]]:
            return [(x + by[0], y + by[1]) for x, y in points]

        def flat(points: list[tuple[int, int]]) -> list[int]:
            return [y * w + x for x, y in points]

        def halo(points: list[tuple[int, int]]) -> list[int]:
            return sorted({(y + dy) * w + x + dx for x, y in points
                           for dy in range(-k, k + 1) for dx in range(-k, k + 1)})

        dash = [[along(i, d) for i in range(L)] for d in range(n)]
        square = [(dx, dy) for dy in range(-half, half + 1) for dx in range(-half, half + 1)]
        jump = [along(k, d) for d in range(n)]  # last pixel of a dash -> first pixel of the next
        cap_jump = [along(k + half, d) for d in range(n)]  # cap centre <-> first/last pixel of its dash
        self.dash = [flat(p) for p in dash]
        self.end = [flat([p[-1]])[0] for p in dash]
        self.jump = flat(jump)
        self.cap_jump = flat(cap_jump)
        self.square = flat(square)
        self.dash_halo = [halo(p) for p in dash]
        self.cap_halo = halo(square)
        # which consecutive pairs keep exactly 1..gap background pixels between them
        self.cap_dash_ok = [2 <= _chebyshev(square, shift(dash[d], cap_jump[d])) <= k for d in range(n)]
        self.dash_dash_ok, self.dash_cap_ok = {}, {}
        for d in range(n):
            for t in range(-self.turn, self.turn + 1):
                e = (d + t) % n
                start = (dash[d][-1][0] + jump[e][0], dash[d][-1][1] + jump[e][1])
                self.dash_dash_ok[d, e] = 2 <= _chebyshev(dash[d], shift(dash[e], start)) <= k
                centre = (dash[d][-1][0] + cap_jump[e][0], dash[d][-1][1] + cap_jump[e][1])
                self.dash_cap_ok[d, e] = 2 <= _chebyshev(dash[d], shift(square, centre)) <= k
        # outside the image, and its blank margin, is forbidden from the start
        self.blank = bytearray(b"\x01") * (w * w)
        lo, hi = pad + s.margin, pad + s.resolution - 1 - s.margin
        for y in range(lo, hi + 1):
            self.blank[y * w + lo:y * w + hi + 1] = bytes(hi - lo + 1)


@functools.lru_cache(maxsize=16)
def _geometry(s: DrawSettings) -> _Geometry:
    return _Geometry(s)


class _Canvas:
    def __init__(self, geo: _Geometry):
        self.geo = geo
        self.forbidden = bytearray(geo.blank)  # 1 = outside, or within `reach` of a placed path

    def free_pixels(self) -> np.ndarray:
        return np.flatnonzero(np.frombuffer(self.forbidden, dtype=np.uint8) == 0)

    def grow(self, rng: random.Random, n_dashes: int, caps: bool, starts: np.ndarray) -> list[list[int]] | None:
        """One path as its elements' pixels (with caps: cap, dashes..., cap), or None.

        Depth-first: each element tries ``_TURN_TRIES`` headings; when all fail, the
        element before it is taken back and redrawn, at most ``_BACKTRACKS_PER_DASH`` times
        per dash, then the path is given up."""
        geo = self.geo
        n, turn, span = N_HEADINGS, geo.turn, 2 * geo.turn + 1
        # forbidden, plus a count per own element except the last whose halo covers the pixel
        blocked = bytearray(self.forbidden)
        is_blocked = blocked.__getitem__
        start = int(starts[int(rng.random() * len(starts))])
        pixels: list[list[int]] = []   # per element
        halos: list[tuple[int, list[int]]] = []  # (origin, offsets)
        anchors: list[int] = []        # last pixel of a dash, centre of a cap
        headings: list[int] = []       # -1 for the start cap
        if caps:
            cap = [start + o for o in geo.square]
            if any(map(is_blocked, cap)):
                return None
            pixels.append(cap)
            halos.append((start, geo.cap_halo))
            anchors.append(start)
            headings.append(-1)
        first = len(pixels)  # elements before this one are never taken back
        total = n_dashes + 2 * caps
        backtracks, budget = 0, _BACKTRACKS_PER_DASH * n_dashes
        while len(pixels) < total:
            end_cap = caps and len(pixels) == total - 1
            prev = headings[-1] if headings else -1
            element = None
            for _ in range(_TURN_TRIES):
                if prev < 0:  # the first dash: any heading
                    d = int(rng.random() * n)
                    if pixels:
                        if not geo.cap_dash_ok[d]:
                            continue
                        origin = anchors[-1] + geo.cap_jump[d]
                    else:
                        origin = start
                    shape = geo.dash[d]
                else:
                    d = (prev + int(rng.random() * span) - turn) % n
                    if end_cap:
                        if not geo.dash_cap_ok[prev, d]:
                            continue
                        origin, shape = anchors[-1] + geo.cap_jump[d], geo.square
                    else:
                        if not geo.dash_dash_ok[prev, d]:
                            continue
                        origin, shape = anchors[-1] + geo.jump[d], geo.dash[d]
                candidate = [origin + o for o in shape]
                if not any(map(is_blocked, candidate)):
                    element = candidate
                    break
            if element is None:
                if len(pixels) <= first or backtracks >= budget:
                    return None
                backtracks += 1
                for stack in (pixels, halos, anchors, headings):
                    stack.pop()
                if halos:  # the new last element: its halo no longer counts
                    o0, offsets = halos[-1]
                    for o in offsets:
                        blocked[o0 + o] -= 1
                continue
            if halos:
                o0, offsets = halos[-1]
                for o in offsets:
                    blocked[o0 + o] += 1
            pixels.append(element)
            if end_cap:
                halos.append((origin, geo.cap_halo))
                anchors.append(origin)
            else:
                halos.append((origin, geo.dash_halo[d]))
                anchors.append(origin + geo.end[d])
            headings.append(d)
        self._halos = halos
        return pixels

    def commit(self) -> None:
        """Forbid the halo of the path ``grow`` returned last."""
        forbidden = self.forbidden
        for o0, offsets in self._halos:
            for o in offsets:
                forbidden[o0 + o] = 1

    def place(self, rng: random.Random, n_dashes: int, caps: bool, tries: int) -> list[list[int]] | None:
        starts = self.free_pixels()
        if not len(starts):
            return None
        for _ in range(tries):
            path = self.grow(rng, n_dashes, caps, starts)
            if path is not None:
                self.commit()
                return path
        return None


def draw_image(rng: random.Random, settings: DrawSettings, label: int) -> np.ndarray:
    """One (resolution, resolution) uint8 image (0 / 255) with the given label (1 = connected)."""
    s, geo = settings, _geometry(settings)
    for _ in range(_IMAGE_TRIES):
        canvas = _Canvas(geo)
        first = canvas.place(rng, s.path_length, True, _TARGET_TRIES)
        second = first and canvas.place(rng, s.path_length, True, _TARGET_TRIES)
        if not first or not second:  # (no first: no second either)
            continue
        targets = [first, second]
        distractors = [canvas.place(rng, s.distractor_length, False, _DISTRACTOR_TRIES)
                       for _d in range(s.n_distractors)]
        if label == 1:
            chosen = targets[int(rng.random() * 2)]
            markers = [chosen[0], chosen[-1]]
        else:
            markers = [targets[0][0 if rng.random() < 0.5 else -1], targets[1][0 if rng.random() < 0.5 else -1]]
        ink = [p for path in targets for element in path[1:-1] for p in element]
        ink += [p for path in distractors if path for element in path for p in element]
        ink += [p for element in markers for p in element]
        flat = np.zeros(geo.width * geo.width, dtype=np.uint8)
        flat[np.asarray(ink, dtype=np.int64)] = INK
        pad = geo.pad
        return flat.reshape(geo.width, geo.width)[pad:pad + s.resolution, pad:pad + s.resolution].copy()
    raise ValueError(
        f"pathfinder: could not fit two paths of {s.path_length} dashes (dash {s.dash_length} px, gap {s.gap} px, "
        f"{s.marker_size} px markers) into {s.resolution}x{s.resolution} pixels in {_IMAGE_TRIES} tries; "
        "lower path_length, dash_length or gap")


def label_of(index: int, seed: int) -> int:
    """Image ``index``'s label: images ``2j`` and ``2j + 1`` get one 0 and one 1, in a seeded
    order, so every even-length prefix is exactly balanced and no label depends on ``n``."""
    flip = random.Random(f"pathfinder-labels:{seed}:{index // 2}").random() < 0.5
    return (index % 2) ^ int(flip)


def image_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"pathfinder:{seed}:{index}")


def generate_images(n: int, settings: DrawSettings, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, R, R) uint8 images and their (n,) labels."""
    labels = [label_of(i, seed) for i in range(n)]
    images = np.stack([draw_image(image_rng(seed, i), settings, labels[i]) for i in range(n)]) if n else \
        np.zeros((0, settings.resolution, settings.resolution), dtype=np.uint8)
    return images, np.asarray(labels, dtype=np.int64)


def metadata_row(folder: int, index: int, label: int, s: DrawSettings) -> str:
    """A release metadata row: subdir, filename, index, label, then the drawing settings in
    the release's order (continuity -> max_turn, contour_length, distractor_length,
    paddle_length -> dash_length, paddle_thickness = 1, margin -> gap, n_paddle_contrasts
    -> n_distractors)."""
    return (f"imgs/{folder} sample_{index}.png {index} {label} {s.max_turn:g} {s.path_length} "
            f"{s.distractor_length} {s.dash_length} 1 {s.gap} {s.n_distractors}")


def write_release(folder: Path, n: int, settings: DrawSettings, seed: int) -> Path:
    """Draw ``n`` images and write them as the release does into ``folder`` (a difficulty
    folder, e.g. ``.../pathfinder32/curv_contour_length_14``): ``imgs/<k>/sample_<i>.png``
    and the text file ``metadata/<k>.npy``, ``IMAGES_PER_FOLDER`` images per ``k``, ``i``
    counted within each ``k``. Anything already in ``folder`` is removed first."""
    from PIL import Image  # Pillow: imported only where PNGs are written

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "metadata").mkdir(parents=True)
    rows: dict[int, list[str]] = {}
    for i in range(n):
        k, index = divmod(i, IMAGES_PER_FOLDER)
        label = label_of(i, seed)
        image = draw_image(image_rng(seed, i), settings, label)
        out = folder / "imgs" / str(k)
        if index == 0:
            out.mkdir(parents=True)
        Image.fromarray(image).save(out / f"sample_{index}.png")
        rows.setdefault(k, []).append(metadata_row(k, index, label, settings))
    for k, lines in rows.items():
        (folder / "metadata" / f"{k}.npy").write_text("\n".join(lines) + "\n", encoding="ascii")
    return folder
