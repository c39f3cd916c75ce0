"""One error hierarchy: a WardtapError is a user's mistake or bad input, shown as one line."""


class WardtapError(Exception):
    """Something the user can fix; the CLI prints it as one line and exits non-zero."""

    exit_code = 2


class CaptureError(WardtapError):
    """A capture file that cannot be read (fully)."""

    def __init__(self, path: str, message: str, offset: int | None = None) -> None:
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{path}{where}: {message}")
        self.path = path
        self.offset = offset


class PolicyError(WardtapError):
    """A policy file that is not valid; nothing of it is applied."""

    def __init__(self, path: str, message: str, line: int | None = None,
                 field: str | None = None) -> None:
        loc = f":{line}" if line else ""
        what = f" [{field}]" if field else ""
        super().__init__(f"{path}{loc}{what}: {message}")
        self.path = path
        self.line = line
        self.field = field


class StoreError(WardtapError):
    """The local store cannot be opened or written."""


class HardwareError(WardtapError):
    """The pin map is invalid or the GPIO hardware cannot be used; names file, line, entry."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 entry: str | None = None) -> None:
        loc = f":{line}" if path and line else ""
        what = f" [{entry}]" if entry else ""
        prefix = f"{path}{loc}{what}: " if path else (f"{entry}: " if entry else "")
        super().__init__(f"{prefix}{message}")
        self.path = path
        self.line = line
        self.entry = entry
