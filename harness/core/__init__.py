"""The bottom layer: the registry and config dataclasses (``registry``), atomic file writes (``io``),
where the pipeline keeps its files (``paths``), the run-config hash (``hashing``) and the files
that ship with attnbench (``resources``). Imports nothing of attnbench, and not torch."""
