"""``attnbench`` writing to a reader that went away (``attnbench compare --list | head``): no traceback, the
status a shell gives such a command (141: 128 + SIGPIPE)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ATTNBENCH = Path(sys.executable).parent / "attnbench"


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["compare", "--list"], ["list"]])
def test_a_closed_pipe_ends_quietly(argv):
    proc = subprocess.Popen([str(ATTNBENCH), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command writes a byte: importing torch alone takes longer
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
