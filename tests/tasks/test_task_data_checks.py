"""Task data settings that cannot work are refused when the config is validated, before any job
starts, one line per problem naming the key and its value: cross-field constraints (min_length
below max_length, fractions that leave a training split) and generator settings that cannot draw
what is asked for (ListOps trees longer than its shape allows, more distinct trees than exist,
Pathfinder paths that cannot fit). Each generator bound is checked against the generator itself."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from attnbench.harness.config import DEFAULT_CONFIG, ConfigError, load_config, validate_config
from attnbench.tasks.image import DIGITS_IMAGES
from attnbench.tasks.lib.pathfinder_draw import generate_images
from attnbench.tasks.lib.pathfinder_settings import cannot_fit, draw_settings
from attnbench.tasks.listops import COUNT_BELOW, ListOpsConfig, generate_tree, longest_tree, to_string, tree_counts

CONFIG_DIR = Path(DEFAULT_CONFIG).parent


def config_with(task: str, **data) -> dict:
    """The shipped default config with only ``task``, its data settings (the default config's, else
    config/pathfinder.yaml's for Pathfinder, which has its own config) updated with ``data``."""
    config = yaml.safe_load(Path(DEFAULT_CONFIG).read_text(encoding="utf-8"))
    own = yaml.safe_load((CONFIG_DIR / "pathfinder.yaml").read_text(encoding="utf-8"))["tasks"]
    settings = config["tasks"].get(task, own.get(task, {}))
    config["tasks"] = {task: {**settings, "data": {**settings.get("data", {}), **data}}}
    return config


def refused(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    return str(info.value)


def assert_refused(config: dict, *parts: str) -> str:
    """Refused with one line that holds every one of ``parts`` (a key, its value, ...)."""
    message = refused(config)
    lines = [line for line in message.splitlines() if all(p in line for p in parts)]
    assert lines, f"no line of {message!r} holds all of {parts}"
    return lines[0]


@pytest.mark.slow
def test_every_shipped_config_still_validates():
    files = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p.name != "schema.yaml")
    assert {p.name for p in files} >= {"config.yaml", "lra.yaml"}
    for path in files:
        assert load_config(path)["tasks"], path


# ---------------------------------------------------------------- ListOps

def test_listops_min_length_must_leave_a_length_below_max_length():
    line = assert_refused(config_with("listops", min_length=600, max_length=500),
                          "'tasks.listops.data.min_length' is 600", "'tasks.listops.data.max_length' is 500")
    assert "min_length must be at most max_length - 2" in line
    assert_refused(config_with("listops", min_length=47, max_length=48), "'tasks.listops.data.min_length' is 47")
    # the boundary: 46 < length < 48 keeps trees of 47 tokens
    assert validate_config(config_with("listops", min_length=46, max_length=48, max_depth=4))


def test_listops_example_counts_have_a_schema_maximum():
    assert_refused(config_with("listops", n_train=1e15), "'tasks.listops.data.n_train' is 1000000000000000",
                   "must be <= 10000000")
    assert_refused(config_with("listops", n_test=10_000_001), "'tasks.listops.data.n_test' is 10000001")
    assert validate_config(config_with("listops", n_train=10_000_000))


def test_listops_longest_tree_bound_is_the_generators():
    """max_depth 2 and max_args 2: an operator over two digits, 4 tokens, is the longest tree."""
    cfg = ListOpsConfig(max_depth=2, max_args=2, value_p=0.5)
    rng = random.Random(0)
    lengths = [generate_tree(rng, cfg)[1] for _ in range(2000)]
    assert max(lengths) == longest_tree(cfg) == 4
    deeper = ListOpsConfig(max_depth=3, max_args=3, value_p=0.9)
    assert max(generate_tree(rng, deeper)[1] for _ in range(2000)) == longest_tree(deeper) == 2 + 3 * 5

    line = assert_refused(config_with("listops", max_depth=2, max_args=2, min_length=4, max_length=50),
                          "'tasks.listops.data.min_length' is 4", "has 4 tokens")
    assert "'tasks.listops.data.max_depth' 2" in line and "'tasks.listops.data.max_args' 2" in line
    assert validate_config(config_with("listops", max_depth=2, max_args=2, min_length=3, max_length=50,
                                       n_train=300, n_val=50, n_test=50))


def test_listops_single_digits_only():
    for shape, key in (({"max_depth": 1}, "'tasks.listops.data.max_depth' is 1"),
                       ({"value_p": 0}, "'tasks.listops.data.value_p' is 0")):
        assert_refused(config_with("listops", min_length=1, max_length=50, **shape),
                       "'tasks.listops.data.min_length' is 1", key, "single digit")
        line = assert_refused(config_with("listops", min_length=0, max_length=50, n_train=9, n_val=1, n_test=1,
                                          **shape),
                              "'tasks.listops.data.n_train' + 'tasks.listops.data.n_val' + "
                              "'tasks.listops.data.n_test' is 11", "only 10 distinct trees (single digits)")
        assert "at most 10 in all" in line
        assert validate_config(config_with("listops", min_length=0, max_length=50, n_train=8, n_val=1, n_test=1,
                                           **shape))


def test_listops_value_p_1_never_ends_a_tree():
    """A node is a digit when its draw exceeds value_p, and the draw is 1.0 at max_depth: with
    value_p 1 no node is a digit, and the generator nests until Python's recursion limit."""
    with pytest.raises(RecursionError):
        generate_tree(random.Random(0), ListOpsConfig(max_depth=2, max_args=2, value_p=1.0))
    line = assert_refused(config_with("listops", value_p=1), "'tasks.listops.data.value_p' is 1")
    assert "must be below 1" in line
    assert validate_config(config_with("listops", value_p=0.999))


def test_listops_lengths_no_tree_has():
    """No tree has 2 or 3 tokens: a digit is 1, an operator 2 plus at least 2 arguments."""
    assert_refused(config_with("listops", min_length=1, max_length=4),
                   "'tasks.listops.data.min_length' is 1", "'tasks.listops.data.max_length' is 4", "no tree")
    assert validate_config(config_with("listops", min_length=1, max_length=5, n_train=300, n_val=50, n_test=50))


def test_listops_distinct_tree_count_is_the_generators():
    """max_depth 2, max_args 2: 10 digits and 4 operators over two digits, 10 + 4 * 100 trees, all drawn."""
    cfg = ListOpsConfig(max_depth=2, max_args=2, value_p=0.5)
    counts = tree_counts(cfg, COUNT_BELOW, cap=10 ** 6)
    rng = random.Random(2)
    drawn = {to_string(generate_tree(rng, cfg)[0]) for _ in range(20_000)}
    assert len(drawn) == sum(counts) == 410
    # per length, against a deeper shape's drawn trees: no drawn length is counted as impossible
    deeper = ListOpsConfig(max_depth=3, max_args=3, value_p=0.5)
    counts = tree_counts(deeper, COUNT_BELOW, cap=10 ** 9)
    by_length: dict[int, set[str]] = {}
    for _ in range(20_000):
        tree, length = generate_tree(rng, deeper)
        by_length.setdefault(length, set()).add(to_string(tree))
    assert all(len(trees) <= counts[length] for length, trees in by_length.items())
    assert {length for length, n in enumerate(counts) if n} == set(by_length)
    assert (counts[1], counts[4], counts[5]) == (10, 4 * 10 ** 2, 4 * 10 ** 3) and len(by_length[1]) == 10

    shape = {"max_depth": 2, "max_args": 2, "value_p": 0.5, "min_length": 0, "max_length": 50}
    line = assert_refused(config_with("listops", n_train=401, n_val=5, n_test=5, **shape),
                          "'tasks.listops.data.n_train' + 'tasks.listops.data.n_val' + 'tasks.listops.data.n_test' "
                          "is 411 (401 + 5 + 5)", "only 410 distinct trees")
    assert "0 < length < 50" in line
    assert validate_config(config_with("listops", n_train=400, n_val=5, n_test=5, **shape))


def test_listops_files_are_not_checked_as_generated():
    """Generator settings do not apply to source: files (LRA's release: max_length 2000)."""
    assert validate_config(config_with("listops", source="files", path="lra_release/listops-1000", min_length=0,
                                       max_length=2, max_depth=1))


# ---------------------------------------------------------------- Pathfinder, Path-X

def test_pathfinder_drawing_range_check_is_said_up_front():
    assert_refused(config_with("pathfinder", marker_size=4), "'tasks.pathfinder.data.marker_size' is 4",
                   "an odd number, at least 3")
    assert_refused(config_with("pathx", marker_size=4), "'tasks.pathx.data.marker_size' is 4")
    assert validate_config(config_with("pathfinder", marker_size=5))
    with pytest.raises(ValueError, match=r"marker_size=4 \(an odd number, at least 3\)"):
        draw_settings(32, marker_size=4)  # the drawing's own check, the same rule


def test_pathfinder_marker_gap_and_dash_must_fit_across():
    """A cap, a gap and a dash in a row: marker_size + gap + dash_length pixels inside the border."""
    line = assert_refused(config_with("pathfinder", resolution=32, marker_size=3, gap=10, dash_length=18),
                          "'tasks.pathfinder.data.resolution' is 32", "31 pixels")
    assert "30 pixels across" in line
    assert validate_config(config_with("pathfinder", resolution=32, marker_size=3, gap=10, dash_length=17))


@pytest.mark.slow
def test_pathfinder_straight_paths_must_fit_across():
    """max_turn below 2.5 degrees rounds to no turn: a path of 3 dashes of 2 pixels with 3x3
    markers spans 16 pixels, more than the 14 inside a 16-pixel image's border."""
    refusal = draw_settings(16, path_length=3, dash_length=2, max_turn=0)
    assert cannot_fit(refusal) and not cannot_fit(draw_settings(16, path_length=2, dash_length=2, max_turn=0))
    with pytest.raises(ValueError, match="could not fit"):
        generate_images(1, refusal, seed=0)
    assert len(generate_images(2, draw_settings(16, path_length=2, dash_length=2, max_turn=0), seed=0)[0]) == 2
    data = {"resolution": 16, "path_length": 3, "dash_length": 2}
    assert_refused(config_with("pathfinder", max_turn=2, **data), "'tasks.pathfinder.data.max_turn' is 2:",
                   "spans 16 pixels")
    assert validate_config(config_with("pathfinder", max_turn=0, **{**data, "path_length": 2}))
    assert validate_config(config_with("pathfinder", max_turn=2.5, **data))  # one 5-degree step: paths can bend


def test_pathfinder_two_paths_must_cover_fewer_pixels_than_the_image():
    line = assert_refused(config_with("pathfinder", resolution=16, path_length=60, dash_length=2),
                          "'tasks.pathfinder.data.path_length' is 60", "cover 276 pixels")
    assert "more than the 196" in line
    # automatic values are said with what they resolve to: curv_baseline's 6 dashes
    assert_refused(config_with("pathfinder", resolution=8, path_length=0, dash_length=0),
                   "'tasks.pathfinder.data.path_length' is 0 (automatic: 6)", "cover 60 pixels")
    assert validate_config(config_with("pathfinder", resolution=16, path_length=40, dash_length=2))  # 196 pixels


@pytest.mark.slow
def test_pathfinder_splits_must_not_be_empty():
    assert_refused(config_with("pathfinder", n_val=0), "'tasks.pathfinder.data.n_val' is 0", "must be >= 1")
    assert_refused(config_with("pathfinder", n_train=1e15), "'tasks.pathfinder.data.n_train' is 1000000000000000")
    # 2000 / 250 / 500: the first 5 images split 4 / 0 / 1, the first 6 split 4 / 1 / 1
    assert_refused(config_with("pathfinder", max_examples=5), "'tasks.pathfinder.data.max_examples' is 5",
                   "validation split empty")
    assert validate_config(config_with("pathfinder", max_examples=6))
    files = {"source": "files", "path": "lra_release/lra_release"}
    assert_refused(config_with("pathfinder", val_fraction=0.5, test_fraction=0.5, **files),
                   "'tasks.pathfinder.data.val_fraction' is 0.5", "'tasks.pathfinder.data.test_fraction' is 0.5",
                   "must sum below 1")
    assert_refused(config_with("pathx", val_fraction=0, **files), "'tasks.pathx.data.val_fraction' is 0")
    assert validate_config(config_with("pathfinder", val_fraction=0.5, test_fraction=0.4, **files))


# ---------------------------------------------------------------- image and text

@pytest.mark.slow
def test_digits_fractions_must_leave_an_image_in_each_split():
    from sklearn.datasets import load_digits

    assert DIGITS_IMAGES == len(load_digits().target)
    assert_refused(config_with("image", val_fraction=0.0002), "'tasks.image.data.val_fraction' is 0.0002",
                   "= 0 for validation")
    assert_refused(config_with("image", test_fraction=0.0002), "'tasks.image.data.test_fraction' is 0.0002")
    assert validate_config(config_with("image", val_fraction=0.0003, test_fraction=0.0003))
    assert validate_config(config_with("image", source="cifar10", val_fraction=0.0002))  # its size is read later


@pytest.mark.slow
@pytest.mark.parametrize("task", ["text", "textcls"])
def test_text_source_settings_that_cannot_split(task):
    key = f"'tasks.{task}.data"
    assert_refused(config_with(task, val_fraction=0.5, test_fraction=0.5), f"{key}.val_fraction' is 0.5",
                   f"{key}.test_fraction' is 0.5", "must sum below 1")
    assert validate_config(config_with(task, val_fraction=0.5, test_fraction=0.4))
    assert_refused(config_with(task, text_columns=[]), f"{key}.text_columns' is []")
    assert_refused(config_with(task, label_names=["neg", "pos", "neg"]),
                   f"{key}.label_names' is ['neg', 'pos', 'neg']", "'neg' more than once")
    assert_refused(config_with(task, data_files={"training": "a.csv", "test": "b.csv"}),
                   f"{key}.data_files' has the splits training, test but no train")
    assert_refused(config_with(task, data_files={"train": "a.csv", "test": 5}), f"{key}.data_files.test' is 5")
    assert validate_config(config_with(task, data_files={"train": ["a.csv", "b.csv"], "test": "c.csv"}))
    assert validate_config(config_with(task, data_files={"all": "a.csv"}, split_column="is_valid"))


def test_data_problems_come_first_and_all_at_once():
    config = config_with("listops", min_length=600, max_length=500)
    config["tasks"]["image"] = {"data": {"val_fraction": 0.0001}}
    config["variants"] = {"lsh": {"n_buckets": 3}}  # said only once the data settings pass
    lines = refused(config).splitlines()
    assert [line for line in lines if "'tasks.listops.data.min_length' is 600" in line]
    assert [line for line in lines if "'tasks.image.data.val_fraction' is 0.0001" in line]
    assert not [line for line in lines if "n_buckets" in line]
