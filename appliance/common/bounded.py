"""Parsing what comes from outside (files, MQTT, the control socket) within stated bounds.

`tomllib` and `json` recurse once per nesting level, and tomllib's work per dotted key grows
with the square of its parts: a file or a message nested a few thousand levels deep is a
RecursionError (a crash, not an error), and one long dotted key takes seconds. So every
TOML document and JSON message from outside goes through `load_toml` or `load_json`, which
check the size first, then scan the text once (linear, no recursion) for the deepest nesting
and the longest dotted key, and only then parse. JSON is also held to finite numbers: NaN,
Infinity and 1e999 are refused (a NaN compares false with everything, so it passes every
range check), and so are duplicate keys (two readers could disagree on which one counts) and
lone surrogates ("\ud800": valid JSON, but no file or database can hold the text).

Every refusal is a `BoundsError` (a ValueError) with one line that names the problem and,
where it helps, the line of the text.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from typing import Any

MAX_DEPTH = 32            # arrays and tables inside each other (the formats need 4 to 10)
MAX_KEY_PARTS = 32        # parts of one dotted TOML key or table header


class BoundsError(ValueError):
    """Input outside the stated bounds, or not valid; the message is one line for a user.

    `where` is the position when it is known apart from the message ("line 3 column 7").
    """

    def __init__(self, message: str, where: str | None = None) -> None:
        super().__init__(f"{message} ({where})" if where else message)
        self.message = message
        self.where = where


# -- TOML ---------------------------------------------------------------------------------------

# Strings and comments, as tomllib reads them (a multi-line string may end in up to two
# extra quotes); what is left once they are blanked out is the document's structure.
_TOML_OPAQUE = re.compile(
    r'"""(?:[^"\\]|\\.|"(?!""))*"""(?:"{1,2}(?!"))?'
    r"|'''[\s\S]*?'''(?:'{1,2}(?!'))?"
    r'|"(?:[^"\\\n]|\\.)*"'
    r"|'[^'\n]*'"
    r"|#[^\n]*")
_NOT_NEWLINE = re.compile(r"[^\n]")
_NESTING = re.compile(r"[\[\]{}]")
_NON_FINITE = re.compile(r"[=,\[]\s*[+-]?(?:nan|inf)\b")


def _blank(match: re.Match[str]) -> str:
    """A string or comment as spaces, its line ends kept (offsets and lines stay true)."""
    return _NOT_NEWLINE.sub(" ", match.group())


def toml_shape(text: str, max_key_parts: int = MAX_KEY_PARTS) -> tuple[int, int, int, int]:
    """(deepest nesting, its offset, parts of a dotted key beyond max_key_parts or 0, its
    offset), in linear time and without recursion.

    Strings and comments are blanked out first; brackets and braces count as nesting (a
    table header's own brackets too, so `[[rules]]` is 2); dots with none of `= , [ ] { }`
    or a line end between them are the parts of one key. The scan never decides validity:
    tomllib does that afterwards.
    """
    skeleton = _TOML_OPAQUE.sub(_blank, text)
    depth = deepest = deepest_at = 0
    for m in _NESTING.finditer(skeleton):
        if m.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest, deepest_at = depth, m.start()
        else:
            depth = max(0, depth - 1)
    long_key = re.search(r"(?:\.[^.=,\[\]{}\n]*){" + str(max_key_parts) + "}", skeleton)
    parts, parts_at = (max_key_parts + 1, long_key.start()) if long_key else (0, 0)
    return deepest, deepest_at, parts, parts_at


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _finite(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise BoundsError(f"{value!r} is not a finite number")
    return number


def load_toml(text: str, *, max_bytes: int, max_depth: int = MAX_DEPTH,
              max_key_parts: int = MAX_KEY_PARTS) -> dict[str, Any]:
    """Parse TOML within the bounds; nan and inf are refused.

    Raises BoundsError for the bounds and for non-finite numbers (the message names the line),
    tomllib.TOMLDecodeError for syntax (its message names line and column).
    """
    size = len(text) if len(text) > max_bytes else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise BoundsError(f"{size:,} bytes, more than the {max_bytes:,} allowed")
    deepest, deepest_at, parts, parts_at = toml_shape(text, max_key_parts)
    if deepest > max_depth:
        raise BoundsError(f"line {_line(text, deepest_at)}: nested more than {max_depth} "
                          "levels deep")
    if parts > max_key_parts:
        raise BoundsError(f"line {_line(text, parts_at)}: a dotted key of more than "
                          f"{max_key_parts} parts")
    try:
        return tomllib.loads(text, parse_float=_finite)
    except BoundsError as exc:   # nan or inf: name the first line that has one
        found = _NON_FINITE.search(text)
        where = f"line {_line(text, found.start())}: " if found else ""
        raise BoundsError(f"{where}{exc}") from None
    except RecursionError:       # the scan above should make this unreachable
        raise BoundsError(f"nested more than {max_depth} levels deep") from None


def toml_error(exc: tomllib.TOMLDecodeError) -> tuple[str, int | None]:
    """tomllib's message without its position, and the line it names."""
    match = re.search(r"line (\d+)", str(exc))
    message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
    return message, int(match.group(1)) if match else None


# -- JSON ---------------------------------------------------------------------------------------

_JSON_TOKEN = re.compile(rb'["\[\]{}]')
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_JSON_STRING_END = re.compile(rb'(?:[^"\\]|\\[\s\S]?)*"?')    # always matches


def json_depth(data: bytes) -> tuple[int, int]:
    """(deepest nesting of arrays and objects, its offset), in one linear scan."""
    depth = deepest = deepest_at = 0
    pos, end = 0, len(data)
    while pos < end:
        m = _JSON_TOKEN.search(data, pos)
        if m is None:
            break
        tok, pos = m.group(), m.end()
        if tok == b'"':
            pos = _JSON_STRING_END.match(data, pos).end()  # type: ignore[union-attr]
        elif tok in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest, deepest_at = depth, m.start()
        else:
            depth = max(0, depth - 1)
    return deepest, deepest_at


def _constant(name: str) -> Any:
    raise BoundsError(f"{name} is not a finite number")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BoundsError(f"the key {key[:64]!r} appears twice in one object")
        out[key] = value
    return out


def load_json(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON within the bounds: finite numbers only, no duplicate keys.

    Raises BoundsError (a ValueError) with one line; invalid JSON is a BoundsError too.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise BoundsError(f"{len(raw):,} bytes, more than the {max_bytes:,} allowed")
    deepest, at = json_depth(raw)
    if deepest > max_depth:
        raise BoundsError(f"nested more than {max_depth} levels deep (at byte {at})")
    try:
        text = raw.decode("utf-8")       # strictly: json would guess UTF-16 from a BOM
        value = json.loads(text, parse_constant=_constant, parse_float=_finite,
                           object_pairs_hook=_pairs)
        if _SURROGATE_ESCAPE.search(raw):  # a pair is fine; alone, no file or database
            json.dumps(value, ensure_ascii=False).encode("utf-8")   # could hold it
        return value
    except BoundsError:
        raise
    except RecursionError:       # the scan above should make this unreachable
        raise BoundsError(f"nested more than {max_depth} levels deep") from None
    except UnicodeDecodeError:
        raise BoundsError("not UTF-8 text") from None
    except UnicodeEncodeError:
        raise BoundsError("not valid Unicode: a lone surrogate (\\ud800-\\udfff)") from None
    except json.JSONDecodeError as exc:
        raise BoundsError(f"not valid JSON: {exc.msg}",
                          f"line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:    # an integer of more than 4,300 digits
        raise BoundsError(f"not valid JSON: {str(exc)[:120]}") from None

