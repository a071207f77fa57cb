"""The base class of the errors a user can cause and fix: a bad config, missing or corrupt data, a
busy lock, an unknown name. ``attnbench`` prints such an error as one line and exits 2; any other
exception is a bug and keeps its traceback."""
from __future__ import annotations


class UserError(Exception):
    """An error whose message says what is wrong and how to fix it; no traceback is needed."""


class UsageError(UserError):
    """Command-line arguments that do not fit together (or with the config)."""


#: OS errors about a path the user gave (a missing file, a folder where a file was expected, no
#: permission): their message names the path, which is all the user needs
PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class WriteError(UserError, OSError):
    """A file that could not be written for a reason outside the program: a full disk or quota, a read-only
    file system, an I/O error. One line naming the file and the cause (and, for want of space, the space
    free on its file system); ``errno`` is the cause's (``errno.ENOSPC`` for a full disk)."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]"
        return str(self.strerror)
