"""attnbench's harness, in layers whose imports point down only (pyproject.toml, [tool.importlinter]):

- ``cli``: the ``attnbench`` command;
- ``conformance`` (the checks every variant passes) and ``estimate`` (a config's expected wall time, the
  pipeline's progress lines);
- ``config``: the config's schema, validation, and the runs it asks for;
- ``bench`` (the efficiency sweep), ``compare`` (public implementations side by side),
  ``report`` (Markdown and HTML from the tables);
- ``run``: model, training loop, distillation, checkpoints, a run's record;
- ``results``: the record format, machine facts, aggregation;
- ``measure``: timing, peak memory, fresh processes, the GPU lease;
- below them the components, ``attnbench.variants`` and ``attnbench.tasks``;
- ``core``: registries and config dataclasses, atomic files, paths, hashing, package data.
"""
