"""Where things are in a TOML file, so validation errors can name the line.

tomllib returns plain values without positions; this finds a table's or a key's line in
the source text, which is all an error message needs.
"""

from __future__ import annotations

import re


class TomlLines:
    """Finds the line of a table or a field in the source text, for error messages."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers: list[tuple[int, str]] = []
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            if stripped.startswith("["):
                self.headers.append((number, stripped.split("#")[0].strip()))

    def table(self, header: str, nth: int = 0) -> int | None:
        found = [n for n, h in self.headers if h == header or h.replace('"', "") == header]
        return found[nth] if nth < len(found) else None

    def key(self, header: str, key: str, nth: int = 0) -> int | None:
        """Line of `key` in table `header` ("" for the top level), else the table's line."""
        if not header:
            return self.top(key)
        start = self.table(header, nth)
        if start is None:
            return None
        pattern = re.compile(rf'^\s*"?{re.escape(key)}"?\s*=')
        for number in range(start + 1, len(self.lines) + 1):
            line = self.lines[number - 1].strip()
            if line.startswith("["):
                break
            if pattern.match(line):
                return number
        return start

    def top(self, key: str) -> int | None:
        """Line of a top-level key: `key = ...` before the first table, or a [key...] table."""
        first = self.headers[0][0] if self.headers else len(self.lines) + 1
        pattern = re.compile(rf'^\s*"?{re.escape(key)}"?\s*=')
        for number in range(1, first):
            if pattern.match(self.lines[number - 1]):
                return number
        for number, header in self.headers:
            name = header.strip("[]").strip().replace('"', "")
            if name == key or name.startswith(key + "."):
                return number
        return None
