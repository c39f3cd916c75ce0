"""Short text for review reports: lists cut to a few items, port ranges."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

LIST = 8          # items shown per line before "and N more"


def more(items: Sequence[str], limit: int = LIST, sep: str = ", ") -> str:
    shown = sep.join(items[:limit])
    return shown + (f"{sep}and {len(items) - limit} more" if len(items) > limit else "")


def ranges_text(ranges: Iterable[tuple[int, int]]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


