"""The report: one Markdown/HTML writer (``writer``) and each section once: the runs (``runs``, their
curves ``curves``), LRA's Table 1 (``lra``, ``lra_published``), distillation (``distillation``), the
efficiency sweep (``bench``, built from ``bench_cases``, ``bench_tables`` and
``bench_figures``); ``render`` puts them together. Every figure is laid out as it is saved (``layout``:
titles whole, legends beside the panels, accuracy axes fitted to the data). Runs that stopped early but
were tested count everywhere, marked (``marks``); a number out of its range is missing and said
(``measurements``)."""
