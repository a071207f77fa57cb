"""Pathfinder / Path-X: the LRA release layout read exactly, and generated labels checked by an
independent connectivity check of the pixels."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from attnbench.tasks.base import LRA_RELEASE_URL, SPLITS, DataError, build_task
from attnbench.tasks.lib.pathfinder_draw import generate_images, write_release
from attnbench.tasks.lib.pathfinder_settings import DrawSettings, draw_settings
from attnbench.tasks.pathfinder import read_release, split_indices
from conftest import REPO

HARD = "curv_contour_length_14"


# ---------------------------------------------------------------- a hand-made release tree

def _image(uid: int, side: int) -> np.ndarray:
    """A distinct non-black image: pixel (0, 0) holds the id, the rest a pattern seeded by it."""
    img = np.random.default_rng(uid).integers(0, 256, size=(side, side), dtype=np.uint8)
    img[0, 0] = uid
    img[0, 1] = 255  # never all black, even for id 0
    return img


def _write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _row(k: int, i: int, label: int) -> str:
    # as in the release: subdir, file, index, label, continuity, contour length, distractor length,
    # paddle length, paddle thickness, margin, number of paddle contrasts
    return f"imgs/{k} sample_{i}.png {i} {label} 1.0 14 4 2 0.5 1 2"


def build_tree(root: Path, side: int = 32, folders: tuple[tuple[int, int], ...] = ((0, 20), (2, 15), (10, 15)),
               difficulty: str = HARD, bad: dict | None = None, shuffle_rows: int | None = 3) -> dict:
    """``root/pathfinder<side>/<difficulty>`` with ``sum(counts)`` images in folders ``k``.

    ``bad`` maps (k, i) to "empty" (0 bytes), "black" (all zeros), "garbage" (not a PNG) or
    "small" (one row short). Returns {(k, i): (uid, label)} of every row and the order of uids
    in sorted (k, i) order."""
    bad = bad or {}
    folder = root / f"pathfinder{side}" / difficulty
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    rows, uid = {}, 0
    for k, count in folders:
        lines = []
        for i in range(count):
            label = int(np.random.default_rng(1000 + uid).integers(0, 2))
            path = folder / "imgs" / str(k) / f"sample_{i}.png"
            kind = bad.get((k, i))
            if kind == "empty":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"")
            elif kind == "black":
                _write_png(path, np.zeros((side, side), dtype=np.uint8))
            elif kind == "garbage":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"this is not a png file")
            elif kind == "small":
                _write_png(path, _image(uid, side)[:-1])
            else:
                _write_png(path, _image(uid, side))
            rows[k, i] = (uid, label)
            lines.append(_row(k, i, label))
            uid += 1
        if shuffle_rows is not None:  # the reader sorts rows; the file order must not matter
            np.random.default_rng(shuffle_rows + k).shuffle(lines)
        (folder / "metadata" / f"{k}.npy").write_text("\n".join(lines) + "\n")
    return rows


def _uids(data, split: str) -> list[int]:
    return [int(t) - 1 for t in data.splits[split]["tokens"][:, 0]]  # pixel (0, 0) + 1


BAD = {(0, 3): "empty", (2, 7): "black", (10, 1): "garbage"}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "lra_release"
    rows = build_tree(root, bad=BAD)
    return root, rows


def _files(root: Path, **params) -> dict:
    return {"source": "files", "path": str(root), **params}


def test_reads_release_tree(tree, tmp_path):
    root, rows = tree
    data = build_task("pathfinder", _files(root)).prepare(tmp_path / "work")
    assert (data.seq_len, data.vocab_size, data.num_classes) == (1024, 257, 2)
    assert data.label_names == ["disconnected", "connected"]
    good = {uid: label for key, (uid, label) in rows.items() if key not in BAD}
    assert len(good) == 47
    seen = []
    for split in SPLITS:
        tokens, labels = data.splits[split]["tokens"], data.splits[split]["labels"]
        assert tokens.dtype == torch.int64 and labels.dtype == torch.int64
        assert tokens.shape == (labels.shape[0], 1024)
        assert int(tokens.min()) >= 1 and int(tokens.max()) <= 256
        for row, label in zip(tokens, labels.tolist(), strict=True):
            uid = int(row[0]) - 1
            assert label == good[uid], f"image {uid}: label {label}, metadata says {good[uid]}"
            # every pixel, row-major, + 1
            assert torch.equal(row, torch.from_numpy(_image(uid, 32).reshape(-1).astype(np.int64) + 1))
            seen.append(uid)
    assert sorted(seen) == sorted(good), "each usable image exactly once over the three splits"
    sizes = {s: data.splits[s]["labels"].shape[0] for s in SPLITS}
    assert sizes == {"train": 47 - 5 - 5, "val": 5, "test": 5}  # round(4.7) = 5
    assert "3 skipped" in data.source and "1 empty file" in data.source
    assert "1 unreadable" in data.source and "1 all black" in data.source


def test_lra_split_sizes_80_10_10():
    parts = split_indices(200_000, 0.1, 0.1, seed=0)
    assert {s: len(v) for s, v in parts.items()} == {"train": 160_000, "val": 20_000, "test": 20_000}
    together = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(together), np.arange(200_000))
    assert all(np.all(np.diff(v) > 0) for v in parts.values())
    again = split_indices(200_000, 0.1, 0.1, seed=0)
    other = split_indices(200_000, 0.1, 0.1, seed=1)
    assert all(np.array_equal(parts[s], again[s]) for s in SPLITS)
    assert not np.array_equal(parts["test"], other["test"])


def test_reading_is_deterministic_and_independent_of_row_order(tree, tmp_path):
    root, _ = tree
    other = tmp_path / "other_order"
    build_tree(other, bad=BAD, shuffle_rows=99)
    a = build_task("pathfinder", _files(root, data_seed=5)).prepare(tmp_path / "w1")
    b = build_task("pathfinder", _files(root, data_seed=5)).prepare(tmp_path / "w2")
    c = build_task("pathfinder", _files(other, data_seed=5)).prepare(tmp_path / "w3")
    d = build_task("pathfinder", _files(root, data_seed=6)).prepare(tmp_path / "w4")
    for split in SPLITS:
        for key in ("tokens", "labels"):
            assert torch.equal(a.splits[split][key], b.splits[split][key])
            assert torch.equal(a.splits[split][key], c.splits[split][key])
    assert _uids(a, "test") != _uids(d, "test")


def test_read_order_is_numeric(tree):
    root, rows = tree
    data = read_release(root / "pathfinder32" / HARD, 32)
    expected = [f"imgs/{k}/sample_{i}.png" for k, i in sorted(rows) if (k, i) not in BAD]
    assert data.names == expected  # imgs/2 before imgs/10, sample_2 before sample_10
    assert [int(im[0, 0]) for im in data.images] == [rows[k, i][0] for k, i in sorted(rows) if (k, i) not in BAD]
    assert data.labels.tolist() == [rows[k, i][1] for k, i in sorted(rows) if (k, i) not in BAD]
    assert data.rows == 50
    assert data.skipped == {"empty file": ["imgs/0/sample_3.png"], "unreadable": ["imgs/10/sample_1.png"],
                            "all black": ["imgs/2/sample_7.png"]}


def test_max_examples_reads_the_first_rows(tree, tmp_path):
    root, rows = tree
    data = build_task("pathfinder", _files(root, max_examples=10)).prepare(tmp_path / "work")
    first = [rows[k, i][0] for k, i in sorted(rows)[:10] if (k, i) not in BAD]  # one of them is empty
    assert sorted(uid for s in SPLITS for uid in _uids(data, s)) == sorted(first)
    assert "9 images of 10 metadata rows" in data.source


def test_missing_folder_names_the_expected_path(tmp_path):
    root = tmp_path / "lra_release"
    root.mkdir()
    with pytest.raises(DataError) as info:
        build_task("pathfinder", _files(root)).prepare(tmp_path / "work")
    msg = str(info.value)
    assert str(root / "pathfinder32" / HARD / "metadata") in msg
    assert LRA_RELEASE_URL in msg and "lra_release/lra_release/pathfinder32/" in msg
    assert "tasks.pathfinder.data.path" in msg
    # the same is said when the run is planned, before any job starts
    (problem,) = build_task("pathfinder", _files(root)).missing_sources()
    assert str(root / "pathfinder32" / HARD / "metadata") in problem and LRA_RELEASE_URL in problem
    assert build_task("pathfinder", {"source": "generate"}).missing_sources() == []
    # another difficulty than the one present
    build_tree(root, folders=((0, 2),), difficulty="curv_baseline")
    with pytest.raises(DataError) as info:
        build_task("pathfinder", _files(root, difficulty="curv_contour_length_9")).prepare(tmp_path / "work")
    assert str(root / "pathfinder32" / "curv_contour_length_9" / "metadata") in str(info.value)


def test_path_pointing_at_the_resolution_folder_is_explained(tmp_path):
    root = tmp_path / "lra_release"
    build_tree(root, folders=((0, 2),))
    with pytest.raises(DataError) as info:
        build_task("pathfinder", _files(root / "pathfinder32")).prepare(tmp_path / "work")
    assert "not pathfinder32/ itself" in str(info.value)


def test_files_source_without_path(tmp_path):
    with pytest.raises(DataError, match="needs `path`"):
        build_task("pathfinder", {"source": "files"}).prepare(tmp_path)


def test_wrong_image_size_names_the_file(tmp_path):
    root = tmp_path / "lra_release"
    build_tree(root, folders=((0, 4),), bad={(0, 2): "small"})
    with pytest.raises(DataError) as info:
        build_task("pathfinder", _files(root)).prepare(tmp_path / "work")
    msg = str(info.value)
    assert str(root / "pathfinder32" / HARD / "imgs" / "0" / "sample_2.png") in msg
    assert "32x31" in msg and "expected 32x32" in msg


def test_missing_listed_image_and_bad_metadata_row(tmp_path):
    root = tmp_path / "lra_release"
    build_tree(root, folders=((0, 4),))
    folder = root / "pathfinder32" / HARD
    (folder / "imgs" / "0" / "sample_1.png").unlink()
    with pytest.raises(DataError) as info:
        build_task("pathfinder", _files(root)).prepare(tmp_path / "work")
    assert str(folder / "imgs" / "0" / "sample_1.png") in str(info.value)
    (folder / "metadata" / "0.npy").write_text("imgs/0 sample_0.png 0 yes\n")
    with pytest.raises(DataError) as info:
        build_task("pathfinder", _files(root)).prepare(tmp_path / "work")
    assert f"{folder / 'metadata' / '0.npy'}:1" in str(info.value)


def test_pathx_reads_128(tmp_path):
    root = tmp_path / "lra_release"
    rows = build_tree(root, side=128, folders=((0, 4),), shuffle_rows=None)
    data = build_task("pathx", _files(root, val_fraction=0.25, test_fraction=0.25)).prepare(tmp_path / "work")
    assert data.seq_len == 16384
    assert {s: tuple(data.splits[s]["tokens"].shape) for s in SPLITS} == \
           {"train": (2, 16384), "val": (1, 16384), "test": (1, 16384)}
    got = {uid: label for s in SPLITS
           for uid, label in zip(_uids(data, s), data.splits[s]["labels"].tolist(), strict=True)}
    assert got == {uid: label for uid, label in rows.values()}
    with pytest.raises(DataError) as info:  # a pathfinder32 tree is not Path-X
        build_task("pathx", _files(tmp_path / "nothing")).prepare(tmp_path / "work")
    assert str(tmp_path / "nothing" / "pathfinder128" / HARD / "metadata") in str(info.value)
    assert "tasks.pathx.data.path" in str(info.value)


def test_pathx_defaults_differ_only_in_resolution():
    from attnbench.tasks import TASKS

    pf, px = TASKS.make_config("pathfinder"), TASKS.make_config("pathx")
    assert (pf.resolution, px.resolution) == (32, 128)
    assert {k: v for k, v in vars(pf).items() if k != "resolution"} == \
           {k: v for k, v in vars(px).items() if k != "resolution"}


# ---------------------------------------------------------------- independent connectivity check

def find_markers(img: np.ndarray) -> list[tuple[int, int]]:
    """One pixel of each blob holding a solid 2x2 block (dashes are one pixel thin)."""
    fg = img > 0
    block = fg[:-1, :-1] & fg[1:, :-1] & fg[:-1, 1:] & fg[1:, 1:]
    labels, n = ndimage.label(block, structure=np.ones((3, 3)))
    return [tuple(int(v) for v in np.argwhere(labels == c)[0]) for c in range(1, n + 1)]


def bridged_components(img: np.ndarray, jump: int) -> np.ndarray:
    """Label per pixel (-1 background): foreground pixels joined when within ``jump`` pixels
    (Chebyshev), i.e. bridging gaps of up to ``jump - 1`` background pixels."""
    fg = img > 0
    h, w = fg.shape
    index = -np.ones(fg.shape, dtype=np.int64)
    index[fg] = np.arange(int(fg.sum()))
    src, dst = [], []
    for dy in range(0, jump + 1):
        for dx in range(-jump, jump + 1):
            if dy == 0 and dx <= 0:
                continue
            a = index[0:h - dy, max(0, -dx):w - max(0, dx)]
            b = index[dy:h, max(0, dx):w + min(0, dx)]
            both = (a >= 0) & (b >= 0)
            src.append(a[both])
            dst.append(b[both])
    n = int(fg.sum())
    src, dst = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    out = -np.ones(fg.shape, dtype=np.int64)
    out[fg] = comp
    return out


def check_image(img: np.ndarray, s: DrawSettings) -> dict:
    markers = find_markers(img)
    assert len(markers) == 2, f"expected 2 markers, found {len(markers)}"
    comp = bridged_components(img, s.gap + 1)
    touching = bridged_components(img, 1)  # plain 8-connectivity: every dash its own piece
    a, b = (comp[m] for m in markers)
    in_a = comp == a
    pieces = len(np.unique(touching[in_a]))
    return {"connected": bool(a == b), "pieces": pieces, "touching": bool(touching[markers[0]] == touching[markers[1]])}


def test_connectivity_check_on_hand_made_pictures():
    img = np.zeros((8, 18), dtype=np.uint8)
    img[1:4, 1:4] = 255        # marker
    img[2, 5:7] = 255          # dash, one background pixel after it
    img[3, 8:10] = 255         # dash, one background pixel after that (diagonally)
    img[3:6, 11:14] = 255      # marker, one background pixel after the dash
    s = DrawSettings(resolution=8, gap=1)
    assert check_image(img, s) == {"connected": True, "pieces": 4, "touching": False}
    img[3:6, 11:14] = 0
    img[3:6, 12:15] = 255      # two background pixels: not bridged by a gap of 1
    assert check_image(img, s)["connected"] is False
    assert check_image(img, DrawSettings(resolution=8, gap=2))["connected"] is True
    img[3, 10:12] = 255        # touching pieces: one piece
    assert check_image(img, s) == {"connected": True, "pieces": 3, "touching": False}


@pytest.mark.slow
@pytest.mark.parametrize("resolution,n", [(32, 400), (64, 200), (128, 100)])
def test_generated_labels_agree_with_connectivity(resolution, n):
    s = draw_settings(resolution)
    images, labels = generate_images(n, s, seed=resolution)
    assert images.shape == (n, resolution, resolution) and images.dtype == np.uint8
    assert set(np.unique(images).tolist()) == {0, 255}
    disagree = []
    for i, (img, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        got = check_image(img, s)
        if got["connected"] != bool(label):
            disagree.append(i)
        assert not got["touching"], f"image {i}: the markers touch without bridging any gap"
        # the markers' component is one whole target path: its dashes, and one or two markers
        assert got["pieces"] == s.path_length + (2 if label else 1), (i, label, got)
        assert img[:s.margin].max() == img[-s.margin:].max() == img[:, :s.margin].max() == 0
    assert not disagree, f"{len(disagree)}/{n} labels disagree with the pixels: images {disagree[:10]}"
    assert labels.sum() == n // 2  # exactly balanced
    ink = (images > 0).reshape(n, -1).sum(1)
    assert ink.min() > 2 * s.marker_size ** 2 + 2 * s.path_length * s.dash_length - 1  # never empty


@pytest.mark.slow
def test_generator_options_and_impossible_settings():
    s = draw_settings(48, "curv_baseline", gap=2, dash_length=3, marker_size=5, n_distractors=0)
    assert (s.path_length, s.distractor_length) == (6, 2)
    images, labels = generate_images(40, s, seed=3)
    for img, label in zip(images, labels.tolist(), strict=True):
        got = check_image(img, s)
        assert got["connected"] == bool(label) and got["pieces"] == 6 + (2 if label else 1)
    assert len(np.unique(bridged_components(images[0], 3))) - 1 == 2  # no distractors: two paths
    with pytest.raises(ValueError, match="marker_size"):
        draw_settings(32, marker_size=4)
    with pytest.raises(ValueError, match="could not fit"):
        generate_images(1, draw_settings(16, path_length=30), seed=0)


@pytest.mark.slow
def test_impossible_generator_settings_are_a_data_error_naming_the_key(tmp_path):
    with pytest.raises(DataError, match=r"tasks\.pathfinder\.data: .*could not fit"):
        build_task("pathfinder", {"resolution": 16, "path_length": 30, "n_train": 2}).prepare(tmp_path)
    with pytest.raises(DataError, match=r"tasks\.pathx\.data: .*marker_size"):
        build_task("pathx", {"marker_size": 4, "n_train": 2}).prepare(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_generated_release_is_seeded(tmp_path):
    s = draw_settings(32)
    files = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        folder = write_release(tmp_path / name, 12, s, seed)
        files[name] = {p.relative_to(folder).as_posix(): p.read_bytes()
                       for p in sorted(folder.rglob("*")) if p.is_file()}
    assert files["a"] == files["b"]
    assert set(files["a"]) == set(files["c"]) == {"metadata/0.npy", *(f"imgs/0/sample_{i}.png" for i in range(12))}
    assert all(files["a"][k] != files["c"][k] for k in files["a"] if k.endswith(".png"))
    rows = files["a"]["metadata/0.npy"].decode().splitlines()
    assert [r.split()[:3] for r in rows] == [["imgs/0", f"sample_{i}.png", str(i)] for i in range(12)]
    assert sorted(int(r.split()[3]) for r in rows) == [0] * 6 + [1] * 6


_GEN_SCRIPT = """
import hashlib, sys
from attnbench.tasks.lib.pathfinder_draw import generate_images
from attnbench.tasks.lib.pathfinder_settings import draw_settings
images, labels = generate_images(6, draw_settings(32), seed=11)
print(hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest())
"""


@pytest.mark.slow
def test_generation_independent_of_python_hash_seed():
    procs = [subprocess.Popen([sys.executable, "-c", _GEN_SCRIPT], cwd=REPO, text=True,
                              env={**os.environ, "PYTHONHASHSEED": hash_seed},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for hash_seed in ("0", "4321")]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        outs.append(stdout.strip())
    images, labels = generate_images(6, draw_settings(32), seed=11)
    assert outs[0] == outs[1] == hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()


@pytest.mark.slow
def test_generated_task_reads_back_through_the_reader(tmp_path):
    params = {"n_train": 40, "n_val": 10, "n_test": 14, "data_seed": 2}
    data = build_task("pathfinder", params).prepare(tmp_path)
    assert {s: data.splits[s]["labels"].shape[0] for s in SPLITS} == {"train": 40, "val": 10, "test": 14}
    assert "0 skipped" in data.source and "64 images of 64 metadata rows" in data.source
    assert list(tmp_path.iterdir()) == []  # the drawn release files were an intermediate, removed
    task = build_task("pathfinder", params)
    back = read_release(task.write_generated(tmp_path / "files") / "pathfinder32" / HARD, 32)
    assert len(back.labels) == 64 and int(back.labels.sum()) == 32
    generated, labels = generate_images(64, draw_settings(32), seed=2)
    assert np.array_equal(back.images, generated) and np.array_equal(back.labels, labels)
    # the prepared splits are the files' images, each once, + 1
    pooled = {tuple(row.tolist()): int(y) for s in SPLITS
              for row, y in zip(data.splits[s]["tokens"], data.splits[s]["labels"], strict=True)}
    assert pooled == {tuple((img.reshape(-1).astype(np.int64) + 1).tolist()): int(y)
                      for img, y in zip(generated, labels, strict=True)}
    # writing again into the same folder replaces the first files (no stale rows)
    build_task("pathfinder", {**params, "n_train": 20}).write_generated(tmp_path / "files")
    assert len(read_release(tmp_path / "files" / "pathfinder32" / HARD, 32).labels) == 44
    # max_examples generates only the first rows, identical to the full run's
    capped = build_task("pathfinder", {**params, "max_examples": 16})
    assert "16 images of 16 metadata rows" in capped.prepare(tmp_path / "capped").source
    first = read_release(capped.write_generated(tmp_path / "capped") / "pathfinder32" / HARD, 32)
    assert first.names == back.names[:16]
    assert np.array_equal(first.images, back.images[:16]) and np.array_equal(first.labels, back.labels[:16])
