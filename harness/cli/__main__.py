"""``python -m attnbench.harness.cli``: the ``attnbench`` command."""
import sys

from attnbench.harness.cli import main

sys.exit(main())
