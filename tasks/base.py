"""The task interface, the task registry, and the cached tensor file every task prepares."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from attnbench.harness.core.errors import UserError
from attnbench.harness.core.io import atomic_torch_save
from attnbench.harness.core.registry import Registry, settings_of

TASKS = Registry("task", "attnbench.tasks")

#: bump when the layout of prepared tensor files changes; part of every data key
FORMAT_VERSION = 1
PAD_ID = 0
SPLITS = ("train", "val", "test")


#: LRA's data archive (about 8 GB; unpacks to about 19 GB): ListOps, Retrieval, Pathfinder, Path-X
LRA_RELEASE_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"


def lra_release_hint(folder: str, config_key: str, point_at: str = "") -> str:
    """How to get one folder of the LRA release: the download and unpack commands, where the
    folder lands, and the config key to set (to ``point_at``, by default that folder)."""
    return (f"download and unpack the LRA release (about 8 GB): `wget {LRA_RELEASE_URL} && tar xzf lra_release.gz`; "
            f"it unpacks {folder}; set {config_key} to {point_at or 'that folder'}")


class DataError(UserError, RuntimeError):
    """Missing or corrupt data; the message names the file and how to obtain it."""


@dataclass
class PreparedData:
    """What a task's preparation produces: integer token tensors and labels per split."""

    # split -> {"tokens": (n, L) or paired (n, 2, L) int, "labels": (n,) long}
    splits: dict[str, dict[str, torch.Tensor]]
    seq_len: int
    vocab_size: int
    num_classes: int
    label_names: list[str] = field(default_factory=list)
    source: str = ""  # human-readable origin of the data, for the record
    pad_id: int = PAD_ID
    paired: bool = False  # two documents per example (tokens (n, 2, L)): a two-tower model

    def meta(self) -> dict[str, Any]:
        """The data set's description without its tensors (``dataclasses.asdict`` would deep-copy every
        split first: Path-X's whole data set, once more, in host memory)."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "splits"}
        out["sizes"] = {s: int(t["labels"].shape[0]) for s, t in self.splits.items()}
        return out


class Task:
    """A registered task. Subclasses set the config dataclass and implement ``prepare``."""

    #: raised when the task's preparation changes what the same settings produce, so that cached
    #: data sets (named by ``data_key``) are prepared again; version 1 adds nothing to the key
    data_version = 1
    #: the token of a raw value 0 (pixel tasks: intensity 0 is token 1), which LRA masks out like padding
    #: (``model.mask_zero_tokens``); None where the task has no such value
    zero_token: int | None = None
    #: the fraction of an input's tokens self-pretraining (``spt:``) chooses to predict where ``spt.mask_rate`` is
    #: unset: Amos, Berant & Gupta (ICLR 2024) used 15% on Text and Retrieval, 10% on ListOps, 50% on the pixel tasks
    spt_mask_rate: float = 0.15
    #: the data setting that sets the task's sequence length, which ``tasks.<task>.lengths`` in a pipeline
    #: config varies (ListOps' max_length, a text task's seq_len, Pathfinder's resolution); None where the
    #: length is fixed by the data
    length_param: str | None = None
    #: the name the task is registered under (its first), set by ``TASKS.register`` on each registered class
    registered_name: ClassVar[str]

    @classmethod
    def length_settings(cls, length: int) -> dict[str, Any]:
        """The data settings that put the task at ``length`` (``tasks.<task>.lengths``): its ``length_param``;
        a task whose examples are shorter than their bound sets more (ListOps: a band below it)."""
        assert cls.length_param is not None  # asked only of tasks with a length (config.protocol checks)
        return {cls.length_param: length}

    def __init__(self, cfg: Any) -> None:
        #: the task's settings: an instance of the config dataclass it is registered with (subclasses
        #: declare which, e.g. ``cfg: ListOpsConfig``)
        self.cfg = cfg

    @property
    def name(self) -> str:
        return self.registered_name

    def missing_sources(self) -> list[str]:
        """The source files this task's settings need and cannot find, each named with how to
        get it. Checked when the pipeline is planned, so a dry run says what to download;
        empty for generated data and for hub ids (those are checked when prepared)."""
        return []

    def prepare(self, workdir: Path) -> PreparedData:
        """Build every split (generating or reading the source); ``workdir`` may hold
        intermediate files, e.g. the TSVs a generator writes."""
        raise NotImplementedError

    @classmethod
    def tiny_params(cls, folder: Path) -> dict[str, Any]:
        """Data settings (``build_task`` params) of a tiny data set that ``prepare`` builds offline
        in well under a second: what the registry-wide test (``tests/tasks/test_tasks.py``) prepares
        and checks, so a new task file is tested once it implements this.

        A task that reads files writes a few small ones into ``folder`` (an empty folder the
        caller made) in the real source's layout, and returns settings that read them, so that
        without ``folder`` its ``missing_sources`` names it; a task with no file source returns
        settings that generate a small data set and writes nothing. Every split must come out
        non-empty, with at least two classes in train. JSON values only (lists, not tuples)."""
        name = getattr(cls, "registered_name", cls.__name__)
        raise NotImplementedError(
            f"task {name!r} ({cls.__module__}.{cls.__qualname__}) does not implement the classmethod "
            "tiny_params(folder) -> dict: write a few small source files into `folder` (none for generated "
            "data) and return the data settings that prepare a tiny data set from them offline; "
            "see Task.tiny_params in attnbench/tasks/base.py")


#: words of the texts that tasks write for ``Task.tiny_params``: non-ASCII (several bytes each),
#: a quote and a comma (CSV quoting; ordinary characters in a TSV)
TINY_WORDS = ("good", "bad", "plot", "actor", "scene", "café", "naïve", "☕", 'said "no",', "end")


def tiny_texts(n: int, seed: int = 0, max_words: int = 12) -> list[str]:
    """``n`` seeded pseudo-sentences of 1 to ``max_words`` words: the text of the tiny source
    files that tasks write in ``Task.tiny_params``."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(TINY_WORDS) for _ in range(rng.randint(1, max_words))) for _ in range(n)]


def build_task(name: str, params: dict[str, Any] | None = None) -> Task:
    entry = TASKS.get(name)
    task: Task = entry.cls(TASKS.make_config(name, params))
    return task


def data_key(task: str, params: dict[str, Any]) -> str:
    """Short hash naming the cached tensor file of a task's data settings."""
    cfg = settings_of(TASKS.make_config(task, params))
    named = {"task": task, "params": cfg, "format": FORMAT_VERSION}
    version = TASKS.get(task).cls.data_version
    if version != 1:
        named["version"] = version
    blob = json.dumps(named, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def pad_batch(seqs: list[list[int]], seq_len: int, pad_id: int = PAD_ID) -> torch.Tensor:
    """Right-pad token lists into an (n, seq_len) tensor; a longer sequence is an error."""
    out = torch.full((len(seqs), seq_len), pad_id, dtype=torch.int64)
    for i, s in enumerate(seqs):
        if len(s) > seq_len:
            raise ValueError(f"sequence {i} has {len(s)} tokens, more than seq_len={seq_len}")
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.int64)
    return out


def _examples(indices: torch.Tensor) -> str:
    """"3 examples, the first at index 17" for the positions ``indices`` (1-D, ascending, counted from 0)."""
    n = int(indices.numel())
    return f"{n:,} example{'s' if n != 1 else ''}, the first at index {int(indices[0])}"


def _values(values: list[int]) -> str:
    return ", ".join(map(str, values[:10])) + (f" and {len(values) - 10} more" if len(values) > 10 else "")


def data_problem(data: PreparedData, task: str, token_ids: bool = True) -> str:
    """What makes ``data`` unusable for training, in one line naming the data, the split, the value and
    what is expected; empty when it is fine. Every task's data passes here when it is saved and loaded
    (``save_prepared``, ``load_prepared``): every split there and non-empty; tokens (n, seq_len) (paired:
    (n, 2, seq_len)) and, with ``token_ids``, within the vocabulary (a pass over every token: skipped on
    loading data that was checked when saved); labels 0..num_classes - 1 in every split; no class of val
    or test missing from train (a model cannot learn it); at least two classes in train (one alone is
    learnt trivially, to 100%)."""
    where = f"{task} data ({data.source or 'no source named'})"
    missing = [s for s in SPLITS if s not in data.splits]
    if missing:
        return f"{where} has no {', '.join(missing)} split (found {', '.join(data.splits) or 'none'})"
    if data.num_classes < 2:
        return f"{where} has num_classes {data.num_classes}; a classification task needs at least 2"
    for split in SPLITS:
        tokens, labels = data.splits[split]["tokens"], data.splits[split]["labels"]
        n = int(labels.shape[0]) if labels.dim() else 0
        if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            return f"{where}: {split} labels are {labels.dtype} of shape {tuple(labels.shape)}, not (n,) integers"
        if n == 0:
            return f"{where}: the {split} split is empty; training evaluates on every split"
        want = (n, 2, data.seq_len) if data.paired else (n, data.seq_len)
        if tuple(tokens.shape) != want:
            return (f"{where}: {split} tokens have shape {tuple(tokens.shape)}, expected {want} "
                    f"({n:,} examples of seq_len {data.seq_len:,}{', paired' if data.paired else ''}); "
                    "every split's examples must be of one length")
        low, high = (int(v) for v in torch.aminmax(tokens)) if token_ids and tokens.numel() else (0, 0)
        if low < 0 or high >= data.vocab_size:
            return (f"{where}: {split} token ids span {low}..{high}, outside the vocabulary 0.."
                    f"{data.vocab_size - 1} (vocab_size {data.vocab_size})")
        bad = ((labels < 0) | (labels >= data.num_classes)).nonzero().flatten()
        if bad.numel():
            values = sorted({int(v) for v in labels[bad].tolist()})
            which = f"label {values[0]} ({_examples(bad)}) is" if len(values) == 1 else \
                f"labels {_values(values)} ({_examples(bad)}) are"
            return (f"{where}: {split} {which} outside 0..{data.num_classes - 1} for the task's {data.num_classes} "
                    "classes; fix the labels of the source")
    train = data.splits["train"]["labels"]
    counts = torch.bincount(train, minlength=data.num_classes)
    in_train = set(counts.nonzero().flatten().tolist())
    if len(in_train) < 2:
        return (f"{where}: the train split has a single class (label {_values(sorted(in_train))}) in its "
                f"{int(train.numel()):,} examples; a model would learn to always say it (100% accuracy on it): "
                "a classification data set needs at least two classes in train")
    for split in ("val", "test"):
        labels = data.splits[split]["labels"]
        present: torch.Tensor = labels.unique()  # type: ignore[no-untyped-call]  # torch leaves Tensor.unique untyped
        unseen = sorted(set(present.tolist()) - in_train)
        if unseen:
            where_first = torch.isin(labels, torch.tensor(unseen)).nonzero().flatten()
            return (f"{where}: {split} has class(es) {_values(unseen)} ({_examples(where_first)}) that train "
                    f"has none of ({int(train.numel()):,} train examples); a model cannot learn a class it never "
                    "sees: use more training data or a split with every class in train")
    return ""


def check_prepared(data: PreparedData, task: str) -> None:
    """Raise a DataError (one line, exit 2 from ``attnbench``) when ``data_problem`` finds a problem."""
    problem = data_problem(data, task)
    if problem:
        raise DataError(problem)


def save_prepared(path: Path, task: str, params: dict[str, Any], data: PreparedData) -> None:
    """Check ``data`` (``check_prepared``: nothing is written for data that cannot be right) and write it."""
    check_prepared(data, task)
    small = torch.int16 if data.vocab_size < 2**15 else torch.int32
    payload = {
        "format": FORMAT_VERSION,
        "task": task,
        "key": data_key(task, params),
        "params": settings_of(TASKS.make_config(task, params)),
        "meta": data.meta(),
        "splits": {s: {"tokens": t["tokens"].to(small), "labels": t["labels"].to(torch.int64)}
                   for s, t in data.splits.items()},
    }
    atomic_torch_save(payload, path)


def load_prepared(path: Path, task: str, params: dict[str, Any]) -> PreparedData:
    path = Path(path)
    if not path.exists():
        raise DataError(f"prepared data {path} is missing; create it with "
                        f"`attnbench prepare --task {task} --out {path}` or run snakemake")
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as exc:  # truncated or not a torch file
        raise DataError(f"prepared data {path} is unreadable ({exc}); delete it and prepare again") from exc
    want = data_key(task, params)
    if payload.get("format") != FORMAT_VERSION or payload.get("key") != want:
        raise DataError(f"prepared data {path} was made with other settings (key {payload.get('key')}, "
                        f"format {payload.get('format')}; expected key {want}, format {FORMAT_VERSION}); "
                        "delete it and prepare again")
    meta = dict(payload["meta"])
    meta.pop("sizes", None)
    splits = {s: {"tokens": t["tokens"].long(), "labels": t["labels"]} for s, t in payload["splits"].items()}
    data = PreparedData(splits=splits, **meta)
    problem = data_problem(data, task, token_ids=False)  # a file prepared before these checks
    if problem:
        raise DataError(f"prepared data {path}: {problem}; delete it and prepare again once the source is fixed")
    return data
