"""The bottom layer: the registry and config dataclasses (``registry``), atomic file writes (``io``),
where the pipeline keeps its files (``paths``), the run-config hash (``hashing``), the files
that ship with attnbench (``resources``), locks (``locks``), the compilers present (``toolchain``), stopping
with everything started on a signal (``signals``) and time limits inside a step (``watchdog``).
Imports nothing of attnbench above it, and not torch."""
