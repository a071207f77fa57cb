"""Named task instances: ``tasks: {ng20: {task: textcls, data: {...}}}``.

A task section's key is the name its runs, folders, records and report carry; its ``task`` says which
registered task it is an instance of (by default the key itself, so ``listops: {...}`` stays valid). Two
instances of one task (AG News and 20 Newsgroups, both ``textcls``) sit in one config, each with its own
data. ``name_sections`` checks the names and kinds, gives the schema a property for each named instance (the
schema of its registered task's section, so every error below it names ``tasks.ng20...``), and fills in each
section's ``task`` once the config is valid (``fill_kinds``).
"""
from __future__ import annotations

import copy
import re

from attnbench.harness.config.runs import LENGTH_SEP
from attnbench.tasks import TASKS

#: a task name: a letter, then letters, digits, '_', '.', '-' (it names folders and wildcards; no LENGTH_SEP)
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def name_sections(config: dict, schema: dict) -> list[str]:
    """Check each ``tasks:`` key and its ``task`` against the registered tasks, and add to ``schema`` (the
    complete config schema, changed in place) a property for each named instance. One line per problem."""
    tasks, problems = config.get("tasks"), []
    if not isinstance(tasks, dict):
        return []  # the schema says what it should be
    known = TASKS.names()
    entries = schema["properties"]["tasks"]["properties"]
    for name, section in tasks.items():
        given = section.get("task") if isinstance(section, dict) else None
        kind = name if given is None else given
        if not isinstance(name, str) or not NAME.fullmatch(name):
            problems.append(f"'tasks.{name}': a task name is a letter followed by letters, digits, '_', '.' or '-' "
                            f"(it names folders; {LENGTH_SEP!r} is what `lengths` adds)")
        elif not isinstance(kind, str) or kind not in known:
            where = f"'tasks.{name}.task' is {kind!r}," if given is not None else f"'tasks.{name}': {name!r} is"
            problems.append(f"{where} not a registered task; known tasks: {', '.join(known)}"
                            + ("" if given is not None else f". To name your own instance of one, say which: "
                               f"`{name}: {{task: textcls, data: {{...}}}}`"))
        elif name in known and kind != name:
            problems.append(f"'tasks.{name}.task' is {kind!r}, but {name!r} is itself a registered task; give this "
                            f"instance of {kind} another name")
        elif name not in known:
            entry = copy.deepcopy(entries[kind])
            entry["description"] = f"{name}: an instance of task {kind} ({entry.get('description', '')})"
            entries[name] = entry
    return problems


def fill_kinds(config: dict) -> None:
    """Each task section of a valid config gets its ``task`` (the key, where it was not given)."""
    for name, section in config["tasks"].items():
        section.setdefault("task", name)
