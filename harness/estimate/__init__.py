"""How long a config's pipeline takes on this machine, and how far a running pipeline has got.

- ``grid``: the whole pipeline's expected wall time (``estimate_pipeline``): Snakemake's start, the data
  to prepare, every training run (``run_times``), the efficiency sweep (``sweep_times``), aggregation and
  report, scheduled on the cores (``schedule``) as Snakemake runs them;
- ``run_times``: a run's steps, evaluations and test pass at the times of its shape, from earlier records of
  this machine (``history``) or from a short calibration here (``calibrate``: a few steps and an evaluation
  pass of the run's model on random tokens of its data's shape, ``data_shape``); ``costs``: what a job adds;
- ``text``: what ``attnbench estimate`` prints (and ``--json``); ``durations``: ``~6 min``, ``2:05``;
- ``pipeline_progress``: the plan Snakemake writes when it starts and the progress line (runs done of
  the invocation's, elapsed, ETA) that ``attnbench progress`` prints after each training job.

Nothing is imported here: ``attnbench progress`` imports ``pipeline_progress`` alone and stays free of torch.
"""
