"""The report: one Markdown/HTML writer (``writer``) and each section once: the runs (``runs``), LRA's
Table 1 (``lra``, ``lra_published``), distillation (``distillation``), the efficiency sweep
(``bench``); ``render`` puts them together."""
