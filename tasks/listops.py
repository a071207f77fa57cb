"""ListOps (LRA): nested MIN/MAX/MED/SM expressions over digits, label = the value (0-9).

A seeded re-implementation of LRA's generator (``lra_benchmarks/data/listops.py``), with
the LRA release TSV format (``Source``/``Target`` header, fully parenthesised trees) as
its on-disk form: generated data is written as TSVs and read back through the same
reader that reads the real ``listops-1000/basic_{train,val,test}.tsv`` files.

Determinism: one ``random.Random(seed)`` drives everything, and de-duplication keeps the
first occurrence in generation order (a dict, not a set), so neither hash seeds nor set
ordering change the output.
"""
from __future__ import annotations

import csv
import random
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from attnbench.harness.core.registry import param
from attnbench.tasks.base import SPLITS, TASKS, DataError, PreparedData, Task, build_task, lra_release_hint, pad_batch

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
# fixed vocabulary: pad, unknown, operators, closing bracket, digits (LRA renames "]" to "X")
VOCAB = ("<pad>", "<unk>", *OPERATORS, END, *(str(d) for d in range(10)))
TOKEN_ID = {t: i for i, t in enumerate(VOCAB)}

#: a digit, or a pair (an operator and its first argument, a tree and its next argument, a tree and END)
Tree = int | str | tuple["Tree", "Tree"]


#: the most generated examples per split: a generated set is held in memory and written by one
#: prepare job (LRA's ListOps has 96,000 training examples); more is a typo, not a data set
MAX_EXAMPLES = 10_000_000
_COUNT_HELP = (f" (at most {MAX_EXAMPLES:,}: generated in memory by one job); generate: the three splits are "
               "distinct trees, so n_train + n_val + n_test cannot exceed the distinct trees the length and shape "
               "settings allow")
#: ``ListOpsConfig.problems`` counts the distinct trees exactly when every tree it keeps is shorter than
#: this (a count over longer trees costs more than a config check should; those are checked by their bounds)
COUNT_BELOW = 64


@dataclass(frozen=True)
class ListOpsConfig:
    """ListOps data: generated (LRA's specification) or read from LRA release TSVs."""

    source: Literal["generate", "files"] = param("generate", "generate with the seeded generator, or read LRA release "
                                                 "TSVs from `path`")
    path: str = param("", "folder with {prefix}_{train,val,test}.tsv (source: files), e.g. lra_release/listops-1000")
    prefix: str = param("basic", "file name prefix of the TSVs")
    n_train: int = param(96_000, "generated training examples" + _COUNT_HELP, minimum=1, maximum=MAX_EXAMPLES)
    n_val: int = param(2_000, "generated validation examples" + _COUNT_HELP, minimum=1, maximum=MAX_EXAMPLES)
    n_test: int = param(2_000, "generated test examples" + _COUNT_HELP, minimum=1, maximum=MAX_EXAMPLES)
    min_length: int = param(500, "keep trees with more tokens than this (strict, as LRA); generate: at most "
                            "max_length - 2, and below the longest tree max_depth and max_args allow", minimum=0)
    max_length: int = param(2_000, "keep trees with fewer tokens than this (strict, as LRA); also the padded length",
                            minimum=2)
    max_depth: int = param(10, "maximum nesting depth of the tree (the root is depth 1; a node at max_depth is a "
                           "digit, so 1 allows only the 10 single digits)", minimum=1)
    max_args: int = param(10, "maximum number of arguments of an operator (at least 2); with max_depth, it bounds "
                          "the longest tree (an operator is 2 tokens plus its arguments), which must exceed "
                          "min_length", minimum=2)
    value_p: float = param(0.25, "probability that a node below max_depth is an operator, below 1 (0: single digits "
                           "only; a node, even at max_depth, is a digit only when its draw exceeds value_p, so 1 "
                           "never ends a tree)", minimum=0.0, maximum=1.0)
    data_seed: int = param(0, "seed of the generator (the training seed does not change the data)")

    def problems(self, key: Callable[[str], str] = repr) -> list[str]:
        """Settings the generator cannot satisfy, one line each; ``key`` names a field in the
        message (the config check passes one giving its full key, e.g. 'tasks.listops.data.n_train').
        Each bound follows ``generate_tree`` and ``generate`` (see ``longest_tree`` and
        ``tree_counts``); only what no seed could draw is refused."""
        if self.source != "generate":
            return []
        if self.value_p >= 1:  # generate_tree makes a digit when r > value_p, with r = 1.0 from max_depth on
            return [f"{key('value_p')} is {self.value_p:g}; a node is a digit only when its draw (one in [0, 1), or "
                    "1 at max_depth) exceeds value_p, so with 1 every node is an operator and no tree ever ends; it "
                    "must be below 1"]
        lo, hi = self.min_length, self.max_length
        if lo > hi - 2:
            return [f"{key('min_length')} is {lo} but {key('max_length')} is {hi}; trees are kept when "
                    "min_length < length < max_length, so min_length must be at most max_length - 2"]
        shape = f"max_depth {self.max_depth}, max_args {self.max_args}, value_p {self.value_p:g}"
        longest = longest_tree(self, stop_above=lo)
        if longest <= lo:
            why = (f"{key('value_p')} is 0, so every tree is a single digit" if self.value_p <= 0 else
                   f"{key('max_depth')} is 1, so every tree is a single digit" if self.max_depth == 1 else
                   f"the longest tree {key('max_depth')} {self.max_depth} and {key('max_args')} {self.max_args} "
                   "allow (a node at max_depth is a digit; an operator node is 2 tokens plus its arguments) has "
                   f"{longest} tokens")
            return [f"{key('min_length')} is {lo} but {why}; trees are kept when length > min_length, so "
                    f"min_length must be below {longest} (or raise max_depth, max_args)"]
        wanted = self.n_train + self.n_val + self.n_test
        below = min(hi, COUNT_BELOW)
        if hi <= COUNT_BELOW or longest_tree(self, stop_above=COUNT_BELOW) < COUNT_BELOW:  # every kept tree counted
            distinct = sum(tree_counts(self, below, cap=wanted)[lo + 1:below])
            if not distinct:
                return [f"{key('min_length')} is {lo} and {key('max_length')} is {hi} but no tree drawn with {shape} "
                        f"has {lo} < length < {hi} (a digit is 1 token, an operator node 2 tokens plus 2 to max_args "
                        "arguments, so some lengths cannot occur); widen min_length / max_length"]
            if distinct < wanted:
                digits = " (single digits)" if longest_tree(self) == 1 else ""
                return [f"{key('n_train')} + {key('n_val')} + {key('n_test')} is {wanted} ({self.n_train} + "
                        f"{self.n_val} + {self.n_test}) but only {distinct} distinct trees{digits} have {lo} < length "
                        f"< {hi} with {shape}; the splits are distinct trees, so ask for at most {distinct} in all, "
                        "or widen min_length / max_length or raise max_depth, max_args"]
        return []


class _TooLong(Exception):
    pass


def generate_tree(rng: random.Random, cfg: ListOpsConfig, depth: int = 1,
                  budget: int | None = None) -> tuple[Tree, int]:
    """One random tree and its token count (operators, digits and closing brackets).

    Draw order follows LRA: leaf-or-operator, number of arguments, each argument, then
    the operator. Trees that exceed ``budget`` tokens are abandoned early (they would be
    rejected anyway), which keeps short-sequence generation fast.
    """
    r = rng.random() if depth < cfg.max_depth else 1.0
    if r > cfg.value_p:
        return rng.randrange(10), 1
    n_args = rng.randint(2, cfg.max_args)
    length = 2
    args = []
    for _ in range(n_args):
        sub, sub_len = generate_tree(rng, cfg, depth + 1, None if budget is None else budget - length)
        args.append(sub)
        length += sub_len
        if budget is not None and length > budget:
            raise _TooLong
    tree: Tree = (rng.choice(OPERATORS), args[0])
    for a in args[1:]:
        tree = (tree, a)
    return (tree, END), length


# The bounds below follow ``generate_tree``, with value_p below 1 (with 1 no node is ever a digit):
# a node at depth max_depth is a digit (1 token); one above it is an operator with probability
# value_p (``r > value_p`` makes a digit; with value_p 0, ``random()`` would have to return
# exactly 0.0), of 2 tokens (operator, closing bracket) plus 2 to max_args arguments one level
# deeper.

def longest_tree(cfg: ListOpsConfig, stop_above: int | None = None) -> int:
    """Tokens of the longest tree ``generate_tree`` can draw with ``cfg``'s shape settings; once
    the length passes ``stop_above`` it stops growing it (max_depth may be large)."""
    length = 1
    if cfg.value_p > 0:
        for _ in range(cfg.max_depth - 1):
            length = 2 + cfg.max_args * length
            if stop_above is not None and length > stop_above:
                break
    return length


def tree_counts(cfg: ListOpsConfig, below: int, cap: int) -> list[int]:
    """How many distinct trees ``generate_tree`` can draw with ``cfg``'s shape settings, per token
    count 0 .. ``below - 1``, each count capped at ``cap`` (at most 2**26, so int64 sums stay
    exact). Distinct trees print distinctly, and with 0 < value_p < 1 each one has a positive
    chance (value_p 0: digits only). Trees of more than ``below`` levels have ``below`` tokens
    or more, so at most ``below`` levels are counted."""
    cap = min(cap, 2 ** 26)
    leaf = np.zeros(below, dtype=np.int64)
    leaf[1:2] = min(10, cap)  # the 10 digits
    if cfg.value_p <= 0 or cfg.max_depth == 1:
        return leaf.tolist()
    counts = leaf  # the trees of a node at the deepest level counted
    for _ in range(min(cfg.max_depth, below) - 1):  # one level up: a digit, or an operator of 2..max_args
        power, args = counts, np.zeros(below, dtype=np.int64)
        for _n_args in range(2, cfg.max_args + 1):
            power = np.minimum(np.convolve(power, counts)[:below], cap)
            if not power.any():  # n_args arguments are at least n_args tokens
                break
            args = np.minimum(args + power, cap)
        up = np.zeros(below, dtype=np.int64)
        up[2:] = np.minimum(len(OPERATORS) * args[:-2], cap)
        counts = np.minimum(up + leaf, cap)
    return counts.tolist()


def to_string(tree: Tree) -> str:
    """LRA's printed form: every pair wrapped in parentheses, e.g. ``( ( ( [MAX 4 ) 5 ) ] )``."""
    if isinstance(tree, tuple):
        return f"( {to_string(tree[0])} {to_string(tree[1])} )"
    return str(tree)


def apply_op(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        return int(statistics.median(args))  # as int(np.median): mean of the middle two, truncated
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown ListOps operator {op!r}")


def evaluate_tree(tree: Tree) -> int:
    """Value of a pair-nested tree (the generator's own evaluator)."""

    # a digit, an operator or END, or an open (operator, arguments so far) pair
    def walk(t: Tree) -> Any:
        if not isinstance(t, tuple):
            return t
        left, right = walk(t[0]), walk(t[1])
        if left in OPERATORS:
            return (left, [right])
        if right == END:
            return apply_op(left[0], left[1])
        return (left[0], left[1] + [right])

    return cast(int, walk(tree))


def generate(n: int, rng: random.Random, cfg: ListOpsConfig, seen: dict[str, int]) -> list[tuple[str, int]]:
    """``n`` new distinct (source, target) rows with min_length < length < max_length."""
    rows: list[tuple[str, int]] = []
    attempts, max_attempts = 0, 200 * n + 10_000
    while len(rows) < n:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(
                f"ListOps: only {len(seen)} distinct trees after {attempts} draws with min_length="
                f"{cfg.min_length}, max_length={cfg.max_length}, max_depth={cfg.max_depth}; "
                "widen the length bounds or ask for fewer examples")
        try:
            tree, length = generate_tree(rng, cfg, budget=cfg.max_length)
        except _TooLong:
            continue
        if not cfg.min_length < length < cfg.max_length:
            continue
        text = to_string(tree)
        if text in seen:
            continue
        seen[text] = value = evaluate_tree(tree)
        rows.append((text, value))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["Source", "Target"])
        w.writerows(rows)


HOW_TO_GET = lra_release_hint("lra_release/listops-1000/", "tasks.listops.data.path") + ", or use source: generate"


def read_tsv(path: Path) -> Iterator[tuple[str, int]]:
    """Rows of an LRA ListOps TSV (header ``Source<TAB>Target``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"ListOps file {path} is missing; {HOW_TO_GET}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header != ["Source", "Target"]:
            raise DataError(f"{path}: expected the header 'Source<TAB>Target', found {header!r}")
        for lineno, row in enumerate(reader, start=2):
            if len(row) != 2:
                raise DataError(f"{path}:{lineno}: expected 2 tab-separated columns, found {len(row)}")
            yield row[0], int(row[1])


def tokenize(source: str) -> list[int]:
    """LRA's preprocessing: drop parentheses; operators, ``]`` and digits become tokens."""
    return [TOKEN_ID.get(t, TOKEN_ID["<unk>"]) for t in source.split() if t not in ("(", ")")]


@TASKS.register("listops", ListOpsConfig)
class ListOps(Task):
    """ListOps: hierarchical MIN/MAX/MED/SM expressions, 10 classes (LRA)."""

    cfg: ListOpsConfig
    length_param = "max_length"
    spt_mask_rate = 0.10  # Amos et al. 2024's rate for ListOps

    @classmethod
    def length_settings(cls, length: int) -> dict[str, Any]:
        """At ``length``, the trees between half of it and it (min_length length // 2, max_length length): the
        sequences are about that long, not only bounded by it (LRA's ListOps: 500 < length < 2000)."""
        return {"max_length": length, "min_length": length // 2}

    @classmethod
    def tiny_params(cls, folder: Path) -> dict[str, Any]:
        """32 / 8 / 8 short generated trees written as release TSVs
        (``listops-1000/basic_{train,val,test}.tsv``) and read as files."""
        shape = {"min_length": 0, "max_length": 32, "max_depth": 3}
        folder = Path(folder) / "listops-1000"
        task = build_task(cls.registered_name, {"n_train": 32, "n_val": 8, "n_test": 8, **shape})
        assert isinstance(task, ListOps)  # registered_name names this class (or a subclass registered anew)
        task.write_generated(folder)
        return {"source": "files", "path": str(folder), "max_length": shape["max_length"]}

    def split_files(self, folder: Path) -> dict[str, Path]:
        return {s: Path(folder) / f"{self.cfg.prefix}_{s}.tsv" for s in SPLITS}

    def write_generated(self, folder: Path) -> dict[str, Path]:
        """Generate the three splits and write them as LRA TSVs into ``folder``."""
        cfg = self.cfg
        rng = random.Random(cfg.data_seed)
        seen: dict[str, int] = {}
        files = self.split_files(folder)
        for split, n in zip(SPLITS, (cfg.n_train, cfg.n_val, cfg.n_test), strict=True):
            write_tsv(files[split], generate(n, rng, cfg, seen))
        return files

    def missing_sources(self) -> list[str]:
        if self.cfg.source == "generate":
            return []
        if not self.cfg.path:
            return [f"listops source 'files' needs `path`; {HOW_TO_GET}"]
        missing = [str(p) for p in self.split_files(Path(self.cfg.path)).values() if not p.exists()]
        return [f"{', '.join(missing)}: {HOW_TO_GET}"] if missing else []

    def prepare(self, workdir: Path) -> PreparedData:
        if self.cfg.source == "generate":
            files = self.write_generated(Path(workdir))
            source = f"generated (seed {self.cfg.data_seed}), LRA specification"
        else:
            if not self.cfg.path:
                raise DataError("listops source 'files' needs `path`: the folder holding "
                                f"{self.cfg.prefix}_{{train,val,test}}.tsv")
            files = self.split_files(Path(self.cfg.path))
            source = f"LRA release files in {self.cfg.path}"
        seq_len = self.cfg.max_length
        splits = {}
        for split, path in files.items():
            rows = list(read_tsv(path))
            seqs = [tokenize(s) for s, _ in rows]
            longest = max((len(q) for q in seqs), default=0)
            if longest > seq_len:  # a cut expression no longer matches its label
                n_long = sum(len(q) > seq_len for q in seqs)
                raise DataError(f"{path}: {n_long} rows have more than max_length={seq_len} tokens "
                                f"(longest {longest}); raise tasks.listops.data.max_length")
            splits[split] = {"tokens": pad_batch(seqs, seq_len),
                             "labels": torch.tensor([t for _, t in rows], dtype=torch.int64)}
        return PreparedData(splits=splits, seq_len=seq_len, vocab_size=len(VOCAB), num_classes=10,
                            label_names=[str(d) for d in range(10)], source=source)
