"""Reading a user's file: one line that says why it cannot be read, never a traceback."""

from __future__ import annotations


def read_bytes(path: str, what: str, max_bytes: int | None = None) -> bytes:
    """The file's bytes; ValueError with a one-line reason when it cannot be read.

    `what` names the kind of file for the directory case ("a policy file"); a file of more
    than `max_bytes` is refused without reading all of it.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    except OSError as exc:
        raise ValueError(reason(exc, what)) from None
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"more than the {max_bytes:,} bytes allowed for {what}")
    return data


def reason(exc: OSError, what: str) -> str:
    """Why a file could not be opened, for a user."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return f"is a directory, not {what}"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)
