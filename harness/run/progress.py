"""What a training run prints while it trains: a progress bar on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
from typing import NoReturn

from tqdm import tqdm


class Log:
    """A progress bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, desc: str, bar: bool | None = None) -> None:
        self.bar: tqdm[NoReturn] | None = None
        if bar if bar is not None else sys.stderr.isatty():
            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True)

    def step(self, n: int = 1, **postfix: str) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def total(self, steps: int) -> None:
        """The steps the run plans, known once its budget is (a FLOPs budget's after the count)."""
        if self.bar is not None:
            self.bar.total = steps
            self.bar.refresh()

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
