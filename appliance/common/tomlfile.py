"""Where things are in a TOML file, so validation errors can name the line.

tomllib returns plain values without positions; this finds a table's or a key's line in
the source text, which is all an error message needs. The text is indexed once (headers in
a dict, each table's keys when first asked), so looking up every rule of a large policy
stays linear in its size.
"""

from __future__ import annotations

import re

_KEY = re.compile(r'^\s*"?([^"=]+?)"?\s*=')


class TomlLines:
    """Finds the line of a table or a field in the source text, for error messages."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers: list[tuple[int, str]] = []
        self._tables: dict[str, list[int]] = {}      # header (as written, and unquoted)
        self._ends: dict[int, int] = {}              # a table's line -> the next header's
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            if stripped.startswith("["):
                header = stripped.split("#")[0].strip()
                if self.headers:
                    self._ends[self.headers[-1][0]] = number
                self.headers.append((number, header))
                self._tables.setdefault(header, []).append(number)
                plain = header.replace('"', "")
                if plain != header:
                    self._tables.setdefault(plain, []).append(number)
        if self.headers:
            self._ends[self.headers[-1][0]] = len(self.lines) + 1
        self._keys: dict[int, dict[str, int]] = {}   # a table's line (0: top) -> key -> line

    def table(self, header: str, nth: int = 0) -> int | None:
        found = self._tables.get(header, [])
        return found[nth] if nth < len(found) else None

    def _keys_in(self, start: int, end: int) -> dict[str, int]:
        keys = self._keys.get(start)
        if keys is None:
            keys = {}
            for number in range(start + 1, end):
                m = _KEY.match(self.lines[number - 1])
                if m:
                    keys.setdefault(m.group(1).strip(), number)
            self._keys[start] = keys
        return keys

    def key(self, header: str, key: str, nth: int = 0) -> int | None:
        """Line of `key` in table `header` ("" for the top level), else the table's line."""
        if not header:
            return self.top(key)
        start = self.table(header, nth)
        if start is None:
            return None
        return self._keys_in(start, self._ends[start]).get(key, start)

    def top(self, key: str) -> int | None:
        """Line of a top-level key: `key = ...` before the first table, or a [key...] table."""
        first = self.headers[0][0] if self.headers else len(self.lines) + 1
        line = self._keys_in(0, first).get(key)
        if line is not None:
            return line
        for number, header in self.headers:
            name = header.strip("[]").strip().replace('"', "")
            if name == key or name.startswith(key + "."):
                return number
        return None
