"""Outside input within bounds (appliance.common.bounded), shown safely (appliance.common.text),
logged sparingly (appliance.common.ratelog)."""

from __future__ import annotations

import io
import logging

import pytest

from appliance.common.bounded import BoundsError, json_depth, load_json, load_toml, toml_shape
from appliance.common.ratelog import RateLimitedLog
from appliance.common.text import SafeFormatter, csv_cell, shown


@pytest.mark.parametrize("text, message", [
    ("x = " + "[" * 3000 + "]" * 3000, "line 1: nested more than 32 levels deep"),
    ("a = 1\nt = " + "{a = " * 40 + "1" + "}" * 40, "line 2: nested more than 32 levels deep"),
    ("a" + ".a" * 20_000 + " = 1", "line 1: a dotted key of more than 32 parts"),
    ("[" + ".".join(["t"] * 40) + "]\n", "line 1: a dotted key of more than 32 parts"),
    ("x = 1\ny = nan\n", "line 2: 'nan' is not a finite number"),
    ("x = [1.0, -inf]\n", "line 1: '-inf' is not a finite number"),
    ("x = '" + "a" * 2000 + "'", "more than the 1,000 allowed"),
])
def test_toml_outside_the_bounds_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(BoundsError) as info:
        load_toml(text, max_bytes=1000 if "a" * 2000 in text else 1 << 20)
    assert str(info.value) == message or message in str(info.value), str(info.value)


@pytest.mark.parametrize("text", [
    'x = "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["',          # brackets in strings
    "x = '{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{'",
    'x = """a\n[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"""\n"""',
    "# [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nx = 1",
    'x = """a""""\ny = [[1]]',                                   # up to two extra quotes
    "a." + "b." * 30 + "c = 1",                                # 32 parts: the limit
    '"x.y.z.w" = 1\nurl = "http://a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.a.b.c.d.e.f.g"',
])
def test_toml_within_the_bounds_parses_as_tomllib_does(text: str) -> None:
    import tomllib

    assert load_toml(text, max_bytes=1 << 20) == tomllib.loads(text)


def test_toml_shape_counts_headers_and_ignores_strings() -> None:
    assert toml_shape("[[rules]]\nx = [1, [2]]\n")[0] == 2
    assert toml_shape('x = "]]]]" \n y = [[[1]]]')[0] == 3


@pytest.mark.parametrize("data, message", [
    (b"[" * 100_000 + b"]" * 100_000, "nested more than 32 levels deep"),
    (b'{"a": NaN}', "NaN is not a finite number"),
    (b"[Infinity]", "Infinity is not a finite number"),
    (b"[1e999]", "'1e999' is not a finite number"),
    (b'{"a": 1, "a": 2}', "the key 'a' appears twice in one object"),
    (b'"\xff"', "not UTF-8 text"),
    (b"[1" + b"0" * 5000 + b"]", "not valid JSON: Exceeds the limit"),
    (b'"t", \\', "not valid JSON"),                          # a trailing backslash
    (b'{"a": ', "not valid JSON: Expecting value (line 1 column 7)"),
    (b"x" * 2000, "2,000 bytes, more than the 1,000 allowed"),
])
def test_json_outside_the_bounds_is_one_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(BoundsError) as info:
        load_json(data, max_bytes=1000 if len(data) == 2000 else 1 << 20)
    assert message in str(info.value), str(info.value)


def test_json_within_the_bounds() -> None:
    assert load_json(b'{"a": ["[\\"[", {"b": 1.5}]}', max_bytes=100) == {"a": ['["[', {"b": 1.5}]}
    assert json_depth(b'["\\\\", [[]]]') == (3, 8)
    assert json_depth(b'"\\') == (0, 0)


def test_shown_escapes_control_and_bidi_characters_only() -> None:
    assert shown("t\x1b[2J\x1b[31mOK\x00") == "t\\x1b[2J\\x1b[31mOK\\x00"
    assert shown("pump\u202eevil\nline") == "pump\\u202eevil\\x0aline"
    assert shown("Infusomat Space ÄÖ 輸液") == "Infusomat Space ÄÖ 輸液"
    assert shown(None) == "None"
    assert [csv_cell(v) for v in ("=HYPERLINK(1)", "+1", "@x", "ok\x07", 3, None)] == [
        "'=HYPERLINK(1)", "'+1", "'@x", "ok\\x07", 3, None]


def test_log_lines_cannot_carry_control_codes_or_extra_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("wardtap.test.safe")
    logger.addHandler(handler)
    try:
        logger.warning("policy %s", "x\x1b[2J\nERROR forged line")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "WARNING policy x\\x1b[2J\\x0aERROR forged line\n"


def test_rate_limited_log_says_how_many_it_held_back() -> None:
    now = [0.0]
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("wardtap.test.ratelog")
    logger.addHandler(Capture())
    limited = RateLimitedLog(logger, interval=60, clock=lambda: now[0])
    for _ in range(5904):
        limited.error("disk-full", "spool: the disk is full")
    assert lines == ["spool: the disk is full"] and limited.held("disk-full") == 5903
    now[0] = 61.0
    limited.error("disk-full", "spool: the disk is full")
    assert lines[-1] == "spool: the disk is full (5,903 more like this in the last 61 s)"
