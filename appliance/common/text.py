"""Text from outside, shown safely: never markup, never terminal control codes.

Names come from policies, MUD files and the wire (DHCP host names, HL7 fields, DICOM AE
titles). They are stored exactly as given, and escaped wherever a person reads them: the
console, log lines, CSV exports. `shown` turns every control character (C0, DEL, C1), every
bidirectional override and every invisible format character into a visible escape, so no
name can clear a screen, recolour a terminal, fake a log line or reorder what is read.
Callers that build `rich` markup also escape the brackets (rich.markup.escape).
"""

from __future__ import annotations

import re
from typing import Any

# C0 and DEL and C1 controls; zero-width and bidi marks, embeddings, overrides and isolates;
# line and paragraph separators; the byte-order mark
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064"
                     "\u2066-\u206f\ufeff\ufff9-\ufffb]")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: Any) -> str:
    """`value` as text safe on a terminal and in a log: unsafe characters as \\xNN / \\uNNNN."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape, text)


def csv_cell(value: Any) -> Any:
    """A CSV cell: text shown safely and never a spreadsheet formula (a leading = + - @
    gets a quote mark, as spreadsheets expect); numbers and None pass through."""
    if value is None or isinstance(value, int | float):
        return value
    text = shown(value)
    return "'" + text if text.startswith(_FORMULA) else text


def __getattr__(name: str) -> Any:
    """`SafeFormatter`, a log formatter whose messages cannot carry control codes or extra
    lines (the traceback of a real bug, appended after the message, is left as it is). Made
    on first use: the commands that log are few, and `logging` costs the others' start-up."""
    if name != "SafeFormatter":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import logging

    class SafeFormatter(logging.Formatter):
        def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  (its name)
            record.message = shown(record.message)
            return super().formatMessage(record)

    globals()[name] = SafeFormatter
    return SafeFormatter
