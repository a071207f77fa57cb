"""ListOps: labels checked by an independent evaluator, LRA's printed/TSV format, determinism."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from attnbench.tasks.base import PAD_ID, SPLITS, DataError, build_task
from attnbench.tasks.listops import VOCAB, read_tsv, to_string, write_tsv
from conftest import REPO

OPS = ("[MIN", "[MAX", "[MED", "[SM")


# ---------------------------------------------------------------- independent reference

def _apply(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        s, n = sorted(args), len(args)
        return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2  # mean of the middle two, truncated
    if op == "[SM":
        return sum(args) % 10
    raise AssertionError(f"unknown operator {op!r}")


def evaluate_tokens(source: str) -> dict:
    """Stack evaluation of the token stream with parentheses dropped (what the model sees)."""
    tokens = [t for t in source.split() if t not in ("(", ")")]
    stack: list[tuple[str, list[int]]] = []
    result, depth, arities = None, 0, []
    for t in tokens:
        assert result is None, f"tokens after the end of the expression in {source!r}"
        if t in OPS:
            stack.append((t, []))
            depth = max(depth, len(stack))
        elif t == "]":
            assert stack, f"unbalanced ']' in {source!r}"
            op, args = stack.pop()
            arities.append(len(args))
            value = _apply(op, args)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        else:
            assert len(t) == 1 and t.isdigit(), f"unexpected token {t!r}"
            if stack:
                stack[-1][1].append(int(t))
            else:
                result = int(t)
    assert not stack and result is not None, f"incomplete expression {source!r}"
    return {"value": result, "length": len(tokens), "op_depth": depth, "arities": arities}


def parse_pairs(source: str):
    """The parenthesised form as nested 2-tuples; every '(' must hold exactly two items."""
    tokens = source.split()
    pos = 0

    def item():
        nonlocal pos
        t = tokens[pos]
        pos += 1
        if t != "(":
            assert t != ")", f"stray ')' in {source!r}"
            return t
        left, right = item(), item()
        assert tokens[pos] == ")", f"a parenthesised group with more than two items in {source!r}"
        pos += 1
        return (left, right)

    tree = item()
    assert pos == len(tokens), f"trailing tokens in {source!r}"
    return tree


def evaluate_pairs(node) -> int:
    """Value of LRA's left-nested layout ``( ( ( OP a1 ) a2 ) ... ] )``, asserting that layout."""
    if isinstance(node, str):
        assert node.isdigit() and len(node) == 1, node
        return int(node)
    chain, close = node
    assert close == "]", f"an operator expression must end with its own ']' pair, got {close!r}"
    args = []
    while isinstance(chain, tuple) and chain[0] not in OPS:
        chain, arg = chain
        args.append(arg)
    assert isinstance(chain, tuple) and chain[0] in OPS, f"no operator at the head of {chain!r}"
    args.append(chain[1])
    return _apply(chain[0], [evaluate_pairs(a) for a in reversed(args)])


def _generated_rows(tmp_path: Path, params: dict) -> dict[str, list[tuple[str, int]]]:
    files = build_task("listops", params).write_generated(tmp_path)
    return {split: list(read_tsv(files[split])) for split in SPLITS}


# ---------------------------------------------------------------- the reference itself

def test_reference_evaluator_on_hand_examples():
    assert evaluate_tokens("( ( ( [MAX 4 ) 5 ) ] )")["value"] == 5
    assert evaluate_tokens("( ( ( ( ( [MED 1 ) 2 ) 5 ) 8 ) ] )")["value"] == 3  # (2 + 5) / 2 = 3.5 -> 3
    assert evaluate_tokens("( ( ( ( [MED 9 ) 1 ) 4 ) ] )")["value"] == 4
    nested = "( ( ( ( [SM ( ( ( [MIN 3 ) 8 ) ] ) ) 9 ) 4 ) ] )"  # SM(MIN(3, 8), 9, 4) = 16 mod 10
    assert evaluate_tokens(nested)["value"] == 6
    assert evaluate_pairs(parse_pairs(nested)) == 6
    assert evaluate_tokens(nested)["op_depth"] == 2


def test_printed_form_is_lra_parenthesised():
    assert to_string(((("[MAX", 4), 5), "]")) == "( ( ( [MAX 4 ) 5 ) ] )"
    inner = ((("[MIN", 3), 8), "]")
    assert to_string((((("[SM", inner), 9), 4), "]")) == "( ( ( ( [SM ( ( ( [MIN 3 ) 8 ) ] ) ) 9 ) 4 ) ] )"


# ---------------------------------------------------------------- generator vs reference

CONFIGS = [
    pytest.param(dict(max_depth=3, min_length=0, max_length=30, n_train=1500, n_val=250, n_test=250), id="shallow"),
    pytest.param(dict(max_depth=6, min_length=20, max_length=120, n_train=1200, n_val=150, n_test=150), id="depth6"),
    pytest.param(dict(max_depth=10, min_length=50, max_length=300, n_train=600, n_val=100, n_test=100), id="depth10"),
    pytest.param(dict(max_depth=8, min_length=10, max_length=80, max_args=4, value_p=0.45,
                      n_train=1500, n_val=250, n_test=250, data_seed=3), id="depth8-bushy"),
]


@pytest.mark.slow
@pytest.mark.parametrize("params", CONFIGS)
def test_generated_labels_lengths_and_layout(tmp_path, params):
    rows = _generated_rows(tmp_path, params)
    for split, n in zip(SPLITS, (params["n_train"], params["n_val"], params["n_test"]), strict=True):
        assert len(rows[split]) == n, split
    max_args = params.get("max_args", 10)
    deepest = 0
    for split, split_rows in rows.items():
        for source, label in split_rows:
            ref = evaluate_tokens(source)
            assert ref["value"] == label, (f"{split}: label {label} but the expression evaluates to "
                                           f"{ref['value']}: {source}")
            assert params["min_length"] < ref["length"] < params["max_length"], (ref["length"], source)
            # the root is depth 1 and a node at max_depth is a leaf: operators nest at most max_depth - 1 deep
            assert ref["op_depth"] <= params["max_depth"] - 1, source
            assert all(2 <= a <= max_args for a in ref["arities"]), (ref["arities"], source)
            assert evaluate_pairs(parse_pairs(source)) == label, source
            deepest = max(deepest, ref["op_depth"])
    if params["min_length"] == 0:  # a root drawn as a leaf is a one-digit expression; each digit once
        singles = {s for split in rows.values() for s, _ in split if len(s.split()) == 1}
        assert singles == set("0123456789"), singles
    if params["max_depth"] >= 6:
        assert deepest >= 4, f"max_depth={params['max_depth']} but no tree nests deeper than {deepest}"


def test_label_distribution_not_degenerate(tmp_path):
    rows = _generated_rows(tmp_path, dict(max_depth=6, min_length=5, max_length=100, n_train=600, n_val=50, n_test=50))
    labels = Counter(label for split in rows.values() for _, label in split)
    assert len(labels) > 5, labels
    assert max(labels.values()) < 0.5 * sum(labels.values()), labels
    ops = Counter(t for split in rows.values() for s, _ in split for t in s.split() if t.startswith("["))
    assert set(ops) == set(OPS), ops


def test_no_duplicate_sources_within_or_across_splits(tmp_path):
    # a small tree space (ten single digits are drawn 75% of the time) makes duplicates likely
    params = dict(max_depth=3, min_length=0, max_length=9, n_train=400, n_val=100, n_test=100)
    rows = _generated_rows(tmp_path, params)
    sources = [s for split in SPLITS for s, _ in rows[split]]
    dupes = [s for s, c in Counter(sources).items() if c > 1]
    assert not dupes, dupes[:5]
    per_split = {split: {s for s, _ in rows[split]} for split in SPLITS}
    assert not per_split["train"] & per_split["val"]
    assert not per_split["train"] & per_split["test"]
    assert not per_split["val"] & per_split["test"]


# ---------------------------------------------------------------- determinism

SMALL = dict(max_depth=5, min_length=5, max_length=60, n_train=150, n_val=30, n_test=30)


def test_same_seed_same_rows_other_seed_other_rows(tmp_path):
    a = _generated_rows(tmp_path / "a", {**SMALL, "data_seed": 7})
    b = _generated_rows(tmp_path / "b", {**SMALL, "data_seed": 7})
    c = _generated_rows(tmp_path / "c", {**SMALL, "data_seed": 8})
    assert a == b
    assert a != c
    assert {s for s, _ in a["train"]} != {s for s, _ in c["train"]}
    # and the files themselves are byte-identical
    for split in SPLITS:
        assert (tmp_path / "a" / f"basic_{split}.tsv").read_bytes() == \
               (tmp_path / "b" / f"basic_{split}.tsv").read_bytes()


_GEN_SCRIPT = """
import hashlib, json, sys, tempfile
from pathlib import Path
from attnbench.tasks.base import build_task
params = json.loads(sys.argv[1])
out = Path(tempfile.mkdtemp())
files = build_task("listops", params).write_generated(out)
print(json.dumps({s: hashlib.sha256(p.read_bytes()).hexdigest() for s, p in sorted(files.items())}))
"""


@pytest.mark.slow
def test_generation_independent_of_python_hash_seed():
    params = json.dumps({**SMALL, "data_seed": 11})
    procs = []
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        procs.append(subprocess.Popen([sys.executable, "-c", _GEN_SCRIPT, params], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]
    assert set(outs[0]) == set(SPLITS)


# ---------------------------------------------------------------- bounds that cannot be met

@pytest.mark.parametrize("params", [
    pytest.param(dict(min_length=10, max_length=11), id="no-length-strictly-between"),
    pytest.param(dict(min_length=0, max_length=4, max_depth=3), id="too-few-distinct-trees"),
])
def test_unsatisfiable_bounds_raise_value_error(tmp_path, params):
    task = build_task("listops", {**params, "n_train": 20, "n_val": 5, "n_test": 5})
    with pytest.raises(ValueError) as info:
        task.write_generated(tmp_path)
    msg = str(info.value)
    assert f"min_length={params['min_length']}" in msg and f"max_length={params['max_length']}" in msg, msg


# ---------------------------------------------------------------- TSV format

def test_tsv_round_trip(tmp_path):
    rows = [("( ( ( [MAX 4 ) 5 ) ] )", 5), ("( ( ( [MIN 0 ) 3 ) ] )", 0), ("7", 7)]
    path = tmp_path / "sub" / "x.tsv"
    write_tsv(path, rows)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "Source\tTarget"
    assert lines[1] == "( ( ( [MAX 4 ) 5 ) ] )\t5"
    assert list(read_tsv(path)) == rows


LRA_ROWS = [
    ("( ( ( [MAX 4 ) 5 ) ] )", 5, ["[MAX", "4", "5", "]"]),
    ("( ( ( ( [SM ( ( ( [MIN 3 ) 8 ) ] ) ) 9 ) 4 ) ] )", 6, ["[SM", "[MIN", "3", "8", "]", "9", "4", "]"]),
    ("( ( ( ( ( [MED 1 ) 2 ) 5 ) 8 ) ] )", 3, ["[MED", "1", "2", "5", "8", "]"]),
]


def _write_lra_folder(folder: Path, header: str = "Source\tTarget", skip: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(SPLITS):
        if split == skip:
            continue
        src, tgt, _ = LRA_ROWS[i]
        other_src, other_tgt, _ = LRA_ROWS[(i + 1) % 3]
        # written by hand as in the LRA release: header row, tab-separated, '\r\n' line ends (csv module)
        (folder / f"basic_{split}.tsv").write_text(f"{header}\r\n{src}\t{tgt}\r\n{other_src}\t{other_tgt}\r\n",
                                                    encoding="utf-8")


def test_reading_lra_release_files(tmp_path):
    folder = tmp_path / "listops-1000"
    _write_lra_folder(folder)
    data = build_task("listops", {"source": "files", "path": str(folder), "max_length": 12}).prepare(tmp_path / "work")
    assert data.seq_len == 12 and data.num_classes == 10 and data.vocab_size == len(VOCAB)
    for i, split in enumerate(SPLITS):
        expected = [LRA_ROWS[i], LRA_ROWS[(i + 1) % 3]]
        tokens, labels = data.splits[split]["tokens"], data.splits[split]["labels"]
        assert tokens.shape == (2, 12)
        assert labels.tolist() == [e[1] for e in expected]
        for row, (_, label, words) in zip(tokens.tolist(), expected, strict=True):
            assert [VOCAB[t] for t in row[:len(words)]] == words
            assert row[len(words):] == [PAD_ID] * (12 - len(words))
            assert evaluate_tokens(" ".join(words))["value"] == label


def test_generated_data_tokens_match_sources(tmp_path):
    params = dict(max_depth=4, min_length=3, max_length=40, n_train=60, n_val=20, n_test=20)
    task = build_task("listops", params)
    data = task.prepare(tmp_path)
    rows = {split: list(read_tsv(tmp_path / f"basic_{split}.tsv")) for split in SPLITS}
    for split in SPLITS:
        tokens = data.splits[split]["tokens"]
        assert tokens.shape == (len(rows[split]), 40)
        assert data.splits[split]["labels"].tolist() == [t for _, t in rows[split]]
        for row, (source, _) in zip(tokens.tolist(), rows[split], strict=True):
            words = [t for t in source.split() if t not in ("(", ")")]
            assert [VOCAB[t] for t in row[:len(words)]] == words
            assert all(t == PAD_ID for t in row[len(words):])
    assert PAD_ID not in [VOCAB.index(w) for w in (*OPS, "]", *"0123456789")]


def test_missing_file_names_it(tmp_path):
    folder = tmp_path / "lra"
    _write_lra_folder(folder, skip="test")
    with pytest.raises(DataError) as info:
        build_task("listops", {"source": "files", "path": str(folder)}).prepare(tmp_path / "work")
    assert str(folder / "basic_test.tsv") in str(info.value)


def test_bad_header_names_the_file(tmp_path):
    folder = tmp_path / "lra"
    _write_lra_folder(folder, header="source\ttarget")
    with pytest.raises(DataError) as info:
        build_task("listops", {"source": "files", "path": str(folder)}).prepare(tmp_path / "work")
    assert str(folder / "basic_train.tsv") in str(info.value)
    assert "Source" in str(info.value)


def test_files_source_without_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="path"):
        build_task("listops", {"source": "files"}).prepare(tmp_path)


# ---------------------------------------------------------------- the cached tensor file

def test_prepared_file_round_trip_and_key_check(tmp_path):
    from attnbench.tasks.base import load_prepared, save_prepared

    params = dict(max_depth=4, min_length=3, max_length=40, n_train=30, n_val=10, n_test=10)
    data = build_task("listops", params).prepare(tmp_path / "src")
    path = tmp_path / "dataset.pt"
    save_prepared(path, "listops", params, data)
    back = load_prepared(path, "listops", params)
    assert (back.seq_len, back.vocab_size, back.num_classes, back.pad_id, back.source) == \
           (data.seq_len, data.vocab_size, data.num_classes, data.pad_id, data.source)
    for split in SPLITS:
        assert torch.equal(back.splits[split]["tokens"], data.splits[split]["tokens"])
        assert torch.equal(back.splits[split]["labels"], data.splits[split]["labels"])
        assert back.splits[split]["tokens"].dtype == torch.int64
    with pytest.raises(DataError, match="other settings"):
        load_prepared(path, "listops", {**params, "n_train": 31})
    with pytest.raises(DataError) as info:
        load_prepared(tmp_path / "missing.pt", "listops", params)
    assert str(tmp_path / "missing.pt") in str(info.value)
    (tmp_path / "broken.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="unreadable"):
        load_prepared(tmp_path / "broken.pt", "listops", params)
