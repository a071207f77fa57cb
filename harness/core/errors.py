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

