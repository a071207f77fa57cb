"""Training one run: the encoder classifier (``model``), the loop from labels (``train``),
distillation from a teacher run (``distill``), resume checkpoints (``checkpoint``) and the run's
record (``record``)."""
