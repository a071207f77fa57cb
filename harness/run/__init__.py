"""Training one run: the encoder classifier (``model``), the run from its config to its record
(``train``: ``train_run``), the training settings (``train_config``), the trainer's state and step
(``trainer_steps``) and its loop (``trainer``), the optimiser (``optimiser``), precision and
compilation (``precision``), the data on the device (``batches``), the budget (``budget``),
distillation from a teacher run (``distill``), resume checkpoints (``checkpoint``) and the run's
record and curve (``record``)."""
