"""The efficiency sweep: its settings and cases (``settings``), one case built, stepped and measured
in a fresh process (``case``), a case timed through pytest-benchmark (``sweep``), and its files and
table (``files``)."""
