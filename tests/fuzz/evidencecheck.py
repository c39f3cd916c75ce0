"""What every evidence parser's output must be, whatever the wire held: shared by the HL7,
DICOM and DHCP fuzz targets."""

from __future__ import annotations

from typing import Any

TARGETS = ("src", "dst")
SCOPES = ("ip", "link")


def check_evidence(ev: list[Any], value_limit: int) -> None:
    """Each item is [target, key, value, source, scope] of printable text, bounded: a name
    from the wire never carries a control character into a table, a log or the console."""
    for item in ev:
        assert isinstance(item, list) and len(item) == 5, item
        target, key, value, source, scope = item
        assert target in TARGETS or target.startswith("mac:"), item
        assert scope in SCOPES, item
        assert all(isinstance(x, str) and x.isprintable() for x in item), item
        assert value and len(value) <= value_limit, item
        assert key and source, item
