"""The small set of typed errors both front ends render.

The CLI prints ``str(err)`` as one line on stderr (plus the hint) and exits with ``exit_code``;
the TUI shows the same text in a toast or modal. Messages never contain secrets.
"""

from __future__ import annotations


class DcbError(Exception):
    """Base of every error dcb expects and reports to the user."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(DcbError):
    """Bad configuration: unknown key, wrong type, unreadable file."""

    exit_code = 2


class UsageError(DcbError):
    """Bad command-line input."""

    exit_code = 2


class DockerUnavailable(DcbError):
    """The Docker engine cannot be reached."""

    exit_code = 3


class NotFound(DcbError):
    """A configured container, volume, set or database does not exist."""

    exit_code = 4


class LockedError(DcbError):
    """Another run holds the backup directory's lock."""

    exit_code = 5


class Cancelled(DcbError):
    """The user cancelled the operation."""

    exit_code = 130
