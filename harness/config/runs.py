"""From a validated config to the runs it asks for, each spelled out in full.

A run is (task, variant, seed, method): the ``variant`` is the model's attention, the
``method`` how it is trained: ``labels`` (every variant in ``variants:``), ``distill``
(every variant in ``distill.students``, from the ``distill.teacher`` run of the same task and
seed) or ``spt`` (every variant in ``spt.variants``: fine-tuned on the labels from its ``pretrain`` run of
the same task and seed, which pretrains on the task's training inputs). ``resolve_run`` gives one run's
self-contained settings, with every default spelled out: what its record stores and hashes, and what its
job is given. A pretraining run is not one the report compares: ``planned_pretraining`` lists them.

This module is the one place of the config that knows about teachers: it resolves a student
(the teacher's model settings with fewer blocks), checks the ``distill:`` section against the
rest of the config, and reads the old form of it (a ``distilled`` entry in ``variants:``).
"""
from __future__ import annotations

import sys
from typing import Any

from attnbench.harness.config.schema import ConfigError
from attnbench.harness.config.seeds import first_seed, seed_list
from attnbench.harness.config.tuned_runs import read_selection, trial_keys, tuned_run, tuning_on
from attnbench.harness.core import paths
from attnbench.harness.core.hashing import config_hash
from attnbench.harness.core.registry import as_dict, build_dataclass
from attnbench.harness.results.records import RunKey
from attnbench.harness.run.distill import student_layer_count
from attnbench.harness.run.model import ModelConfig, resolve_zero_masking
from attnbench.harness.run.pretrain import objective
from attnbench.harness.run.train_config import TrainConfig
from attnbench.tasks import TASKS
from attnbench.tasks.base import build_task, data_key
from attnbench.variants import VARIANTS, build_attention

METHODS = ("labels", "distill", "spt", "pretrain")


#: between a task and one of its lengths in the name runs give it: ``listops@256``
LENGTH_SEP = "@"


def task_instances(config: dict) -> list[str]:
    """The tasks as runs name them: each configured task, or ``task@length`` for each of its ``lengths``
    (each one a task of its own in the grid and the tables)."""
    return [f"{task}{LENGTH_SEP}{length}" if length is not None else task
            for task, settings in config["tasks"].items() for length in (settings.get("lengths") or [None])]


def split_task(task: str) -> tuple[str, int | None]:
    """``listops@256`` -> ("listops", 256); ``listops`` -> ("listops", None)."""
    base, sep, length = task.partition(LENGTH_SEP)
    return base, int(length) if sep else None


def task_settings(config: dict, task: str) -> dict:
    """The config's section of a task as runs name it (one of its lengths: the task's section)."""
    return config["tasks"][split_task(task)[0]]


def task_kind(config: dict, task: str) -> str:
    """The registered task of a task as runs name it: its section's ``task`` (a named instance,
    ``ng20: {task: textcls}``), by default the section's own name (``listops``, ``listops@256``)."""
    base = split_task(task)[0]
    return str(config["tasks"][base].get("task") or base)


def missing_data(config: dict) -> dict[str, list[str]]:
    """Per task as runs name it, what source data it needs and cannot find (empty: found, or its data already
    prepared, which is then not checked): what planning warns of, and the optional tasks it leaves out."""
    out = {}
    for task in task_instances(config):
        kind, params = task_kind(config, task), task_data_params(config, task)
        prepared = paths.dataset_file(kind, data_key(kind, params)).exists()
        out[task] = [] if prepared else build_task(kind, params).missing_sources()
    return out


def planned_tasks(config: dict, missing: dict[str, list[str]] | None = None) -> tuple[list[str], list[str]]:
    """(the tasks the pipeline plans, the optional ones it leaves out because their data is missing); ``missing``:
    ``missing_data(config)``, where the caller has it."""
    missing = missing_data(config) if missing is None else missing
    left_out = [t for t, problems in missing.items() if problems and task_settings(config, t).get("optional")]
    return [t for t in missing if t not in left_out], left_out


def length_param(task: str) -> str | None:
    """The data setting that a registered task's ``lengths`` set (``Task.length_param``)."""
    return TASKS.get(task).cls.length_param


def length_settings(task: str, length: int) -> dict:
    """The data settings a registered task has at one of its ``lengths`` (``Task.length_settings``)."""
    return TASKS.get(task).cls.length_settings(length)


def task_data_params(config: dict, task: str) -> dict:
    """The task's data settings with every default spelled out; for one of its lengths (``task@length``),
    with the settings of that length (``length_settings``)."""
    base, length = split_task(task)
    kind = task_kind(config, task)
    data = dict(config["tasks"][base].get("data", {}))
    if length is not None:
        data.update(length_settings(kind, length))
    return as_dict(TASKS.make_config(kind, data))


def task_section(config: dict, task: str) -> dict:
    """A run config's ``task``: the registered task, its data settings and data key; for a named instance or
    one of its lengths also the name runs give it (``instance``), and for a length the ``length`` and the setting
    it sets (``length_param``). (A task named as registered at one length has no ``instance``: its runs' config
    hashes stay those they had before named instances.)"""
    length = split_task(task)[1]
    kind = task_kind(config, task)
    data = task_data_params(config, task)
    section: dict[str, Any] = {"name": kind, "data": data, "data_key": data_key(kind, data)}
    if task != kind:
        section["instance"] = task
    if length is not None:
        section.update(length=length, length_param=length_param(kind))
    return section


def variant_params(config: dict, task: str, variant: str) -> dict:
    """A variant's parameters as set for one task: its `variants:` entry (if any), overridden by
    the task's `per_variant.<variant>.params`."""
    per_variant = task_settings(config, task).get("per_variant", {}).get(variant, {})
    return {**config["variants"].get(variant, {}), **per_variant.get("params", {})}


def variant_entry(variant: str, params: dict) -> dict:
    """A run's ``variant``: its name and full parameters, and for a variant from outside the
    repository its ``source`` (``package.module:Class``), so that the run's job can load it."""
    entry = {"name": variant, "params": as_dict(VARIANTS.make_config(variant, params))}
    source = VARIANTS.source(variant)
    return {**entry, "source": source} if source else entry


def planned_runs(config: dict, tasks: list[str] | None = None) -> list[RunKey]:
    """Every run of the config (on ``tasks``, default all): each variant from labels, then each
    distilled student, then each self-pretrained variant fine-tuned, per task and seed (adaptive seeds: every
    seed a run may get, ``seed_list``); then, where the config tunes (``tune:``), every tuning trial."""
    tasks = task_instances(config) if tasks is None else tasks
    seeds = seed_list(config)
    final = ([RunKey(t, v, s, "labels") for t in tasks for v in config["variants"] for s in seeds]
             + [RunKey(t, v, s, "distill") for t in tasks for v in config["distill"]["students"] for s in seeds]
             + [RunKey(t, v, s, "spt") for t in tasks for v in config["spt"]["variants"] for s in seeds])
    return final + (trial_keys(config, final) if tuning_on(config) else [])


def planned_pretraining(config: dict, tasks: list[str] | None = None) -> list[RunKey]:
    """The pretraining run of each self-pretrained run the config plans (``spt.variants``), per task and seed."""
    tasks = task_instances(config) if tasks is None else tasks
    return [RunKey(t, v, s, "pretrain") for t in tasks for v in config["spt"]["variants"] for s in seed_list(config)]


def _labels_run(config: dict, task: str, variant: str, seed: int, params: dict) -> dict:
    per_task = task_settings(config, task)
    per_variant = per_task.get("per_variant", {}).get(variant, {})  # the most specific settings win
    model = build_dataclass(ModelConfig, {**config["model"], **per_task.get("model", {}),
                                          **per_variant.get("model", {})}, "model")
    model = resolve_zero_masking(model, task_kind(config, task))
    train = build_dataclass(TrainConfig, {**config["train"], **per_task.get("train", {}),
                                          **per_variant.get("train", {})}, "train")
    return {
        "task": task_section(config, task),
        "variant": variant_entry(variant, params),
        "model": as_dict(model),
        "train": as_dict(train),
        "method": {"name": "labels"},
        "seed": int(seed),
        "device": config["device"],
        "threads": config["threads"],
        "deterministic": config["deterministic"],
    }


def resolve_run(config: dict, task: str, variant: str, seed: int, method: str = "labels", trial: int | None = None,
                selection: dict | None = None) -> dict:
    """Everything one training run depends on, defaults spelled out; stored in its record.

    A distilled student (``method="distill"``) has its teacher's model settings with
    ``distill.student_layers`` blocks, the training settings its variant has on the task, and
    its attention's parameters from ``variants:`` / ``per_variant`` overridden by
    ``distill.students.<variant>``; ``method`` holds the teacher and the loss settings.

    Tuning (``tune:``): a ``trial`` is a tuning trial, its run trained with ``tune.train`` and the trial's point
    of the seeded design (point 0: the run's own settings); a final run given the ``selection`` (the trial
    selected on validation accuracy: ``{"trial", "point"}``, ``selected.json``) trains with its point. Either
    way ``tuning`` says so (``stage``, ``trial``, ``trials``, ``point``)."""
    if task not in task_instances(config):
        raise ConfigError(f"task {task!r} is not in the config; configured tasks: {', '.join(task_instances(config))}")
    if method not in METHODS:
        raise ConfigError(f"training method {method!r}; known methods: {', '.join(METHODS)}")
    run = _untuned_run(config, task, variant, seed, method)
    return run if trial is None and selection is None else tuned_run(config, run, trial, selection)


def _untuned_run(config: dict, task: str, variant: str, seed: int, method: str) -> dict:
    if method == "labels":
        if variant not in config["variants"]:
            raise ConfigError(f"variant {variant!r} is not in the config; configured variants: "
                              f"{', '.join(config['variants'])}")
        return _labels_run(config, task, variant, seed, variant_params(config, task, variant))
    if method in ("spt", "pretrain"):
        return _self_pretrained_run(config, task, variant, seed, method)
    distill = config["distill"]
    if variant not in distill["students"]:
        raise ConfigError(f"variant {variant!r} is not a distilled student in the config; "
                          f"distill.students: {', '.join(distill['students']) or 'none'}")
    teacher = resolve_run(config, task, distill["teacher"], seed)
    params = {**variant_params(config, task, variant), **distill["students"][variant]}
    run = _labels_run(config, task, variant, seed, params)
    layers = student_layer_count(distill["student_layers"], teacher["model"]["layers"])
    run["model"] = {**teacher["model"], "layers": layers}
    run["method"] = {"name": "distill", "teacher": distill["teacher"], "student_layers": layers,
                     "temperature": distill["temperature"], "alpha": distill["alpha"]}
    return run


def _self_pretrained_run(config: dict, task: str, variant: str, seed: int, method: str) -> dict:
    """A variant's pretraining run (``pretrain``: ``spt.train`` over the run's own training settings, the
    objective in ``method``) or its fine-tuning (``spt``: ``spt.finetune`` over them; ``method`` holds the
    pretraining's objective and training settings, so that a change to them fine-tunes again). Both have the
    model and attention parameters of the variant's run from labels."""
    spt = config["spt"]
    if variant not in spt["variants"]:
        raise ConfigError(f"variant {variant!r} is not self-pretrained in the config; "
                          f"spt.variants: {', '.join(spt['variants']) or 'none'}")
    run = _labels_run(config, task, variant, seed, variant_params(config, task, variant))
    pretrain_train = as_dict(build_dataclass(TrainConfig, {**run["train"], **spt["train"]}, "spt.train"))
    settings = objective(spt, task_kind(config, task))
    if method == "pretrain":
        return {**run, "train": pretrain_train, "method": {"name": "pretrain", **settings}}
    train = as_dict(build_dataclass(TrainConfig, {**run["train"], **spt["finetune"]}, "spt.finetune"))
    return {**run, "train": train, "method": {"name": "spt", "pretrain": {**settings, "train": pretrain_train}}}


def final_run(config: dict, key: RunKey) -> dict | None:
    """The resolved config of the run ``key``: a trial's, an untuned final run's, or a tuned final run's with its
    selection (None while none has been made)."""
    if key.trial is not None or not tuning_on(config):
        return resolve_run(config, *key)
    selection = read_selection(key)
    return None if selection is None else resolve_run(config, *key, selection=selection)


def run_hash(config: dict, key: RunKey) -> str | None:
    """The config hash a record of the run ``key`` (task, variant, seed, method, trial) has when it was trained
    with this config: what planning and aggregation compare a record's ``config_hash`` with. None for a tuned
    final run whose trial is not selected yet."""
    run = final_run(config, key)
    return None if run is None else config_hash(run)


def plan_hashes(config: dict, runs: list[RunKey] | None = None) -> dict[str, str]:
    """``{run_id: run_hash}`` of ``runs`` (by default every run of the config, trials included): an
    aggregation's plan. A tuned final run whose trial is not selected yet is left out."""
    keys = planned_runs(config) if runs is None else runs
    hashes = {key.run_id: run_hash(config, key) for key in keys}
    return {run_id: value for run_id, value in hashes.items() if value is not None}


def task_resources(config: dict, task: str, group: str) -> dict:
    """What one of ``task``'s jobs of rule ``group`` asks its scheduler for: ``resources.<group>``
    with ``tasks.<task>.resources.<group>`` over it."""
    own = (task_settings(config, task).get("resources") or {}).get(group) or {}
    return {**config["resources"][group], **own}


def check_runs(config: dict) -> list[str]:
    """Problems of the run grid that the schema cannot express: each task's data settings
    together, each run's micro-batches, each attention's parameters as its constructor checks
    them, and the ``distill:`` section against the variants and tasks."""
    problems = check_task_data(config) + check_micro_batches(config) + check_distill(config) + check_spt(config)
    return problems or check_attention_params(config)


def check_task_data(config: dict) -> list[str]:
    """Each configured task's data settings as its config class checks them together (what one
    field's bounds cannot say: min_length below max_length, fractions that leave a training
    split, a generator asked for more distinct examples than its settings can draw), so that no
    prepare job starts with settings it cannot satisfy. A task config class says its problems
    with a method ``problems(key)``, ``key`` a function from a field name to how the message
    names it; here the field's full key, e.g. 'tasks.listops.data.min_length'. A class without
    one has none."""
    problems: list[str] = []
    for task in task_instances(config):
        base, length = split_task(task)
        data = TASKS.make_config(task_kind(config, task), task_data_params(config, task))
        check = getattr(data, "problems", None)
        at = f" (at its length {length})" if length is not None else ""
        if callable(check):
            problems.extend(line + at for line in check(key=lambda name, base=base: f"'tasks.{base}.data.{name}'"))
    return problems


#: the length the parameter check builds each attention layer for (small: the check is of the
#: parameters' own constraints, such as LSH's even bucket count, not of memory)
CHECK_MAX_LEN = 16


def check_attention_params(config: dict) -> list[str]:
    """Build each run's attention layer once, small, so that what its constructor refuses (an odd
    LSH bucket count, say) is said before any job starts, naming the run."""
    problems, seen = [], set()
    for run_key in planned_runs(config):
        run = resolve_run(config, *run_key)
        variant, model = run["variant"], run["model"]
        key = (variant["name"], repr(sorted(variant["params"].items())), model["dim"], model["heads"])
        if key in seen:
            continue
        seen.add(key)
        try:
            build_attention(variant["name"], model["dim"], model["heads"], variant["params"], max_len=CHECK_MAX_LEN)
        except (ValueError, TypeError) as exc:
            problems.append(f"'variants.{variant['name']}' on task {run_key.task!r}: {exc}")
    return problems


def check_micro_batches(config: dict) -> list[str]:
    """``train.accumulate`` must divide ``train.batch_size`` in every (task, variant) run: the
    micro-batches are equal, so their mean loss is the batch's. One line per pair of values that does
    not fit, naming the runs that have it."""
    bad: dict[tuple[int, int], list[str]] = {}
    for task in task_instances(config):
        for variant in config["variants"]:
            train = resolve_run(config, task, variant, first_seed(config))["train"]
            if _split_unevenly(train):
                bad.setdefault((train["accumulate"], train["batch_size"]), []).append(f"{task}/{variant}")
    return [f"'train.accumulate' ({accumulate}) does not divide 'train.batch_size' ({batch_size}) in the runs "
            f"{', '.join(runs)}; the optimiser step's batch is split into equal micro-batches"
            for (accumulate, batch_size), runs in bad.items()]


def check_distill(config: dict) -> list[str]:
    """The ``distill:`` section against the variants and tasks."""
    distill = config["distill"]
    if not distill["students"]:
        return []
    teacher, problems = distill["teacher"], []
    if teacher not in config["variants"]:
        problems.append(f"'distill.teacher' is {teacher!r} but variant {teacher!r} is not in 'variants'; add "
                        f"`{teacher}: {{}}` there (each student is trained from the {teacher} run of the same task "
                        f"and seed) or name a configured one: {', '.join(config['variants'])}")
    elif distill["student_layers"]:
        layers = {task: resolve_run(config, task, teacher, first_seed(config))["model"]["layers"]
                  for task in task_instances(config)}
        shallow = {task: n for task, n in layers.items() if distill["student_layers"] > n}
        if shallow:
            fewest = min(shallow.values())
            problems.append(f"'distill.student_layers' is {distill['student_layers']}; the teachers of task(s) "
                            f"{', '.join(shallow)} have {'/'.join(map(str, sorted(set(shallow.values()))))} layers, "
                            f"so it must be <= {fewest} (0 = half the teacher's)")
    return problems


def check_spt(config: dict) -> list[str]:
    """The ``spt:`` section against the variants and the rest of the config."""
    spt = config["spt"]
    if not spt["variants"]:
        return []
    problems = [f"'spt.variants' names {name!r}, which is not in 'variants' (a self-pretrained run has its variant's "
                f"settings there); configured variants: {', '.join(config['variants'])}"
                for name in spt["variants"] if name not in config["variants"]]
    if spt["mask_token"] + spt["random_token"] > 1:
        problems.append(f"'spt.mask_token' ({spt['mask_token']}) + 'spt.random_token' ({spt['random_token']}) is "
                        "more than 1: they are shares of the chosen tokens")
    if tuning_on(config):
        problems.append("'spt' with 'tune': self-pretrained runs are not tuned yet; run them in a config without "
                        "'tune' (their training settings are their variant's, or spt.finetune's)")
    if problems:
        return problems
    for section, method in (("spt.train", "pretrain"), ("spt.finetune", "spt")):
        bad = sorted({f"{task}/{variant}" for task in task_instances(config) for variant in spt["variants"]
                      if _split_unevenly(resolve_run(config, task, variant, first_seed(config), method)["train"])})
        if bad:
            problems.append(f"'{section}': 'accumulate' does not divide 'batch_size' in the runs {', '.join(bad)}; "
                            "the optimiser step's batch is split into equal micro-batches")
    return problems


def _split_unevenly(train: dict) -> bool:
    return bool(train["batch_size"] % train["accumulate"])


def migrate(config: dict) -> dict:
    """Read the form of attnbench <= 0.1, where distillation was a variant: ``variants.distilled:
    {teacher, student_layers, temperature, alpha, attention, attention_params}`` becomes
    ``distill: {teacher, student_layers, temperature, alpha, students: {<attention>:
    <attention_params>}}`` (said on stderr); a student written ``name:`` with nothing after it
    gets the parameters of `variants:`. Returns ``config``, changed in place."""
    students = config["distill"].get("students") if isinstance(config.get("distill"), dict) else None
    if isinstance(students, dict):
        students.update({name: {} for name, value in students.items() if value is None})
    variants = config.get("variants")
    if not isinstance(variants, dict) or "distilled" not in variants or "distilled" in VARIANTS.names():
        return config
    old = variants.pop("distilled") or {}
    if not isinstance(old, dict) or "distill" in config:
        raise ConfigError.of(["'variants.distilled' is the old form of the 'distill' section; keep one of them "
                              "(see docs/running.md: Distillation)"])
    for task, settings in (config.get("tasks") or {}).items():
        if isinstance(settings, dict) and "distilled" in (settings.get("per_variant") or {}):
            raise ConfigError.of([f"'tasks.{task}.per_variant.distilled': distillation is no longer a variant; a "
                                  "student has its teacher's model settings and its attention variant's training "
                                  "settings (set those under per_variant.<attention>)"])
    new = {k: old[k] for k in ("teacher", "student_layers", "temperature", "alpha") if k in old}
    new["students"] = {old.get("attention", "full"): old.get("attention_params") or {}}
    config["distill"] = new
    print(f"attnbench: 'variants.distilled' is the old form; read as `distill: {new}` (runs named "
          f"distilled[<attention>]; see docs/running.md: Distillation)", file=sys.stderr)
    return config
