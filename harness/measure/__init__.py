"""Measuring honestly: wall time synchronised with the device (``timing``), peak memory on CPU and
CUDA in one implementation (``memory``), a measurement in a fresh process with a time limit and a
memory cap (``fresh_process``), and the per-job GPU lease of a workstation (``gpu_lease``)."""
