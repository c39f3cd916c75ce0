"""Tables that fit the terminal: low-value columns dropped first, long text wrapped, never cut.

Every command that prints a table builds its Columns (with a priority each: 0 is always
shown, higher numbers go first when the terminal is narrow) and calls `render`. A column
marked `wrap` (vendors, names, addresses) wraps onto several lines instead of being cut, so
a vendor name stays readable. `--wide` prints every column at full width. The table says
which columns it hid.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from appliance.common.text import shown as shown_text  # cells come from the wire

GAP = 2
FALLBACK_WIDTH = 100      # not a terminal (a pipe, a file) and no $COLUMNS


@dataclass(frozen=True)
class Column:
    header: str
    priority: int = 0        # 0: always shown; the highest numbers are dropped first
    align: str = "<"         # "<" left, ">" right
    wrap: bool = False       # may wrap onto several lines rather than widen the table
    min_width: int = 8       # a wrapped column is not made narrower than this


def terminal_width() -> int:
    """$COLUMNS, else the terminal's width, else FALLBACK_WIDTH."""
    return max(20, shutil.get_terminal_size((FALLBACK_WIDTH, 24)).columns)


def render(columns: Sequence[Column], rows: Sequence[Sequence[object]],
           width: int | None = None, wide: bool = False, note_hidden: bool = True) -> str:
    """The table as text, every line at most `width` (default: the terminal's) columns wide,
    unless `wide`."""
    width = terminal_width() if width is None else width
    cells = [[("-" if c is None else shown_text(c)) for c in row] for row in rows]
    natural = [max([len(col.header)] + [len(line) for r in cells
                                        for line in r[i].splitlines() or [""]])
               for i, col in enumerate(columns)]
    shown = list(range(len(columns)))
    widths = list(natural)
    if not wide:
        shown, widths = _fit(columns, cells, natural, width)
    lines = [_line([columns[i].header for i in shown], [columns[i] for i in shown],
                   [widths[i] for i in shown])]
    for r in cells:
        wrapped = [_wrap(r[i], widths[i]) for i in shown]
        for k in range(max(len(w) for w in wrapped) if wrapped else 0):
            lines.append(_line([w[k] if k < len(w) else "" for w in wrapped],
                               [columns[i] for i in shown], [widths[i] for i in shown]))
    hidden = [columns[i].header.lower() for i in range(len(columns)) if i not in shown]
    if hidden and note_hidden:
        note = f"({', '.join(hidden)} hidden to fit {width} columns; --wide shows them)"
        lines += textwrap.wrap(note, max(20, width))
    return "\n".join(lines)


def _total(widths: Sequence[int]) -> int:
    return sum(widths) + GAP * max(0, len(widths) - 1)


def _fit(columns: Sequence[Column], cells: list[list[str]], natural: list[int],
         width: int) -> tuple[list[int], list[int]]:
    shown = list(range(len(columns)))
    widths = list(natural)

    def total() -> int:
        return _total([widths[i] for i in shown])

    def narrow(floor: Callable[[int], int], only_wrap: bool) -> None:
        """Take the excess from the widest columns first, none below its floor."""
        while total() > width:
            room = [i for i in shown if widths[i] > floor(i)
                    and (columns[i].wrap or not only_wrap)]
            if not room:
                return
            i = max(room, key=lambda i: (widths[i] - floor(i), widths[i]))
            widths[i] -= min(widths[i] - floor(i), total() - width)

    # 1. wrap the wrappable columns, down to a comfortable width
    narrow(lambda i: min(natural[i], max(columns[i].min_width, len(columns[i].header))), True)
    # 2. drop the least valuable columns
    for i in sorted(shown, key=lambda i: (-columns[i].priority, -i)):
        if total() <= width:
            break
        if columns[i].priority > 0:
            shown.remove(i)
    # 3. give room left back to wrapped columns, the ones that need least first
    for i in sorted(shown, key=lambda i: natural[i] - widths[i]):
        widths[i] = min(natural[i], widths[i] + max(0, width - total()))
    # 4. still too wide: wrap harder (words broken, never dropped), any column
    narrow(lambda i: 3, True)
    narrow(lambda i: 3, False)
    return shown, widths


def _wrap(text: str, width: int) -> list[str]:
    out: list[str] = []
    for part in text.splitlines() or [""]:
        if len(part) <= width:
            out.append(part)
        else:
            out += textwrap.wrap(part, width, break_long_words=True,
                                 break_on_hyphens=False) or [""]
    return out


def _line(values: Sequence[str], columns: Sequence[Column], widths: Sequence[int]) -> str:
    parts = []
    for value, col, w in zip(values, columns, widths, strict=True):
        text = value if len(value) <= w else value[:w]
        parts.append(text.rjust(w) if col.align == ">" else text.ljust(w))
    return (" " * GAP).join(parts).rstrip()
