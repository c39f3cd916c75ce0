"""Reading a user's file: one line that says why it cannot be read, never a traceback."""

from __future__ import annotations


def read_bytes(path: str, what: str) -> bytes:
    """The file's bytes; ValueError with a one-line reason when it cannot be read.

    `what` names the kind of file for the directory case ("a policy file").
    """
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ValueError(reason(exc, what)) from None


def reason(exc: OSError, what: str) -> str:
    """Why a file could not be opened, for a user."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return f"is a directory, not {what}"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)
