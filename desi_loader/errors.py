"""Exceptions the library raises; the CLI turns them into one-line messages and exit codes."""
from __future__ import annotations


class LoaderError(Exception):
    """A problem the user can fix.

    Parameters
    ----------
    message : str
        What went wrong, naming the file, HDU, column, row or argument.
    hint : str, optional
        How to fix it (the command line prints it on a line of its own; the Python functions
        append it to the message).

    Attributes
    ----------
    exit_code : int
        The command line's exit code for this error (2 unless a subclass says otherwise).
    """

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def with_hint(exc: LoaderError) -> LoaderError:
    """The error with its hint in its message (the CLI prints the hint on a line of its own;
    a Python caller sees only the message)."""
    if exc.hint and "(hint: " not in str(exc):
        exc.args = (f"{exc} (hint: {exc.hint})",) + exc.args[1:]
    return exc


class UsageError(LoaderError):
    """Bad arguments, paths or configuration (exit code 2)."""


class SchemaError(LoaderError):
    """FITS headers that cannot be mapped to PostgreSQL, or that conflict between files (exit code 2)."""


class BadFileError(LoaderError):
    """A FITS file that cannot be read (exit code 2).

    Parameters
    ----------
    path : str
        The file.
    reason : str
        What is wrong with it (the HDU, column or rows where it applies).
    hint : str, optional
        How to fix it.
    """

    def __init__(self, path: str, reason: str, hint: str = "") -> None:
        super().__init__(f"{path}: {reason}", hint)
        self.path = path
        self.reason = reason

    @property
    def explained(self) -> str:
        """The reason with what to do about it, for a list of files that failed."""
        return f"{self.reason} ({self.hint})" if self.hint else self.reason


class QueryError(LoaderError):
    """SQL the server refused (a user's query, or a column or table that is not there), or no
    server to query (exit code 2)."""


class DatabaseError(LoaderError):
    """The database refused or failed: connection, permission, disk full (exit code 3)."""

    exit_code = 3


class LoadFailed(LoaderError):
    """Some files or tasks failed; the published tables were not changed (exit code 1)."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM from a batch scheduler, SIGHUP) reached the coordinator."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum           # the shell's convention: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP
