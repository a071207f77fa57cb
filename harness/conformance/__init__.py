"""Whether an attention class keeps the interface every variant keeps: the registry-wide checks
(``checks``), run by the test suite on every registered variant and by ``attnbench check-variant``
on a user's class, and the template a new variant starts from (``template``)."""
